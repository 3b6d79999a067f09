"""Finding image/mask pairs in a folder: `N.png` + `N_gt.png`, or `images/` + `masks/` with matching names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from coroseg.data.imageio import is_image_file
from coroseg.errors import InputError

MASK_SUFFIX = "_gt"


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


def natural_key(path: Path) -> list:
    """1, 2, ... 10 rather than 1, 10, 2."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=natural_key)


def is_mask_name(path: Path) -> bool:
    return path.stem.endswith(MASK_SUFFIX)


def _pairs_side_by_side(folder: Path) -> list[Pair]:
    files = _images_in(folder)
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in files if is_mask_name(p)}
    images = [p for p in files if not is_mask_name(p)]
    pairs = []
    for image in images:
        mask = masks.pop(image.stem, None)
        if mask is None:
            raise InputError(f"{image}: image without mask (expected {image.stem}{MASK_SUFFIX}{image.suffix})")
        pairs.append(Pair(image, mask))
    if masks:
        orphan = next(iter(masks.values()))
        raise InputError(f"{orphan}: mask without image")
    return pairs


def _pairs_in_subfolders(folder: Path) -> list[Pair]:
    masks = {p.stem.removesuffix(MASK_SUFFIX): p for p in _images_in(folder / "masks")}
    pairs = []
    for image in _images_in(folder / "images"):
        mask = masks.pop(image.stem, None)
        if mask is None:
            raise InputError(f"{image}: image without mask in {folder / 'masks'}")
        pairs.append(Pair(image, mask))
    if masks:
        raise InputError(f"{next(iter(masks.values()))}: mask without image in {folder / 'images'}")
    return pairs


def find_pairs(folder: str | Path) -> list[Pair]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        pairs = _pairs_in_subfolders(folder)
    else:
        pairs = _pairs_side_by_side(folder)
    if not pairs:
        raise InputError(f"{folder}: no image/mask pairs found (expected N.png + N_gt.png, or images/ + masks/)")
    return pairs


def find_inputs(path: str | Path) -> list[Path]:
    """Frames to predict on: one file, or every image in a folder that is not a `_gt` mask."""
    path = Path(path)
    if path.is_file():
        if not is_image_file(path):
            raise InputError(f"{path}: not an image file (supported: png, pgm, tif, tiff, jpg, jpeg)")
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    folder = path / "images" if (path / "images").is_dir() and (path / "masks").is_dir() else path
    inputs = [p for p in _images_in(folder) if not is_mask_name(p)]
    if not inputs:
        raise InputError(f"{path}: no images found")
    return inputs


def ground_truth_for(image: Path) -> Path | None:
    """The mask that sits beside an input, when there is one."""
    candidates = [image.with_name(f"{image.stem}{MASK_SUFFIX}{image.suffix}")]
    if image.parent.name == "images":
        masks = image.parent.parent / "masks"
        candidates += [masks / image.name, masks / f"{image.stem}{MASK_SUFFIX}{image.suffix}"]
    return next((c for c in candidates if c.is_file()), None)
