"""COCO annotation files (ARCADE): the polygon segmentations of every vessel segment of an image,
kept as one `PolygonMask` per image. Only the polygon form is read; ARCADE uses no RLE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from coroseg.errors import InputError

if TYPE_CHECKING:
    from coroseg.data.pairs import PolygonMask


def _polygons(annotation: dict, source: Path) -> list[tuple[float, ...]]:
    segmentation = annotation.get("segmentation", [])
    if not isinstance(segmentation, list):
        raise InputError(f"{source}: annotation {annotation.get('id')} is not a polygon segmentation (RLE is not read)")
    try:
        return [tuple(float(v) for v in flat) for flat in segmentation if len(flat) >= 6]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: annotation {annotation.get('id')} has a polygon that is not a list of "
                         f"numbers ({exc})") from exc


def read_coco_masks(source: Path) -> dict[str, PolygonMask]:
    """file_name -> the union of all its annotations' polygons (images without any get an empty mask)."""
    try:
        coco = json.loads(source.read_text())
        images = {img["id"]: img for img in coco["images"]}
        annotations = coco.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{source}: not a COCO annotation file ({exc.__class__.__name__}: {exc})") from exc
    polygons: dict[int, list] = {image_id: [] for image_id in images}
    for annotation in annotations:
        if not isinstance(annotation, dict):
            raise InputError(f"{source}: an annotation is not a JSON object: {str(annotation)[:60]}")
        if annotation.get("image_id") not in polygons:
            raise InputError(f"{source}: annotation {annotation.get('id')} names unknown image {annotation.get('image_id')}")
        polygons[annotation["image_id"]] += _polygons(annotation, source)
    masks = (_polygon_mask(img, polygons[image_id], source) for image_id, img in images.items())
    return {mask.file_name: mask for mask in masks}


def _polygon_mask(image: dict, polygons: list, source: Path) -> PolygonMask:
    """One image's mask record, its name and size checked (a file of the wrong shape is one clear error)."""
    from coroseg.data.pairs import PolygonMask

    name, width, height = image.get("file_name"), image.get("width"), image.get("height")
    if not isinstance(name, str) or not name:
        raise InputError(f"{source}: image {image.get('id')} has no file_name")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise InputError(f"{source}: image {name!r} has no valid width and height ({width!r}, {height!r})")
    return PolygonMask(source, name, width, height, tuple(polygons))
