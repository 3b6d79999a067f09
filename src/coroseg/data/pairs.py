"""Finding image/mask pairs in a folder, in any of the layouts users arrive with.

- `pairs`        `N.png` + `N_gt.png` side by side (CIMAT; any supported image type)
- `dca1`         `N.pgm` + `N_gt.pgm` side by side (DCA1)
- `images-masks` `images/` + `masks/` with matching names
- `arcade`       `images/` + a COCO JSON of vessel-segment polygons (ARCADE), drawn into one mask
- `yolo`         `images/` + `labels/N.txt` YOLO segmentation polygons (data.yaml names the classes), drawn
                 into one mask (data/yolo.py); `mask_classes` chooses the classes, by default all but stenosis

A scan collects every problem it meets, so `check-data` can list them all; training and evaluation
stop at the first one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from coroseg.data.dicom import is_dicom_file
from coroseg.data.imageio import check_pixel_count, is_image_file, read_gray, read_mask
from coroseg.data.yolo import YoloMask
from coroseg.errors import InputError

log = logging.getLogger("coroseg")

MASK_SUFFIX = "_gt"
FORMATS = ("auto", "pairs", "dca1", "images-masks", "arcade", "yolo")


@dataclass(frozen=True)
class PolygonMask:
    """A mask given as polygons (x1, y1, x2, y2, ...) in a COCO file rather than as an image."""

    source: Path
    file_name: str
    width: int
    height: int
    polygons: tuple[tuple[float, ...], ...]

    def __str__(self) -> str:
        return f"{self.source}#{self.file_name}"

    def read(self) -> np.ndarray:
        from skimage.draw import polygon

        check_pixel_count(self.source, self.width, self.height)
        mask = np.zeros((self.height, self.width), dtype=bool)
        for flat in self.polygons:
            xs, ys = np.asarray(flat[0::2]), np.asarray(flat[1::2])
            rows, cols = polygon(ys, xs, shape=mask.shape)
            mask[rows, cols] = True
        return mask


MaskSource = Union[Path, PolygonMask, YoloMask]


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: MaskSource


def load_mask(source: MaskSource) -> np.ndarray:
    return read_mask(source) if isinstance(source, Path) else source.read()


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """The frame and its (binary) mask, fully decoded and of one size, or an error naming the file."""
    image, mask = read_gray(pair.image), load_mask(pair.mask)
    if image.shape != mask.shape:
        raise InputError(f"{pair.mask}: mask size {mask.shape[::-1]} differs from image size {image.shape[::-1]}")
    return image, mask


@dataclass
class Scan:
    folder: Path
    format: str
    pairs: list[Pair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # "path: problem", one per line
    notes: list[str] = field(default_factory=list)      # said once: e.g. label classes left out of the masks


def natural_key(path: Path) -> list:
    """1, 2, ... 10 rather than 1, 10, 2."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path, suffixes: tuple[str, ...] | None = None) -> list[Path]:
    files = (p for p in folder.iterdir() if is_image_file(p))
    return sorted((p for p in files if suffixes is None or p.suffix.lower() in suffixes), key=natural_key)


def is_mask_name(path: Path) -> bool:
    return path.stem.endswith(MASK_SUFFIX)


def _match(scan: Scan, images: list[Path], masks: dict[str, Path], where: str) -> None:
    for image in images:
        mask = masks.pop(image.stem, None)
        if mask is None:
            scan.problems.append(f"{image}: image without mask{where}")
        else:
            scan.pairs.append(Pair(image, mask))
    scan.problems += [f"{mask}: mask without image" for mask in masks.values()]


def _scan_side_by_side(scan: Scan, suffixes: tuple[str, ...] | None) -> None:
    files = _images_in(scan.folder, suffixes)
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in files if is_mask_name(p)}
    images = [p for p in files if not is_mask_name(p)]
    _match(scan, images, masks, f" (expected NAME{MASK_SUFFIX} beside it)")


def _scan_subfolders(scan: Scan) -> None:
    masks = {p.stem.removesuffix(MASK_SUFFIX): p for p in _images_in(scan.folder / "masks")}
    _match(scan, _images_in(scan.folder / "images"), masks, f" in {scan.folder / 'masks'}")


def _coco_file(folder: Path) -> Path | None:
    candidates = sorted(folder.glob("*.json")) + sorted((folder / "annotations").glob("*.json"))
    return candidates[0] if candidates else None


def inside(folder: Path, path: Path) -> Path | None:
    """`path` when it stays inside `folder` once resolved (.., absolute names and links followed), else None:
    a name written in a data file must never reach files outside the data set."""
    resolved = path.resolve()
    return path if resolved.is_relative_to(folder.resolve()) else None


def _scan_arcade(scan: Scan) -> None:
    from coroseg.data.coco import read_coco_masks

    coco = _coco_file(scan.folder)
    if coco is None:
        scan.problems.append(f"{scan.folder}: no COCO annotation file (*.json or annotations/*.json)")
        return
    image_dir = scan.folder / "images" if (scan.folder / "images").is_dir() else scan.folder
    for name, mask in read_coco_masks(coco).items():
        image = inside(scan.folder, image_dir / name)
        if image is None:
            scan.problems.append(f"{coco}: file_name {name!r} points outside the data folder {scan.folder}")
        elif image.is_file():
            scan.pairs.append(Pair(image, mask))
        else:
            scan.problems.append(f"{image}: listed in {coco} but missing")


