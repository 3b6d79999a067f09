"""The weights a training starts from: random, a model URI (`--init runs:/...`), or weights shipped with coroseg.

coroseg ships two starts, both the default network trained on the 200 real ARCADE frames of
`arcade_syntax_val200` (bench/pretrained_weights.py makes them): `arcade-v1` (60 epochs from random weights) and
`arcade-v2` (arcade-v1 trained 160 more epochs by the default recipe). `--init auto` (the default) starts every
training on real frames with the network they were trained as from `arcade-v2`: on CIMAT's fold ensemble it
scores 0.794 out of fold against arcade-v1's 0.786 and random weights' lower still, and on ARCADE's own frames
a start made as it was inside each fold (bench/quality_sweep.py pretrain_fold_twice) scores 0.793 against
0.788 for one made as arcade-v1 was, better in all 5 folds (README, quality). Synthetic data and other
networks start from random weights.

The file is safetensors (no pickle) with its provenance in the header: the recipe, the data's citation and a
hash of every frame it saw. A training whose own frames are among them is warned: its validation and
cross-validation scores would be optimistic (the start has seen those frames), `--init none` makes them honest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from coroseg.config import TrainConfig
from coroseg.errors import InputError
from coroseg.model_spec import ModelSpec

log = logging.getLogger("coroseg")

AUTO, NONE = "auto", "none"
BUILTIN = {"arcade-v1": "arcade_v1.safetensors",     # name -> file in coroseg/training/pretrained/
           "arcade-v2": "arcade_v2.safetensors"}
DEFAULT_BUILTIN = "arcade-v2"
METADATA_KEY = "coroseg"                              # the safetensors header entry holding the provenance (JSON)


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("coroseg.training") / "pretrained" / BUILTIN[name]))


def frame_id(image: np.ndarray) -> str:
    """A frame's identity as decoded pixels (the same frame saved as another file keeps it)."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def resolved_init(config: TrainConfig) -> str | None:
    """What `--init` means for this training: a built-in name, a model URI, or None (random weights). `auto`
    takes the default built-in for real frames and the network it was trained as, else random weights."""
    if config.init in (None, NONE):
        return None
    if config.init != AUTO:
        return config.init
    if config.data == "synthetic":
        return None
    spec = ModelSpec.of_training(config)
    there = builtin_metadata(DEFAULT_BUILTIN)["spec"]
    if (spec.family, spec.architecture) != (there["model_family"], there["architecture"]):
        return None
    return DEFAULT_BUILTIN


def start_notes(config: TrainConfig, asked: str | None) -> list[tuple[int, str]]:
    """What to say of the start a training took (`asked`: its --init before resolving), as (log level, text).
    Made before the data is read (reading frames here may raise a bad input's one-line error) and said after."""
    if config.init in BUILTIN:
        notes = [(logging.INFO, f"starting from the built-in weights {config.init} "
                                f"({builtin_metadata(config.init)['summary']}; --init none: random weights)")]
        shared, count = frames_seen(config, config.init)
        if shared:
            notes.append((logging.WARNING, f"--init {config.init}: {shared} of these {count} frames were in its "
                                           "training, so validation and cross-validation scores here are "
                                           "optimistic; --init none for an honest measure"))
        return notes
    if asked == AUTO and config.data != "synthetic":
        there = builtin_metadata(DEFAULT_BUILTIN)["spec"]
        return [(logging.INFO, f"--init auto: random weights (the built-in start {DEFAULT_BUILTIN} is a "
                               f"{there['model_family']} with channels {there['architecture'].get('channels')}; "
                               "this training builds another network)")]
    return []


@functools.cache          # a training asks for it up to four times; the shipped file does not change
def builtin_metadata(name: str) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(builtin_path(name)), framework="pt") as file:
        return json.loads(file.metadata()[METADATA_KEY])


def initial_weights(config: TrainConfig, notes: list | None = None) -> dict[str, torch.Tensor] | None:
    """The weights `config.init` (already resolved) names, checked against the network to train before any
    run is created; None: random weights. What to tell the user goes into `notes` (logged now without it)."""
    if config.init is None:
        return None
    said: list[tuple[int, str]] = []
    weights = _builtin(config, said) if config.init in BUILTIN else _from_model(config, said)
    if notes is None:
        for level, note in said:
            log.log(level, "%s", note)
    else:
        notes.extend(said)
    return weights


def _builtin(config: TrainConfig, notes: list) -> dict[str, torch.Tensor]:
    from coroseg.training.checkpoint import load_weights

    metadata = builtin_metadata(config.init)
    there = ModelSpec.from_metadata(metadata["spec"], builtin_path(config.init))
    _check_network(config, there, notes)
    return load_weights(builtin_path(config.init), there.build(), there.family).state_dict()


def _from_model(config: TrainConfig, notes: list) -> dict[str, torch.Tensor]:
    from coroseg.inference.model_loading import load_model

    loaded = load_model(config.init, torch.device("cpu"), config.tracking_uri)
    if loaded.spec.members > 1:
        raise InputError(f"--init {config.init}: an ensemble of {loaded.spec.members} networks cannot start one "
                         "training; start from one of its folds' models (runs:/<fold run>/pytorch_model)")
    _check_network(config, loaded.spec, notes)
    return {k: v.detach().clone() for k, v in loaded.module.state_dict().items()}


def _check_network(config: TrainConfig, there: ModelSpec, notes: list) -> None:
    if there.family != config.model_family:
        raise InputError(f"--init {config.init}: a {there.family} model cannot start a {config.model_family} training")
    here = ModelSpec.of_training(config)
    if there.architecture and there.architecture != here.architecture:
        raise InputError(f"--init {config.init}: that {there.family} model was built with other arguments "
                         f"({_differing(there.architecture, here.architecture)}) than this training builds")
    if there.preprocessing != here.preprocessing:   # allowed (fine-tuning adapts), but the user should know
        notes.append((logging.WARNING, f"--init {config.init}: that model saw frames prepared with "
                                       f"{there.preprocessing}; this training prepares them with {here.preprocessing}"))


def _differing(there: dict, here: dict) -> str:
    return ", ".join(f"{k}: {there.get(k)!r} there, {here.get(k)!r} here"
                     for k in sorted(set(there) | set(here)) if there.get(k) != here.get(k))


def frames_seen(config: TrainConfig, name: str) -> tuple[int, int]:
    """How many of this training's frames the built-in start `name` was trained on, and of how many."""
    if config.data == "synthetic":
        return 0, config.synthetic_count
    from coroseg.data.pairs import checked_scan

    seen = set(builtin_metadata(name)["frames"])
    pairs = checked_scan(config.data, config.data_format, config.mask_classes).pairs
    return sum(frame in seen for frame in frame_ids(pair.image for pair in pairs)), len(pairs)


def frame_ids(images: Iterable[Path]) -> tuple[str, ...]:
    """Each image's frame_id, decoded once per process while the file stays the same (path, mtime, size)."""
    return _frame_ids(tuple((str(path), stat.st_mtime_ns, stat.st_size) for path in images
                            for stat in [path.stat()]))


@functools.lru_cache(maxsize=4)   # auto's choice and the warning ask for the same frames; a changed file misses
def _frame_ids(stamped: tuple[tuple[str, int, int], ...]) -> tuple[str, ...]:
    from coroseg.data.imageio import read_gray

    return tuple(frame_id(read_gray(Path(path))) for path, _, _ in stamped)
