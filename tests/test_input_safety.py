"""Bad input as attackers and careless users give it: every case ends in one line naming the file and the problem,
exit code 2, and neither an MLflow run nor an output folder; data files cannot reach outside their folder; masks
are read as users store them, and never silently trained on as empty."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coroseg.data.imageio import read_mask
from coroseg.errors import InputError
from tests.conftest import run_cli
from tests.test_bad_input import assert_one_line_error, train_on


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` grey pixels, with almost no data: a decompression bomb's
    first bytes (the real ones compress 400 megapixels into ~90 KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)   # a few rows; the rest would decompress from nothing
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def predict_into(tmp_path, model, source):
    store = tmp_path / "mlflow.db"
    result = run_cli("predict", "--model", model, "--input", source, "--output", tmp_path / "out",
                     "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    return result, store


# -- sizes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [20_000, 12_000])
def test_oversized_frames_are_refused_from_the_header(side, local_model, tmp_path):
    bomb = png_header_only(tmp_path / "huge.png", side, side)
    assert bomb.stat().st_size < 100_000
    result, store = predict_into(tmp_path, local_model, bomb)
    assert_one_line_error(result, store, "huge.png", "pixel", "COROSEG_MAX_IMAGE_PIXELS")
    assert not (tmp_path / "out").exists()


def test_an_oversized_frame_stops_training_before_the_run(folder, tmp_path, small_config):
    png_header_only(folder / "3.png", 20_000, 20_000)
    result, store = train_on(folder, tmp_path, small_config)
    assert_one_line_error(result, store, "3.png", "pixel")


def test_the_pixel_limit_is_configurable(folder, tmp_path, small_config, monkeypatch):
    monkeypatch.setenv("COROSEG_MAX_IMAGE_PIXELS", "1000")         # below the 80 x 80 frames
    result, store = train_on(folder, tmp_path, small_config)
    assert_one_line_error(result, store, ".png", "1,000", "COROSEG_MAX_IMAGE_PIXELS")


@pytest.mark.parametrize("value", ["lots", "0"])
def test_a_bad_pixel_limit_is_one_line(value, folder, tmp_path, small_config, monkeypatch):
    monkeypatch.setenv("COROSEG_MAX_IMAGE_PIXELS", value)
    result, store = train_on(folder, tmp_path, small_config)
    assert_one_line_error(result, store, f"COROSEG_MAX_IMAGE_PIXELS={value!r}")


def test_an_oversized_coco_canvas_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(tmp_path / "images/1.png")
    (tmp_path / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.png", "width": 100_000, "height": 100_000}], "annotations": []}))
    result = run_cli("check-data", tmp_path)
    assert result.exit_code == 1
    assert "100000x100000 pixels is above coroseg's limit" in result.stdout


# -- corrupt files -------------------------------------------------------------------------------------

def test_a_truncated_frame_stops_predict_before_the_run_and_the_output(folder, local_model, tmp_path):
    data = (folder / "2.png").read_bytes()
    (folder / "2.png").write_bytes(data[: len(data) // 2])
    result, store = predict_into(tmp_path, local_model, folder)
    assert_one_line_error(result, store, "2.png", "cannot read image")
    assert not (tmp_path / "out").exists()


def test_a_truncated_mask_stops_evaluate_before_the_run(folder, local_model, tmp_path):
    data = (folder / "4_gt.png").read_bytes()
    (folder / "4_gt.png").write_bytes(data[: len(data) // 2])
    store = tmp_path / "mlflow.db"
    result = run_cli("evaluate", "--model", local_model, "--data", folder, "--output", tmp_path / "out",
                     "--tracking-uri", f"sqlite:///{store}")
    assert_one_line_error(result, store, "4_gt.png", "cannot read image")
    assert not (tmp_path / "out").exists()


# -- models that do not load ---------------------------------------------------------------------------

@pytest.fixture()
def model_copy(local_model, tmp_path) -> Path:
    return Path(shutil.copytree(local_model, tmp_path / "model"))


def _breakers():
    def garbage_weights(model: Path) -> str:
        (model / "data/model.safetensors").write_bytes(b"not safetensors at all")
        return "model.safetensors: cannot read weights"

    def wrong_shape_weights(model: Path) -> str:
        from safetensors.torch import save_file

        from coroseg.models import build_model

        save_file(build_model("basic_unet").state_dict(), str(model / "data/model.safetensors"))
        return "model.safetensors: weights do not fit the recorded unet model"

    def missing_weights(model: Path) -> str:
        (model / "data/model.safetensors").unlink()
        return "neither coroseg weights"

    def bad_metadata(model: Path) -> str:
        text = (model / "MLmodel").read_text()
        (model / "MLmodel").write_text(text.replace("image_size: 64", "image_size: -5"))
        return "metadata image_size must be a number"

    def unknown_family(model: Path) -> str:
        text = (model / "MLmodel").read_text()
        (model / "MLmodel").write_text(text.replace("model_family: unet", "model_family: resnet9000"))
        return "unknown model family 'resnet9000'"

    def broken_mlmodel(model: Path) -> str:
        (model / "MLmodel").write_text("flavors: [unclosed")
        return "not a readable MLflow model file"

    return [garbage_weights, wrong_shape_weights, missing_weights, bad_metadata, unknown_family, broken_mlmodel]


def _exported_breakers():
    def corrupt_archive(model: Path) -> str:
        (model / "data/model.pt2").write_bytes(b"PK\x03\x04 broken zip")
        return "model.pt2: cannot load the exported model"

    def model_data_outside(model: Path) -> str:
        text = (model / "MLmodel").read_text()
        (model / "MLmodel").write_text(text.replace("model_data: data", "model_data: ../../elsewhere"))
        return "points outside the model folder"

    return [corrupt_archive, model_data_outside]


@pytest.mark.parametrize("breaker", _breakers(), ids=lambda f: f.__name__)
def test_a_model_that_does_not_load_is_one_line(breaker, model_copy, pairs_dir, tmp_path):
    expected = breaker(model_copy)
    result, store = predict_into(tmp_path, model_copy, pairs_dir / "1.png")
    assert_one_line_error(result, store, expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("breaker", _exported_breakers(), ids=lambda f: f.__name__)
def test_an_exported_model_that_does_not_load_is_one_line(breaker, pt2_model, pairs_dir, tmp_path):
    model = Path(shutil.copytree(pt2_model, tmp_path / "model"))
    expected = breaker(model)
    result, store = predict_into(tmp_path, model, pairs_dir / "1.png")
    assert_one_line_error(result, store, expected)
    assert not (tmp_path / "out").exists()


def test_a_model_uri_in_a_store_that_does_not_exist_creates_none(pairs_dir, tmp_path):
    result, store = predict_into(tmp_path, "runs:/0123456789abcdef/pytorch_model", pairs_dir / "1.png")
    assert_one_line_error(result, store, "runs:/0123456789abcdef/pytorch_model", "no store at")


# -- outputs -------------------------------------------------------------------------------------------

def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create: sysfs refuses even root, a read-only folder refuses anyone else."""
    if os.geteuid() == 0:
        return Path("/sys/coroseg-test-output")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out"


