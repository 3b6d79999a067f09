"""The YOLO segmentation layout: images/ + labels/N.txt polygons (normalised), data.yaml class names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coroseg.data.pairs import detect_format, find_pairs, load_mask, scan_folder
from coroseg.errors import InputError
from tests.conftest import run_cli

W, H = 40, 32
ARCADE = Path(__file__).parent / "data" / "arcade_yolo"
RECTANGLE = "0 0.25 0.25 0.5 0.25 0.5 0.75 0.25 0.75"           # columns 10-19, rows 8-23 on a 40x32 grid
TRIANGLE = "1 0.1 0.1 0.9 0.1 0.1 0.9"                          # 32 x 25.6 px legs: area 409.6 px
STENOSIS = "2 0.75 0.1 0.9 0.1 0.9 0.3 0.75 0.3"                # columns 30-35, rows 3-9
DATA_YAML = "path: .\nnc: 3\nnames:\n  0: LAD\n  1: LCX\n  2: stenosis\n"


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(H, W), dtype=np.uint8)


def write(folder: Path, frames: dict[str, str | None], data_yaml: str | None = DATA_YAML) -> Path:
    """images/NAME.png for each frame, with labels/NAME.txt holding its text unless it is None."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    for i, (name, text) in enumerate(frames.items()):
        Image.fromarray(frame(i)).save(folder / "images" / f"{name}.png")
        if text is not None:
            (folder / "labels" / f"{name}.txt").write_text(text)
    if data_yaml is not None:
        (folder / "data.yaml").write_text(data_yaml)
    return folder


@pytest.fixture()
def yolo(tmp_path) -> Path:
    return write(tmp_path / "yolo", {"1": f"{RECTANGLE}\n{STENOSIS}\n", "2": TRIANGLE + "\n", "3": RECTANGLE,
                                     "4": ""})


def test_auto_detects_yolo_and_keeps_other_layouts(yolo, tmp_path):
    assert detect_format(yolo) == "yolo"
    both = write(tmp_path / "both", {"1": RECTANGLE})
    (both / "masks").mkdir()
    assert detect_format(both) == "images-masks"                   # images/ + masks/ wins, as before
    (tmp_path / "coco").mkdir()
    write(tmp_path / "coco", {"1": RECTANGLE})
    (tmp_path / "coco" / "train.json").write_text(json.dumps({"images": [], "annotations": []}))
    assert detect_format(tmp_path / "coco") == "arcade"           # a COCO JSON stays arcade
    (tmp_path / "nolabels" / "images").mkdir(parents=True)
    (tmp_path / "nolabels" / "labels").mkdir()
    assert detect_format(tmp_path / "nolabels") == "pairs"        # labels/ without .txt files is not YOLO


def test_polygons_fill_pixels_whose_centre_is_inside(yolo):
    pairs = find_pairs(yolo)
    assert [p.image.name for p in pairs] == ["1.png", "2.png", "3.png", "4.png"]
    rectangle = np.zeros((H, W), bool)
    rectangle[8:24, 10:20] = True
    assert np.array_equal(load_mask(pairs[2].mask), rectangle)   # exactly, edges on pixel boundaries
    assert np.array_equal(load_mask(pairs[0].mask), rectangle)   # stenosis left out by default
    triangle = load_mask(pairs[1].mask)
    x, y = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)            # pixel centres on the frame grid
    inside = (x > 4) & (y > 3.2) & ((x - 4) / 32 + (y - 3.2) / 25.6 < 1)
    assert np.array_equal(triangle, inside)                                # the pixels whose centre is inside
    assert abs(int(triangle.sum()) - 409.6) <= 0.02 * 409.6               # 416 px: the analytic area, sampled
    assert not load_mask(pairs[3].mask).any()                   # an empty label file: no vessel


def test_mask_classes_choose_the_classes(yolo):
    stenosis = np.zeros((H, W), bool)
    stenosis[3:10, 30:36] = True
    for selection in ("0,2", "LAD,stenosis", "all", [0, 2]):
        mask = load_mask(scan_folder(yolo, mask_classes=selection).pairs[0].mask)
        assert np.array_equal(mask[:, 25:], stenosis[:, 25:]) and mask[8:24, 10:20].all(), selection
    only_lcx = scan_folder(yolo, mask_classes="LCX").pairs
    assert not load_mask(only_lcx[0].mask).any() and load_mask(only_lcx[1].mask).any()
    for bad in ("aorta", "7"):
        with pytest.raises(InputError, match="--mask-classes"):
            scan_folder(yolo, mask_classes=bad)


