"""DICOM input to `coroseg predict`: one prediction per frame, vessels dark, and no patient identifier anywhere."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

SIZE = 64
IDENTIFIERS = {
    "PatientName": "Zyxwv^Testpatient",
    "PatientID": "PID-98765-X",
    "PatientBirthDate": "19070803",
    "AccessionNumber": "ACC-55501-Q",
    "InstitutionName": "Qwertzuiop Memorial Hospital",
    "StudyDate": "19450719",
    "StudyTime": "235959.987654",
    "ReferringPhysicianName": "Drrefer^Xqzphysician",
}
# every value, and each part of the person names, as it could be written out
NEEDLES = sorted({v for v in IDENTIFIERS.values()} | {part for v in IDENTIFIERS.values() for part in v.split("^")})


def stripe_column(frame: int) -> int:
    """Where the vessel-like stripe of a frame lies, so each output can be matched to its frame."""
    return 10 + 15 * frame


def write_dicom(path: Path, frames: np.ndarray, photometric: str, bits_stored: int, **extra) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"     # X-ray angiographic image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    for keyword, value in {**IDENTIFIERS, **extra}.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = frames.itemsize * 8, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom")
    rng = np.random.default_rng(0)
    # MONOCHROME2, 12 of 16 bits, rescaled: a dark (low) stripe on a bright background
    single = rng.integers(2800, 3200, (1, SIZE, SIZE)).astype(np.uint16)
    single[0, :, stripe_column(0):stripe_column(0) + 6] = 400
    write_dicom(folder / "single.dcm", single, "MONOCHROME2", 12, RescaleSlope=2, RescaleIntercept=-1024,
                ImagerPixelSpacing=[0.2, 0.2])
    # MONOCHROME1 cine, 8 bits: high raw values are dark, so the bright raw stripe must come out dark
    cine = rng.integers(40, 70, (3, SIZE, SIZE)).astype(np.uint8)
    for i in range(3):
        cine[i, :, stripe_column(i):stripe_column(i) + 6] = 230
    write_dicom(folder / "cine.dcm", cine, "MONOCHROME1", 8)
    return folder


@pytest.fixture(scope="module")
def predicted(trained, dicom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom_predict") / "out"
    result = run_cli("predict", "--model", f"runs:/{trained.run_id}/pytorch_model", "--input", dicom_dir,
                     "--output", out, "--tracking-uri", trained.store, "--experiment", "tests")
    assert result.exit_code == 0, result.stderr
    return result, out


NAMES = ["cine_f001", "cine_f002", "cine_f003", "single_f001"]


def test_one_prediction_per_frame_with_technical_metadata(predicted):
    result, out = predicted
    assert sorted(p.stem for p in (out / "predictions/metadata").glob("*.json")) == NAMES
    for name in NAMES:
        for artifact in (f"inputs/{name}.png", f"outputs/{name}_mask.png", f"comparisons/{name}.png"):
            assert (out / "predictions" / artifact).is_file(), artifact
    cine = json.loads((out / "predictions/metadata/cine_f002.json").read_text())
    assert (cine["frame"], cine["frames"]) == (2, 3)
    assert cine["dicom"] == {"rows": SIZE, "columns": SIZE, "frames": 3, "bits_allocated": 8, "bits_stored": 8,
                             "photometric_interpretation": "MONOCHROME1", "modality": "XA"}
    single = json.loads((out / "predictions/metadata/single_f001.json").read_text())
    assert (single["frame"], single["frames"]) == (1, 1)
    assert single["dicom"]["bits_stored"] == 12 and single["dicom"]["imager_pixel_spacing"] == [0.2, 0.2]
    assert single["width"] == single["height"] == SIZE
    assert result.value("files_processed") == "4"


@pytest.mark.parametrize("name, frame", [("single_f001", 0), ("cine_f001", 0), ("cine_f002", 1), ("cine_f003", 2)])
def test_vessel_stripe_is_dark_in_every_frame(predicted, name, frame):
    _, out = predicted
    image = np.asarray(Image.open(out / f"predictions/inputs/{name}.png")).astype(float)
    column = stripe_column(frame)
    stripe, background = image[:, column:column + 6], np.delete(image, np.s_[column:column + 6], axis=1)
    assert stripe.mean() < 20 and background.mean() > 100, (stripe.mean(), background.mean())


def test_no_patient_identifier_reaches_outputs_or_the_run(predicted, client, tmp_path):
    result, out = predicted
    run = client.get_run(result.value("run_id"))
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    files = [p for folder in (out, downloaded) for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 20
    recorded = {str(p): p.read_bytes() for p in files}
    recorded["params and tags"] = json.dumps([run.data.params, run.data.tags, run.info.run_name]).encode()
    recorded["output"] = (result.stdout + result.stderr).encode()
    for needle in NEEDLES:
        leaks = [where for where, data in recorded.items() if needle.encode() in data]
        assert not leaks, f"{needle!r} found in {leaks}"


def truncated_copy(dicom_dir: Path, bad: Path) -> None:
    bad.write_bytes((dicom_dir / "cine.dcm").read_bytes()[:-1000])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_dicom_is_one_line_before_any_run(trained, dicom_dir, tmp_path, damage):
    bad = tmp_path / "broken.dcm"
    if damage == "garbage":
        bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage")
    else:
        truncated_copy(dicom_dir, bad)
    with warnings.catch_warnings(record=True) as caught:     # pydicom's warnings would add lines to stderr
        warnings.simplefilter("always")
        result = run_cli("predict", "--model", f"runs:/{trained.run_id}/pytorch_model", "--input", bad,
                         "--output", tmp_path / "o", "--tracking-uri", trained.store)
    assert result.exit_code == 2 and not caught, [str(w.message) for w in caught]
    assert len(result.stderr.strip().splitlines()) == 1 and str(bad) in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()