def test_an_unwritable_output_is_refused_before_the_run(local_model, pairs_dir, tmp_path):
    out = unwritable_folder(tmp_path)
    store = tmp_path / "mlflow.db"
    result = run_cli("predict", "--model", local_model, "--input", pairs_dir / "1.png", "--output", out,
                     "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    assert_one_line_error(result, store, str(out), "cannot write here")


def test_an_output_below_a_file_is_refused(local_model, pairs_dir, tmp_path):
    (tmp_path / "afile").write_text("a user's file")
    store = tmp_path / "mlflow.db"
    result = run_cli("predict", "--model", local_model, "--input", pairs_dir / "1.png", "--output",
                     tmp_path / "afile/out", "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    assert_one_line_error(result, store, "afile/out", "cannot write here")
    assert (tmp_path / "afile").read_text() == "a user's file"


def test_evaluate_default_output_unwritable_is_refused(local_model, pairs_dir, tmp_path):
    """evaluate without --output writes under coroseg_runs/ in the working folder."""
    (tmp_path / "coroseg_runs").write_text("not a folder")
    result = run_cli("evaluate", "--model", local_model, "--data", pairs_dir, "--no-tracking", cwd=tmp_path)
    assert result.exit_code == 2, result.stderr
    assert "coroseg_runs" in result.stderr.strip().splitlines()[-1]


# -- paths named in data files -------------------------------------------------------------------------

@pytest.fixture()
def arcade_escaping(tmp_path):
    """An ARCADE folder whose COCO file names an image outside it, by `..` and by an absolute path."""
    secret = tmp_path / "outside.png"
    Image.fromarray(np.full((32, 40), 200, np.uint8)).save(secret)
    data = tmp_path / "arcade"
    (data / "images").mkdir(parents=True)
    for i in (1, 2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 40), dtype=np.uint8)).save(
            data / "images" / f"{i}.png")
    square = [[2, 2, 12, 2, 12, 6, 2, 6]]
    images = [("1.png", 1), ("2.png", 2), ("../../outside.png", 3), (str(secret), 4)]
    coco = {"images": [{"id": i, "file_name": name, "width": 40, "height": 32} for name, i in images],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "segmentation": square} for _, i in images]}
    (data / "train.json").write_text(json.dumps(coco))
    return data


