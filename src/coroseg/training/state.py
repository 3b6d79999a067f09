"""The full state of a training after its last finished epoch, kept in the local record so that a killed run
resumes exactly where it stood: weights, optimizer, LR schedule, RNG states, early-stopping counters, the best
model so far and the history. Tensors go to safetensors and everything else to JSON, so no pickle is involved.

JSON is written last and names the sha256 of the tensors file. A crash between the two writes leaves the
previous epoch's JSON, which then does not match and is refused instead of being mixed with the new tensors.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load

from coroseg.errors import InputError
from coroseg.tracking.layout import RESUME_STATE_DIR
from coroseg.tracking.record import atomic_write
from coroseg.training.checkpoint import sha256, weights_bytes

TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"
FORMAT_VERSION = 1


@dataclass
class TrainingState:
    """Everything `train` needs to carry on after `epoch` as if it had never stopped."""

    epoch: int
    since_best: int
    best_epoch: int
    best_val_dice: float
    history: list[dict[str, Any]]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]                      # torch's state_dict layout, tensors included
    schedule: dict[str, Any]
    rng: dict[str, Any]                            # python / numpy / torch (/ cuda) generator states
    best_model: dict[str, torch.Tensor] | None = None
    best_val_probabilities: torch.Tensor | None = None
    stopped_early: bool = False
    training_duration_seconds: float = 0.0        # summed over the processes that trained this run
    average: dict[str, torch.Tensor] | None = None  # the weight average's state_dict (ema_epochs), or None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- flattening: tensors to one safetensors dict, the rest to JSON ------------------------------------

def _split_optimizer(optimizer: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    layout: dict[str, Any] = {"param_groups": optimizer["param_groups"], "state": {}}
    for index, values in optimizer["state"].items():
        layout["state"][str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
                layout["state"][str(index)][key] = {"tensor": f"optimizer.{index}.{key}"}
            else:
                layout["state"][str(index)][key] = value
    return layout


def _join_optimizer(layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = {}
    for index, values in layout["state"].items():
        state[int(index)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                             for k, v in values.items()}
    return {"state": state, "param_groups": layout["param_groups"]}


def _split_rng(rng: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    version, words, gauss = rng["python"]
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    tensors["rng.python"] = torch.tensor(words, dtype=torch.int64)
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    tensors["rng.torch"] = rng["torch"]
    for i, cuda in enumerate(rng.get("cuda", [])):
        tensors[f"rng.cuda.{i}"] = cuda
    return {"python": [version, gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "cuda_devices": len(rng.get("cuda", []))}


def _join_rng(layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    version, gauss = layout["python"]
    kind, pos, has_gauss, cached = layout["numpy"]
    state = {
        "python": (version, tuple(int(w) for w in tensors["rng.python"].tolist()), gauss),
        "numpy": (kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
        "torch": tensors["rng.torch"],
    }
    if layout["cuda_devices"]:
        state["cuda"] = [tensors[f"rng.cuda.{i}"] for i in range(layout["cuda_devices"])]
    return state


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}     # weights_bytes brings every tensor to the CPU


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# -- on disk -------------------------------------------------------------------------------------

def save_state(record_dir: Path, state: TrainingState) -> None:
    tensors = _prefixed("model", state.model)
    if state.best_model is not None:
        tensors.update(_prefixed("best", state.best_model))
    if state.average is not None:
        tensors.update(_prefixed("average", state.average))
    if state.best_val_probabilities is not None:
        tensors["best_val_probabilities"] = state.best_val_probabilities
    optimizer = _split_optimizer(state.optimizer, tensors)
    rng = _split_rng(state.rng, tensors)
    blob = weights_bytes(tensors)
    folder = record_dir / RESUME_STATE_DIR
    atomic_write(folder / TENSORS_FILE, blob)
    meta = {"format": FORMAT_VERSION, "tensors_sha256": sha256(blob), **_plain_fields(state),
            "optimizer": optimizer, "rng": rng}
    atomic_write(folder / JSON_FILE, (json.dumps(meta, indent=1) + "\n").encode())


def load_state(record_dir: Path) -> TrainingState | None:
    """The state of the last finished epoch, None when no epoch finished; an error when it is damaged."""
    folder = record_dir / RESUME_STATE_DIR
    if not (folder / JSON_FILE).is_file():
        return None
    try:
        meta = json.loads((folder / JSON_FILE).read_text())
        blob = (folder / TENSORS_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: cannot read the saved training state ({exc})") from exc
    if meta.get("format") != FORMAT_VERSION or meta.get("tensors_sha256") != sha256(blob):
        raise InputError(f"{folder}: the saved training state is incomplete or from another version; "
                         "it cannot be resumed")
    tensors = load(blob)
    return TrainingState(
        **{name: meta[name] for name in _PLAIN_FIELDS},
        model=_unprefixed("model", tensors), optimizer=_join_optimizer(meta["optimizer"], tensors),
        rng=_join_rng(meta["rng"], tensors), best_model=_unprefixed("best", tensors) or None,
        best_val_probabilities=tensors.get("best_val_probabilities"), average=_unprefixed("average", tensors) or None,
    )


# The fields that go to JSON as they are; the others hold tensors.
_PLAIN_FIELDS = ("epoch", "since_best", "best_epoch", "best_val_dice", "history", "schedule", "stopped_early",
                 "training_duration_seconds")


def _plain_fields(state: TrainingState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in _PLAIN_FIELDS}
