"""Bad input: one line naming the file and the problem, exit code 2, and no run created."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from tests.conftest import run_cli


def train_on(data, tmp_path, small_config):
    store = tmp_path / "mlflow.db"
    result = run_cli("train", "--data", data, "--config", small_config, "--epochs", 1,
                     "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    return result, store


def assert_one_line_error(result, store, *needles):
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not store.exists(), "no run may be created for bad input"
    assert "run_id" not in result.stdout


def test_missing_folder(tmp_path, small_config):
    result, store = train_on(tmp_path / "nowhere", tmp_path, small_config)
    assert_one_line_error(result, store, "nowhere", "no such folder")


def test_image_without_mask(folder, tmp_path, small_config):
    (folder / "3_gt.png").unlink()
    result, store = train_on(folder, tmp_path, small_config)
    assert_one_line_error(result, store, "3.png", "image without mask")


def test_unreadable_file(folder, tmp_path, small_config):
    (folder / "4.png").write_bytes(b"this is not a png")
    result, store = train_on(folder, tmp_path, small_config)
    assert_one_line_error(result, store, "4.png", "cannot read image")


def test_size_mismatch(folder, tmp_path, small_config):
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(folder / "2_gt.png")
    result, store = train_on(folder, tmp_path, small_config)
    assert_one_line_error(result, store, "2_gt.png", "differs from image size")


def test_empty_set(tmp_path, small_config):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    result, store = train_on(empty, tmp_path, small_config)
    assert_one_line_error(result, store, "empty", "no image/mask pairs")


def test_images_and_masks_subfolders_are_read(tmp_path, pairs_dir, small_config):
    data = tmp_path / "im"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for image in sorted(pairs_dir.glob("*.png")):
        if not image.stem.endswith("_gt"):
            shutil.copy(image, data / "images" / f"case{image.stem}.tif")
            shutil.copy(pairs_dir / f"{image.stem}_gt.png", data / "masks" / f"case{image.stem}.png")
    from coroseg.data.pairs import find_pairs

    pairs = find_pairs(data)
    assert [p.image.name for p in pairs][:2] == ["case1.tif", "case2.tif"]
    assert all(p.mask.parent.name == "masks" for p in pairs)


def test_unknown_model_family_lists_the_known_ones(tmp_path, small_config):
    result = run_cli("train", "--model-family", "resnet9000", "--config", small_config, "--no-tracking", cwd=tmp_path)
    assert result.exit_code == 2
    assert "resnet9000" in result.stderr and "unet" in result.stderr and "segresnet" in result.stderr


def test_predict_input_missing(tmp_path):
    result = run_cli("predict", "--model", "runs:/x/pytorch_model", "--input", tmp_path / "none.png",
                     "--output", tmp_path / "o", "--no-tracking")
    assert result.exit_code == 2 and "none.png" in result.stderr


def test_synth_never_overwrites(tmp_path):
    first = run_cli("synth", "--out", tmp_path / "s", "--count", 2, "--size", 64)
    assert first.exit_code == 0
    before = (tmp_path / "s/1.png").read_bytes()
    again = run_cli("synth", "--out", tmp_path / "s", "--count", 2, "--size", 64, "--seed", 9)
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert (tmp_path / "s/1.png").read_bytes() == before