def test_check_data_lists_paths_that_leave_the_folder(arcade_escaping):
    result = run_cli("check-data", arcade_escaping)
    assert result.exit_code == 1
    escaping = [line for line in result.stdout.splitlines() if "points outside the data folder" in line]
    assert len(escaping) == 2, result.stdout
    assert "'../../outside.png'" in escaping[0]


def test_train_refuses_paths_that_leave_the_folder(arcade_escaping, tmp_path, small_config):
    result, store = train_on(arcade_escaping, tmp_path, small_config)
    assert_one_line_error(result, store, "outside.png", "points outside the data folder")


def test_evaluate_refuses_paths_that_leave_the_folder(arcade_escaping, local_model, tmp_path):
    store = tmp_path / "mlflow.db"
    result = run_cli("evaluate", "--model", local_model, "--data", arcade_escaping, "--output", tmp_path / "out",
                     "--tracking-uri", f"sqlite:///{store}")
    assert_one_line_error(result, store, "points outside the data folder")


def test_output_names_stay_inside_the_output(local_model, tmp_path):
    """Names of outputs come from file stems only: odd names do not escape --output."""
    data = tmp_path / "odd"
    data.mkdir()
    frame = np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)
    for name in ("a..png", "..x.png", "x.y.png", "..\\..\\y.png"):
        Image.fromarray(frame).save(data / name, format="PNG")
    out = tmp_path / "out"
    result = run_cli("predict", "--model", local_model, "--input", data, "--output", out, "--no-tracking")
    assert result.exit_code == 0, result.stderr
    written = [p.resolve() for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(data)]
    written = [p for p in written if not p.is_relative_to(Path(local_model).resolve())]
    assert written and all(p.is_relative_to(out.resolve()) for p in written), written


# -- masks as users store them -------------------------------------------------------------------------

def vessel_mask(size: int = 80) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[:, 30:36] = True
    mask[50:54, :] = True
    return mask


@pytest.mark.parametrize("store_as", ["0_255", "0_1", "rgb_grey", "palette_bw", "bool", "uint16_0_65535",
                                      "antialiased"])
def test_binary_masks_read_the_same_however_stored(store_as, tmp_path):
    truth = vessel_mask()
    u8 = truth.astype(np.uint8)
    images = {
        "0_255": Image.fromarray(u8 * 255),
        "0_1": Image.fromarray(u8),
        "rgb_grey": Image.fromarray(np.stack([u8 * 255] * 3, -1)),
        "palette_bw": Image.fromarray(u8 * 255).convert("P"),
        "bool": Image.fromarray(truth),
        "uint16_0_65535": Image.fromarray(u8.astype(np.uint16) * 65535),
    }
    if store_as == "antialiased":     # a resampled 0/255 mask: a few grey edge pixels
        values = u8 * 255
        values[10, 29] = 90
        values[20, 35] = 180
        images["antialiased"] = Image.fromarray(values)
    path = tmp_path / "m.png"
    images[store_as].save(path)
    np.testing.assert_array_equal(read_mask(path), truth)


@pytest.mark.parametrize("case,needle", [
    ("coloured", "coloured mask"),
    ("label_map", "not a binary mask (3 distinct values: 0, 1, 2)"),
    ("probability", "not a binary mask"),
])
def test_non_binary_masks_are_refused(case, needle, tmp_path):
    truth = vessel_mask().astype(np.uint8)
    if case == "coloured":
        rgb = np.zeros((80, 80, 3), np.uint8)
        rgb[..., 0] = truth * 255                  # red vessels, green catheter
        rgb[5:9, :, 1] = 255
        image = Image.fromarray(rgb)
    elif case == "label_map":
        labels = truth.copy()
        labels[50:54, :] = 2
        image = Image.fromarray(labels)
    else:
        image = Image.fromarray(np.linspace(0, 255, 80 * 80).reshape(80, 80).astype(np.uint8))
    image.save(tmp_path / "m.png")
    with pytest.raises(InputError, match="m.png"):
        read_mask(tmp_path / "m.png")
    with pytest.raises(InputError) as err:
        read_mask(tmp_path / "m.png")
    assert needle in str(err.value)


