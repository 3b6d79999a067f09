"""The training data: frames and masks from a source, checked, prepared (data/preprocess.py), resized,
split, held as tensors.

All frames fit in memory (public sets hold tens to hundreds of frames), so batches are slices of
one tensor and augmentation runs on the training device (see augment.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coroseg.config import TrainConfig
from coroseg.data.pairs import announce, checked_scan, read_pair
from coroseg.data.preprocess import Preprocessing, prepare
from coroseg.errors import InputError

log = logging.getLogger("coroseg")


@dataclass
class Frames:
    """Prepared frames (N,1,S,S) float32 in [0,1], masks and fields of view (N,1,S,S) float32 0/1, names.

    Masks hold no vessel outside the field of view (there is nothing to see there)."""

    images: torch.Tensor
    masks: torch.Tensor
    fov: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: np.ndarray) -> "Frames":
        idx = torch.as_tensor(index, dtype=torch.long)
        return Frames(self.images[idx], self.masks[idx], self.fov[idx], [self.names[i] for i in index])


@dataclass
class TrainingData:
    train: Frames
    val: Frames
    source: str
    digest: str          # sha256 of every frame and mask as read, in order
    example: np.ndarray  # the first validation frame, uint8 as a user would send it: the model's input example


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,1,H,W) frames to `size`, antialiased so thin vessels are not aliased away when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return (resize_image(mask.float(), size) > 0.5).float()


def _read_folder(folder: str, data_format: str,
                 mask_classes=None) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    images, masks, names = [], [], []
    scan = checked_scan(folder, data_format, mask_classes)
    for pair in scan.pairs:
        image, mask = read_pair(pair)
        images.append(image)
        masks.append(mask)
        names.append(pair.image.name)
    _check_not_empty(scan, masks)
    announce(scan)
    return images, masks, names


def _check_not_empty(scan, masks: list[np.ndarray]) -> None:
    """No vessel anywhere means a misread data set, not a lesson: refuse. Some empty frames can be real
    (a cine before the contrast arrives), so they are trained on, and said."""
    empty = [pair.mask for pair, mask in zip(scan.pairs, masks) if not mask.any()]
    if len(empty) == len(masks):
        raise InputError(f"{scan.folder}: every mask is empty (no vessel pixel), e.g. {empty[0]}; "
                         "nothing to learn from (coroseg check-data lists the masks)")
    if empty:
        log.warning("%s: %d of %d masks are empty (no vessel pixel), e.g. %s", scan.folder, len(empty), len(masks),
                    empty[0])


def _synthesize(count: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    from coroseg.data.synthetic import synth_pair

    images, masks, names = [], [], []
    for i in range(1, count + 1):
        image, mask = synth_pair(seed * 100003 + i, size)
        images.append(image.astype(np.float32) / 255.0)
        masks.append(mask.astype(bool))
        names.append(f"synthetic_{i}")
    return images, masks, names


def frames_digest(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 of every (frame, mask) as read, in order: what a run trained or was scored on."""
    h = hashlib.sha256()
    for image, mask in pairs:
        h.update(np.ascontiguousarray(image).tobytes())
        h.update(np.packbits(mask).tobytes())
    return h.hexdigest()


def _stack(arrays: list[np.ndarray], size: int, is_mask: bool) -> torch.Tensor:
    """Resize each frame on its own (sizes may differ), then stack."""
    resize = resize_mask if is_mask else resize_image
    return torch.cat([resize(torch.from_numpy(a.astype(np.float32))[None, None], (size, size)) for a in arrays])


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic in (count, val_fraction, seed); at least one frame on each side."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = min(max(1, round(count * val_fraction)), count - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fold_indices(count: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold (train, val) index pairs, deterministic in (count, folds, seed); every frame is validated once."""
    order = np.random.default_rng(seed).permutation(count)
    chunks = np.array_split(order, folds)
    return [(np.sort(np.concatenate(chunks[:i] + chunks[i + 1:])), np.sort(chunk)) for i, chunk in enumerate(chunks)]


def splits(config: TrainConfig, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One train/validation split, or one per fold with `folds` > 1."""
    if config.folds > 1:
        if count < config.folds:
            raise InputError(f"{config.data}: {config.folds} folds need at least {config.folds} pairs, found {count}")
        return fold_indices(count, config.folds, config.seed)
    return [split_indices(count, config.val_fraction, config.seed)]


def preprocessing_of(config: TrainConfig) -> Preprocessing:
    return Preprocessing(field_of_view=config.field_of_view, clahe=config.clahe)


def _prepared_frames(images: list[np.ndarray], masks: list[np.ndarray], names: list[str],
                     config: TrainConfig) -> Frames:
    settings = preprocessing_of(config)
    prepared = [prepare(image, settings) for image in images]
    inputs, fovs = [p[0] for p in prepared], [p[1] for p in prepared]
    size = config.image_size
    return Frames(_stack(inputs, size, False), _stack([m & f for m, f in zip(masks, fovs)], size, True),
                  _stack(fovs, size, True), names)


def load_training_data(config: TrainConfig) -> list[TrainingData]:
    """The data of each split (one, or one per cross-validation fold)."""
    if config.data == "synthetic":
        images, masks, names = _synthesize(config.synthetic_count, config.synthetic_size, config.seed)
        source = f"synthetic(count={config.synthetic_count}, size={config.synthetic_size}, seed={config.seed})"
    else:
        images, masks, names = _read_folder(config.data, config.data_format, config.mask_classes)
        source = str(Path(config.data).resolve())
    if len(names) < 2:
        raise InputError(f"{config.data}: need at least 2 image/mask pairs to train and validate, found {len(names)}")
    frames = _prepared_frames(images, masks, names, config)
    digest = frames_digest(zip(images, masks))
    return [TrainingData(frames.subset(t), frames.subset(v), source, digest, _as_uint8(images[v[0]]))
            for t, v in splits(config, len(frames))]


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    return np.round(np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)
