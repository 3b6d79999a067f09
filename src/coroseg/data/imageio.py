"""Reading and writing 2-D grayscale frames and masks (PNG, PGM, TIFF, JPEG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from coroseg.errors import InputError

IMAGE_SUFFIXES = (".png", ".pgm", ".tif", ".tiff", ".jpg", ".jpeg")
MASK_THRESHOLD = 127  # masks are 0/255 with a few anti-aliased pixels


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_gray(path: Path) -> np.ndarray:
    """A frame as float32 in [0, 1], whatever its bit depth; colour frames are turned to gray."""
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA", "P", "LA", "CMYK"):
                img = img.convert("L")
            arr = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from exc
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        top = 255 if arr.max(initial=0) <= 255 else 65535
        return np.clip(arr.astype(np.float32) / top, 0.0, 1.0)
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def probe_image(path: Path) -> tuple[int, int]:
    """Width and height from the header alone: a cheap check that a file is an image we can read."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from exc


def read_mask(path: Path) -> np.ndarray:
    """A mask as bool: vessel where the 8-bit value is above 127."""
    return read_gray(path) * 255.0 > MASK_THRESHOLD


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """[0, 1] floats or bools to 8-bit."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(to_uint8(arr) if arr.dtype != np.uint8 else arr).save(buf, format="PNG")
    return buf.getvalue()