def _rewrite_masks(folder: Path, transform) -> None:
    for mask in folder.glob("*_gt.png"):
        values = np.asarray(Image.open(mask).convert("L"))
        transform(mask, values)


def test_zero_one_masks_train_as_vessels(folder, tmp_path, small_config):
    """Masks stored as 0/1 used to read as empty: val Dice 0, while val_dice_postprocessed said 1.0."""
    _rewrite_masks(folder, lambda path, v: Image.fromarray((v > 127).astype(np.uint8)).save(path))
    assert run_cli("check-data", folder).exit_code == 0
    from coroseg.config import resolve
    from coroseg.data.dataset import load_training_data

    data = load_training_data(resolve(None, data=str(folder), image_size=64))[0]
    assert data.train.masks().sum() > 0 and data.val.masks().sum() > 0


def test_coloured_masks_stop_train_evaluate_and_show_in_check_data(folder, local_model, tmp_path, small_config):
    def colour(path, values):
        rgb = np.zeros((*values.shape, 3), np.uint8)
        rgb[..., 0] = values
        Image.fromarray(rgb).save(path)

    _rewrite_masks(folder, colour)
    result, store = train_on(folder, tmp_path, small_config)
    assert_one_line_error(result, store, "_gt.png", "coloured mask")
    result = run_cli("evaluate", "--model", local_model, "--data", folder, "--output", tmp_path / "out",
                     "--tracking-uri", f"sqlite:///{store}")
    assert_one_line_error(result, store, "_gt.png", "coloured mask")
    report = run_cli("check-data", folder)
    assert report.exit_code == 1 and report.stdout.count("coloured mask") == 6


def test_all_empty_masks_are_refused(folder, tmp_path, small_config):
    _rewrite_masks(folder, lambda path, v: Image.fromarray(np.zeros_like(v)).save(path))
    result, store = train_on(folder, tmp_path, small_config)
    assert_one_line_error(result, store, "every mask is empty")


def test_some_empty_masks_are_said(folder, tmp_path, small_config):
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(folder / "2_gt.png")
    result = run_cli("train", "--data", folder, "--config", small_config, "--epochs", 1, "--no-tracking",
                     cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "1 of 6 masks are empty" in result.stderr and "2_gt.png" in result.stderr


def test_an_oversized_dicom_is_refused_from_its_header(local_model, tmp_path):
    import pydicom

    from tests.test_dicom import write_dicom

    path = tmp_path / "huge.dcm"
    write_dicom(path, np.zeros((1, 16, 16), np.uint8), "MONOCHROME2", 8)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20_000          # the header claims 400 megapixels; the data is 256 bytes
    ds.save_as(path)
    result, store = predict_into(tmp_path, local_model, path)
    assert_one_line_error(result, store, "huge.dcm", "20000x20000 pixels is above coroseg's limit")


@pytest.mark.parametrize("image,annotation,needle", [
    ({"id": 1, "file_name": "1.png"}, None, "has no valid width and height"),
    ({"id": 1, "file_name": "1.png", "width": 40, "height": 32},
     {"id": 7, "image_id": 1, "segmentation": [["a", "b", "c", "d", "e", "f"]]}, "annotation 7 has a polygon"),
    ({"id": 1, "width": 40, "height": 32}, None, "image 1 has no file_name"),
    ({"id": 1, "file_name": "1.png", "width": 40, "height": 32}, "just a string", "is not a JSON object"),
])
def test_malformed_coco_entries_are_one_line(image, annotation, needle, tmp_path, small_config):
    data = tmp_path / "coco"
    (data / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(data / "images/1.png")
    (data / "train.json").write_text(json.dumps({"images": [image],
                                                 "annotations": [annotation] if annotation else []}))
    result, store = train_on(data, tmp_path, small_config)
    assert_one_line_error(result, store, "train.json", needle)
