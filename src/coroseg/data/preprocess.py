"""Angiogram preprocessing, done the same way when training and when predicting.

Each frame, at its original size, gets:

1. its field of view (FOV): X-ray systems collimate the beam to a circle (or shutters), and the
   frame outside it is a flat, nearly black border. Pixels outside the FOV hold no anatomy: they are
   left out of the loss and the metrics, and always predicted as background.
2. robust intensity normalisation: the 0.5th and 99.5th percentiles inside the FOV map to 0 and 1
   (clipped), so 8-bit PNGs, 12-bit DICOM in 16-bit words and frames with a few saturated pixels all
   reach the network on one scale. Outside the FOV is set to 0.
3. optionally CLAHE (kornia), which lifts faint distal vessels in low-contrast frames.

The settings used in training are recorded in the model's metadata (`preprocessing`) and applied
by `coroseg predict` / `evaluate` from there, so a model is always fed frames as it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
CLAHE_CLIP_LIMIT = 2.0              # OpenCV's convention (kornia follows it); 2-3 is usual for angiograms
CLAHE_GRID = (8, 8)
# FOV detection (fractions of the frame side, or of intensities); tuned on the corners of
# ../shared/data/cimat40_train, where 24 of 40 frames show the collimator.
_DARK_LEVEL = 0.1                   # candidate border: within 10 % of the (min, p99) range above the min
_OPENING_RADIUS = 0.015             # removes thin dark vessels that reach the frame's edge
_DARKER_THAN_MEDIAN = 0.35          # a collimated region is far darker than the anatomy (diaphragm is not)
_MIN_BORDER_FRACTION = 0.001        # less than this outside: no FOV to speak of, the whole frame counts


@dataclass(frozen=True)
class Preprocessing:
    """What is done to a frame before the network sees it (see the module docstring)."""

    normalize: bool = True
    field_of_view: bool = True
    clahe: bool = False

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> "Preprocessing":
        """The model's recorded settings; a model recorded before preprocessing existed got none."""
        recorded = metadata.get("preprocessing")
        if recorded is None:
            return cls(normalize=False, field_of_view=False, clahe=False)
        return cls(**{k: bool(v) for k, v in recorded.items() if k in cls.__dataclass_fields__})


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def detect_field_of_view(frame: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of the exposed field of view of one grayscale frame (any intensity scale).

    The outside is found as the dark, smooth regions that touch the frame's edge: thresholded near the
    darkest level, opened with a disk so that dark vessels running off the edge do not count, and kept
    only where far darker than the frame's median (a dark diaphragm touching the edge is not a border).
    A frame without such a border gets a FOV of the whole frame.
    """
    frame = np.asarray(frame, dtype=np.float32)
    smooth = ndimage.median_filter(frame, size=5)
    low, high = float(smooth.min()), float(np.percentile(smooth, 99))
    if high <= low:
        return np.ones(frame.shape, dtype=bool)
    dark = smooth <= low + _DARK_LEVEL * (high - low)
    dark = ndimage.binary_opening(dark, structure=_disk(max(2, round(_OPENING_RADIUS * min(frame.shape)))))
    labels, _ = ndimage.label(dark)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    median = float(np.median(frame))
    border = [k for k in edge_labels[edge_labels > 0] if frame[labels == k].mean() < _DARKER_THAN_MEDIAN * median]
    outside = np.isin(labels, border)
    if outside.mean() < _MIN_BORDER_FRACTION:
        return np.ones(frame.shape, dtype=bool)
    return _largest_component(ndimage.binary_fill_holes(~outside))


def normalize_intensity(frame: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Percentiles inside the FOV to [0, 1], clipped; 0 outside the FOV."""
    inside = frame[fov]
    low, high = np.percentile(inside, (LOW_PERCENTILE, HIGH_PERCENTILE)) if inside.size else (0.0, 1.0)
    scale = high - low if high > low else 1.0
    out = np.clip((frame - low) / scale, 0.0, 1.0).astype(np.float32)
    out[~fov] = 0.0
    return out


def apply_clahe(frame: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] frame (kornia)."""
    from kornia.enhance import equalize_clahe

    tensor = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32))[None, None]
    return equalize_clahe(tensor, clip_limit=CLAHE_CLIP_LIMIT, grid_size=CLAHE_GRID)[0, 0].numpy()


def prepare(frame: np.ndarray, settings: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(network input, boolean FOV) of one frame as read; both at the frame's own size."""
    frame = np.asarray(frame, dtype=np.float32)
    fov = detect_field_of_view(frame) if settings.field_of_view else np.ones(frame.shape, dtype=bool)
    image = normalize_intensity(frame, fov) if settings.normalize else frame
    if settings.clahe:
        image = apply_clahe(image)
        image[~fov] = 0.0
    return image, fov
