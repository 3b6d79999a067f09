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
    return [tuple(float(v) for v in flat) for flat in segmentation if len(flat) >= 6]


def read_coco_masks(source: Path) -> dict[str, PolygonMask]:
    """file_name -> the union of all its annotations' polygons (images without any get an empty mask)."""
    from coroseg.data.pairs import PolygonMask

    try:
        coco = json.loads(source.read_text())
        images = {img["id"]: img for img in coco["images"]}
        annotations = coco.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{source}: not a COCO annotation file ({exc.__class__.__name__}: {exc})") from exc
    polygons: dict[int, list] = {image_id: [] for image_id in images}
    for annotation in annotations:
        if annotation.get("image_id") not in polygons:
            raise InputError(f"{source}: annotation {annotation.get('id')} names unknown image {annotation.get('image_id')}")
        polygons[annotation["image_id"]] += _polygons(annotation, source)
    return {
        img["file_name"]: PolygonMask(source, img["file_name"], int(img["width"]), int(img["height"]),
                                      tuple(polygons[image_id]))
        for image_id, img in images.items()
    }
