"""Reading X-ray angiograms from DICOM files (single frames and multi-frame XA cines) with pydicom.

Only technical header fields ever leave this module: patient, study and institution fields are never
read, so no identifier can reach an output, a metadata file or the tracking server.

pydicom is imported inside the functions: it costs a quarter of a second, which only DICOM inputs pay.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from coroseg.data.imageio import check_pixel_count
from coroseg.errors import InputError

DICOM_SUFFIXES = (".dcm", ".dicom")
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
PERCENTILES = (0.5, 99.5)  # per-frame stretch, robust to dead pixels and burnt-in text

# DICOM keyword -> metadata key: the only header fields recorded anywhere
TECHNICAL_FIELDS = {
    "Rows": "rows",
    "Columns": "columns",
    "NumberOfFrames": "frames",
    "BitsAllocated": "bits_allocated",
    "BitsStored": "bits_stored",
    "PhotometricInterpretation": "photometric_interpretation",
    "Modality": "modality",
    "PixelSpacing": "pixel_spacing",
    "ImagerPixelSpacing": "imager_pixel_spacing",
}
# A code string as the standard allows it (CS): a free-text value in the wrong field is not recorded.
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def is_dicom_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in DICOM_SUFFIXES and not path.name.startswith(".")


def _read_errors() -> tuple[type[Exception], ...]:
    """What pydicom raises on a malformed, truncated or undecodable file."""
    from pydicom.errors import InvalidDicomError

    return (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError,
            NotImplementedError, RuntimeError)


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom warns about every oddity of a header, on stderr and at times quoting values: keep errors one
    line and header values out of the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _technical_value(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value if value and _CODE_STRING.fullmatch(value) else None
    if isinstance(value, Sequence):         # pixel spacing: row and column spacing in mm
        return [float(v) for v in value]
    return int(value)


def _technical(ds: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"frames": 1}  # NumberOfFrames is absent from single-frame files
    for keyword, key in TECHNICAL_FIELDS.items():
        value = _technical_value(ds.get(keyword))
        if value is not None:
            fields[key] = value
    return fields


def _check(ds: Any, path: Path) -> dict[str, Any]:
    """The technical fields, once the header says the pixels are ones we can read."""
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM file without pixel data")
    fields = _technical(ds)
    if fields.get("photometric_interpretation") not in PHOTOMETRIC or ds.get("SamplesPerPixel", 1) != 1:
        raise InputError(f"{path}: DICOM photometric interpretation {fields.get('photometric_interpretation')}"
                         f" not supported (MONOCHROME1 or MONOCHROME2 only)")
    if (not {"rows", "columns", "bits_allocated"} <= fields.keys() or fields["bits_allocated"] not in (8, 16)
            or fields["frames"] < 1):
        raise InputError(f"{path}: DICOM pixel module incomplete or not 8/16 bits allocated")
    check_pixel_count(path, fields["columns"], fields["rows"])   # per frame: a cine is read frame by frame
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:           # a truncated file passes the header read; its size gives it away
        expected = fields["rows"] * fields["columns"] * fields["frames"] * fields["bits_allocated"] // 8
        if ds.get_item("PixelData", keep_deferred=True).value_tell + expected > path.stat().st_size:
            raise InputError(f"{path}: DICOM pixel data truncated")
    return fields


def probe_dicom(path: Path) -> dict[str, Any]:
    """The technical fields from the header alone (pixel data is skipped): a cheap check before a run."""
    import pydicom
    from pydicom.pixels import get_decoder

    try:
        with _quiet():
            ds = pydicom.dcmread(path, defer_size=1024)   # deferred: the pixel data is seen but not loaded
            fields = _check(ds, path)
            if not get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
                raise InputError(f"{path}: no decoder installed for transfer syntax {ds.file_meta.TransferSyntaxUID}")
    except _read_errors() as exc:
        raise InputError(f"{path}: cannot read DICOM ({exc.__class__.__name__}: {exc})") from exc
    return fields


def _to_unit(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, PERCENTILES)
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def read_frame(path: Path, index: int) -> np.ndarray:
    """Frame `index` (0-based) as float32 in [0, 1] with vessels dark, as in the PNG training frames:
    modality LUT (rescale slope/intercept), per-frame 0.5/99.5 percentile stretch, MONOCHROME1 inverted."""
    from pydicom import Dataset
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds = Dataset()                          # filled with the pixel module only (group 0028 and file meta)
    try:
        with _quiet():
            raw = pixel_array(str(path), index=index, ds_out=ds)
    except _read_errors() as exc:
        raise InputError(f"{path}: cannot read DICOM frame {index + 1} ({exc.__class__.__name__}: {exc})") from exc
    frame = _to_unit(apply_modality_lut(raw, ds).astype(np.float32))
    return 1.0 - frame if ds.PhotometricInterpretation == "MONOCHROME1" else frame