def test_check_data_on_a_clean_yolo_set(yolo):
    result = run_cli("check-data", yolo)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert "format: yolo" in out and "pairs: 4" in out and "sizes: 40x32 (4)" in out and "problems: 0" in out
    assert "class 2 'stenosis' is a lesion, not a vessel: left out of the masks (--mask-classes to choose)" in out
    included = run_cli("check-data", yolo, "--mask-classes", "all")
    assert "stenosis" not in included.stdout
    assert float(included.value("vessel fraction").split()[1].rstrip(",")) > float(
        result.value("vessel fraction").split()[1].rstrip(","))


def test_check_data_lists_every_label_problem(tmp_path):
    bad_lines = [
        RECTANGLE,                                     # 1 fine
        "0 0.1 0.1 0.5 0.1 0.5 1.2",                   # 2 out of range
        "0 0.1 0.1 0.5 0.1",                           # 3 two points
        "0 0.1 0.1 0.5 0.1 0.5",                       # 4 odd count
        "0 0.1 0.1 0.2 0.2 0.3 0.3",                   # 5 zero area
        "7 0.1 0.1 0.5 0.1 0.5 0.5",                   # 6 unknown class
        "LAD 0.1 0.1 0.5 0.1 0.5 0.5",                 # 7 unreadable
        "0 0.1 0.1 0.5 0.1 0.5 1.0005",                # 8 within tolerance: clamped, fine
    ]
    folder = write(tmp_path / "bad", {"a": RECTANGLE, "b": None, "d": "\n".join(bad_lines) + "\n"})
    (folder / "labels" / "c.txt").write_text(RECTANGLE)
    result = run_cli("check-data", folder)
    assert result.exit_code == 1
    out = result.stdout
    assert "problems: 8" in out, out
    labels = folder / "labels"
    for needle in (f"{folder / 'images' / 'b.png'}: image without label file",
                   f"{labels / 'c.txt'}: label file without image",
                   f"{labels / 'd.txt'}:2: coordinate 1.2 outside 0..1",
                   f"{labels / 'd.txt'}:3: degenerate polygon: 2 points",
                   f"{labels / 'd.txt'}:4: odd number of coordinates (5)",
                   f"{labels / 'd.txt'}:5: degenerate polygon: zero area",
                   f"{labels / 'd.txt'}:6: unknown class id 7",
                   f"{labels / 'd.txt'}:7: unreadable line"):
        assert needle in out, needle
    assert ":8:" not in out and ":1:" not in out


def test_train_stops_on_the_first_label_problem(tmp_path, small_config):
    folder = write(tmp_path / "bad", {"a": RECTANGLE, "b": RECTANGLE, "c": "0 0.1 0.1 0.5 0.1\n"})
    result = run_cli("train", "--data", folder, "--config", small_config, "--epochs", 1, "--no-tracking",
                     "--output-dir", tmp_path / "records")
    assert result.exit_code == 2 and "c.txt:1: degenerate polygon" in result.stderr


def test_training_on_a_yolo_set(yolo, tmp_path, small_config):
    result = run_cli("train", "--data", yolo, "--config", small_config, "--epochs", 1, "--no-tracking",
                     "--output-dir", tmp_path / "records")
    assert result.exit_code == 0, result.stderr
    assert "yolo layout, 4 pairs" in result.stderr and "'stenosis' is a lesion" in result.stderr


def test_real_arcade_frames_read_with_no_flag(tmp_path):
    folder = shutil.copytree(ARCADE, tmp_path / "arcade")        # real labels, list-form data.yaml names
    assert detect_format(folder) == "yolo"
    pairs = find_pairs(folder)
    assert [p.image.name for p in pairs] == ["189.png", "193.png"]
    fractions = [load_mask(p.mask).mean() for p in pairs]       # measured: 0.0335 and 0.0494
    assert all(0.025 < f < 0.06 for f in fractions), fractions
    result = run_cli("check-data", folder)
    assert result.exit_code == 0 and "format: yolo" in result.stdout and "problems: 0" in result.stdout
    assert "class 25 'stenosis'" in result.stdout
