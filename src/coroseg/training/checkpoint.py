"""Weights on disk as safetensors: no pickle, so loading a file someone handed you runs no code."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from coroseg.errors import InputError


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_weights(path: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    try:
        state = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: cannot read weights ({exc})") from exc
    model.load_state_dict(state)
    return model