def _scan_yolo(scan: Scan, selection) -> None:
    from coroseg.data.yolo import mask_classes, read_labels, read_names

    data_yaml = next((p for p in (scan.folder / "data.yaml", scan.folder / "data.yml") if p.is_file()), None)
    names = read_names(data_yaml) if data_yaml is not None else None
    keep, scan.notes = mask_classes(selection, names)
    label_dir = scan.folder / "labels"
    if not label_dir.is_dir() or not (scan.folder / "images").is_dir():
        scan.problems.append(f"{scan.folder}: expected images/ and labels/ folders (YOLO: labels/N.txt per frame)")
        return
    labels = {p.stem: p for p in sorted(label_dir.glob("*.txt"), key=natural_key) if not p.name.startswith(".")}
    for image in _images_in(scan.folder / "images"):
        label = labels.pop(image.stem, None)
        if label is None:
            scan.problems.append(f"{image}: image without label file (expected {label_dir / (image.stem + '.txt')}; "
                                 "an empty one means no vessel)")
            continue
        if inside(scan.folder, label) is None:
            scan.problems.append(f"{label}: points outside the data folder {scan.folder}")
            continue
        found, problems = read_labels(label, names)
        scan.problems += problems
        polygons = tuple(x.polygon for x in found if x.cls in keep)
        scan.pairs.append(Pair(image, YoloMask(label, image, polygons, no_vessel=not found and not problems)))
    scan.problems += [f"{label}: label file without image in {scan.folder / 'images'}" for label in labels.values()]


def _is_yolo(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "labels").is_dir() and any((folder / "labels").glob("*.txt"))


def detect_format(folder: Path) -> str:
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return "images-masks"
    if _coco_file(folder) is not None:
        return "arcade"
    if _is_yolo(folder):
        return "yolo"
    files = _images_in(folder)
    if files and all(p.suffix.lower() == ".pgm" for p in files):
        return "dca1"
    return "pairs"


def scan_folder(folder: str | Path, data_format: str = "auto", mask_classes=None) -> Scan:
    """Every pair and every problem of a folder; `mask_classes` chooses the label classes of the yolo layout
    (None: all but stenosis) and is ignored by the others."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    if data_format not in FORMATS:
        raise InputError(f"--data-format {data_format!r}: must be one of {', '.join(FORMATS)}")
    scan = Scan(folder, detect_format(folder) if data_format == "auto" else data_format)
    if scan.format == "images-masks":
        _scan_subfolders(scan)
    elif scan.format == "arcade":
        _scan_arcade(scan)
    elif scan.format == "yolo":
        _scan_yolo(scan, mask_classes)
    else:
        _scan_side_by_side(scan, (".pgm",) if scan.format == "dca1" else None)
    return scan


def checked_scan(folder: str | Path, data_format: str = "auto", mask_classes=None) -> Scan:
    """The scan of a folder; the first problem found is an error."""
    scan = scan_folder(folder, data_format, mask_classes)
    if scan.problems:
        raise InputError(scan.problems[0])
    if not scan.pairs:
        raise InputError(f"{scan.folder}: no image/mask pairs found (expected N.png + N_gt.png, images/ + masks/, "
                         "DCA1 N.pgm + N_gt.pgm, ARCADE images/ + COCO JSON, or YOLO images/ + labels/)")
    return scan


def find_pairs(folder: str | Path, data_format: str = "auto") -> list[Pair]:
    return checked_scan(folder, data_format).pairs


def announce(scan: Scan) -> None:
    """Say which layout was read, once the folder is known to be good (an error stays one line)."""
    log.info("%s: %s layout, %d pairs", scan.folder, scan.format, len(scan.pairs))
    for note in scan.notes:
        log.info("%s", note)


def _is_input(path: Path) -> bool:
    return is_image_file(path) or is_dicom_file(path)


def find_inputs(path: str | Path) -> list[Path]:
    """Files to predict on: one image or DICOM file, or every such file in a folder that is not a `_gt` mask."""
    path = Path(path)
    if path.is_file():
        if not _is_input(path):
            raise InputError(f"{path}: not an image or DICOM file "
                             "(supported: png, pgm, tif, tiff, jpg, jpeg, dcm, dicom)")
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    folder = path / "images" if (path / "images").is_dir() else path
    inputs = sorted((p for p in folder.iterdir() if _is_input(p) and not is_mask_name(p)), key=natural_key)
    if not inputs:
        raise InputError(f"{path}: no images or DICOM files found")
    return inputs


def ground_truth_for(image: Path) -> Path | None:
    """The mask that sits beside an input, when there is one."""
    candidates = [image.with_name(f"{image.stem}{MASK_SUFFIX}{image.suffix}")]
    if image.parent.name == "images":
        masks = image.parent.parent / "masks"
        candidates += [masks / image.name, masks / f"{image.stem}{MASK_SUFFIX}{image.suffix}"]
    return next((c for c in candidates if c.is_file()), None)
