"""Weights on disk as safetensors: no pickle, so loading a file someone handed you runs no code."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from coroseg.errors import InputError, first_line


def weights_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Named tensors as safetensors bytes, on the CPU. safetensors refuses two names on one storage, and some
    networks (MONAI's DynUNet) hold a module under two names: the second name gets a copy (loading sets both
    alike)."""
    out, seen = {}, set()
    for name, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr()
        out[name] = value.clone() if storage in seen else value
        seen.add(storage)
    return save(out)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_weights(path: str | Path, model: torch.nn.Module, architecture: str | None = None) -> torch.nn.Module:
    try:
        state = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise InputError(f"{path}: cannot read weights ({first_line(exc)})") from exc
    return fit_weights(model, state, path, architecture)


def fit_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                architecture: str | None = None) -> torch.nn.Module:
    """Load `state` into `model`, or say in one line how the weights differ from the architecture."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        example = (reshaped or missing or unexpected)[0]
        raise InputError(f"{source}: weights do not fit the recorded {architecture or type(model).__name__} model "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another "
                         f"shape, e.g. {example})")
    model.load_state_dict(state)
    return model
