"""Data folder layouts (CIMAT pairs, DCA1, images/ + masks/, ARCADE COCO) and `coroseg check-data`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from coroseg.data.pairs import detect_format, find_pairs, load_mask
from tests.conftest import run_cli


def frame(seed: int, size=(40, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=size[::-1], dtype=np.uint8)


def vessel(size=(40, 32), col=10) -> np.ndarray:
    mask = np.zeros(size[::-1], np.uint8)
    mask[:, col:col + 3] = 255
    return mask


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture()
def dca1(tmp_path):
    for i in (1, 2, 3):
        save(tmp_path / f"{i}.pgm", frame(i))
        save(tmp_path / f"{i}_gt.pgm", vessel(col=i))
    return tmp_path


@pytest.fixture()
def images_masks(tmp_path):
    for i in (1, 2):
        save(tmp_path / "images" / f"case{i}.tif", frame(i))
        save(tmp_path / "masks" / f"case{i}.png", vessel(col=i))
    return tmp_path


@pytest.fixture()
def arcade(tmp_path):
    """Two images; image 1 has two vessel-segment polygons, image 2 none."""
    for i in (1, 2):
        save(tmp_path / "images" / f"{i}.png", frame(i))
    coco = {
        "images": [{"id": 1, "file_name": "1.png", "width": 40, "height": 32},
                   {"id": 2, "file_name": "2.png", "width": 40, "height": 32}],
        "categories": [{"id": 1, "name": "1"}, {"id": 2, "name": "5"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 6, 2, 6]]},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[20, 10, 30, 10, 30, 20, 20, 20]]},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text(json.dumps(coco))
    return tmp_path


def test_dca1_is_detected_and_read(dca1):
    assert detect_format(dca1) == "dca1"
    pairs = find_pairs(dca1)
    assert [p.image.name for p in pairs] == ["1.pgm", "2.pgm", "3.pgm"]
    assert load_mask(pairs[1].mask)[:, 2:5].all() and load_mask(pairs[1].mask).sum() == 3 * 32


def test_images_masks_is_detected_and_read(images_masks):
    assert detect_format(images_masks) == "images-masks"
    pairs = find_pairs(images_masks)
    assert [(p.image.name, p.mask.name) for p in pairs] == [("case1.tif", "case1.png"), ("case2.tif", "case2.png")]


def test_arcade_polygons_become_one_vessel_mask(arcade):
    assert detect_format(arcade) == "arcade"
    pairs = find_pairs(arcade)
    assert [p.image.name for p in pairs] == ["1.png", "2.png"]
    mask = load_mask(pairs[0].mask)
    assert mask.shape == (32, 40)
    assert mask[3, 5] and mask[15, 25] and not mask[25, 5]        # inside both polygons, outside both
    assert 11 * 5 <= mask[:8, :14].sum() <= 11 * 5 + 16            # the first rectangle, edges included
    assert not load_mask(pairs[1].mask).any()                      # no annotation: empty mask


def test_training_on_arcade_and_dca1(arcade, dca1, tmp_path, small_config):
    for folder, fmt in ((dca1, "dca1"), (arcade, "arcade")):
        result = run_cli("train", "--data", folder, "--data-format", fmt, "--config", small_config, "--epochs", 1,
                         "--no-tracking", "--output-dir", tmp_path / "records", "--run-name", fmt)
        assert result.exit_code == 0, result.stderr


def test_auto_says_what_it_detected(dca1, tmp_path, small_config):
    result = run_cli("train", "--data", dca1, "--config", small_config, "--epochs", 1, "--no-tracking",
                     "--output-dir", tmp_path / "records")
    assert result.exit_code == 0, result.stderr
    assert "dca1 layout, 3 pairs" in result.stderr


def test_check_data_on_a_clean_folder(images_masks):
    result = run_cli("check-data", images_masks)
    assert result.exit_code == 0, result.stdout
    assert "format: images-masks" in result.stdout and "pairs: 2" in result.stdout
    assert "sizes: 40x32 (2)" in result.stdout and "problems: 0" in result.stdout


def test_check_data_lists_every_problem(tmp_path):
    save(tmp_path / "1.png", frame(1))
    save(tmp_path / "1_gt.png", vessel())                                   # fine
    save(tmp_path / "2.png", frame(2))                                      # no mask
    save(tmp_path / "3_gt.png", vessel())                                   # no image
    save(tmp_path / "4.png", frame(4))
    save(tmp_path / "4_gt.png", np.zeros((32, 40), np.uint8))               # empty mask
    save(tmp_path / "5.png", frame(5))
    save(tmp_path / "5_gt.png", frame(6))                                   # not binary
    save(tmp_path / "6.png", frame(6))
    save(tmp_path / "6_gt.png", vessel(size=(20, 20)))                      # size mismatch
    result = run_cli("check-data", tmp_path)
    assert result.exit_code == 1
    out = result.stdout
    assert "problems: 5" in out
    for needle in ("2.png: image without mask", "3_gt.png: mask without image", "4_gt.png: empty mask",
                   "5_gt.png: not a binary mask", "6_gt.png: mask size"):
        assert needle in out, needle


def test_check_data_missing_folder(tmp_path):
    result = run_cli("check-data", tmp_path / "nope")
    assert result.exit_code == 2 and "no such folder" in result.stderr
