"""Reading and writing 2-D grayscale frames and masks (PNG, PGM, TIFF, JPEG).

Every file is checked against coroseg's pixel limit from its header, before it is decoded at full size:
a 90 KB PNG can claim 20,000 x 20,000 pixels and take gigabytes once decoded.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from coroseg.errors import InputError
from coroseg.settings import env_number

IMAGE_SUFFIXES = (".png", ".pgm", ".tif", ".tiff", ".jpg", ".jpeg")
MAX_PIXELS_ENV = "COROSEG_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192  # far above any angiogram (512-1024 px), far below what breaks a laptop
ANTIALIASED_FRACTION = 0.01       # pixels between 0 and full scale a 0/255 mask may hold (edges, resampling)


def max_pixels() -> int:
    """coroseg's pixel limit per frame: COROSEG_MAX_IMAGE_PIXELS, else 8192 x 8192."""
    return env_number(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, int, minimum=1)


def check_pixel_count(path: Path, width: int, height: int) -> None:
    limit = max_pixels()
    if width * height > limit:
        raise InputError(f"{path}: {width}x{height} pixels is above coroseg's limit of {limit:,} "
                         f"(set {MAX_PIXELS_ENV} to allow more)")


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """The image, its size checked from the header before any pixel is decoded."""
    limit = max_pixels()
    # Pillow's own bomb check, at our limit: it warns above it (an error here) and refuses twice as much.
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_pixel_count(path, *img.size)
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path}: more pixels than coroseg's limit of {limit:,} "
                         f"(set {MAX_PIXELS_ENV} to allow more)") from exc
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only, checked against the pixel limit; no pixel is decoded."""
    with _opened(path) as img:
        return img.size


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_gray(path: Path) -> np.ndarray:
    """A frame as float32 in [0, 1], whatever its bit depth; colour frames are turned to gray."""
    with _opened(path) as img:
        if img.mode in ("RGB", "RGBA", "P", "LA", "CMYK"):
            img = img.convert("L")
        arr = np.asarray(img)
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}")
    return gray_float(arr)


def gray_float(arr: np.ndarray) -> np.ndarray:
    """A 2-D grey frame of any dtype as float32 in [0, 1]: integers over their bit depth's range (8 or 16
    bits), floats stretched to their own range. Files and the served model's inputs both go through this."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        top = 255 if arr.max(initial=0) <= 255 else 65535
        return np.clip(arr.astype(np.float32) / top, 0.0, 1.0)
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _mask_values(img: Image.Image, path: Path) -> np.ndarray:
    """The stored values of a mask; an RGB(A) or palette mask only when its colour channels agree."""
    if img.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
        rgb = np.asarray(img.convert("RGB"))
        if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any():
            raise InputError(f"{path}: a coloured mask (its colour channels differ: a label map?); "
                             "store vessel masks as grey 0/255 or 0/1")
        return rgb[..., 0]
    if img.mode in ("LA", "La"):
        img = img.getchannel("L")
    return np.asarray(img)


def binary_mask(values: np.ndarray, path: Path | str) -> np.ndarray:
    """Vessel pixels of a mask stored as {0, 1}, {0, 255} (or any {0, v}); 0/255 masks may carry a few
    anti-aliased edge pixels. Anything else (a label map, a probability map) is refused: training on a
    misread mask fails silently."""
    if values.ndim != 2:
        raise InputError(f"{path}: expected a 2-D mask, got shape {values.shape}")
    if values.dtype == np.bool_:
        return values
    levels = np.unique(values)
    if levels.size == 1 or (levels.size == 2 and levels[0] == 0):
        return values > 0
    top = levels[-1]
    full_scale = top in (255, 65535) or (np.issubdtype(values.dtype, np.floating) and top == 1.0)
    between = np.count_nonzero((values > 0) & (values < top))
    if levels[0] == 0 and full_scale and between <= ANTIALIASED_FRACTION * values.size:
        return values > top / 2
    shown = ", ".join(f"{v:g}" for v in levels[:6]) + (", ..." if levels.size > 6 else "")
    raise InputError(f"{path}: not a binary mask ({levels.size} distinct values: {shown}); vessel masks hold "
                     "0 and 1 or 0 and 255")


def read_mask(path: Path) -> np.ndarray:
    """A mask as bool (see binary_mask)."""
    with _opened(path) as img:
        values = _mask_values(img, path)
    return binary_mask(values, path)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """[0, 1] floats or bools to 8-bit."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# zlib level of the PNGs coroseg writes (frames, masks, overlays): 3-4x faster than Pillow's default 6 for
# 15-17 % more bytes (512 px ARCADE frames and comparisons); encoding bounded `coroseg predict`.
PNG_COMPRESS_LEVEL = 1


def encode_png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(to_uint8(arr) if arr.dtype != np.uint8 else arr).save(buf, format="PNG",
                                                                          compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()
