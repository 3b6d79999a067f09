"""`--init auto` (the default): real frames and the default network start from the built-in weights arcade-v2,
ARCADE's own frames too (measured out of fold there); synthetic frames and other networks start from random weights;
the start is recorded, and a training on frames the built-in start has seen is warned that its scores are
optimistic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from coroseg.models import build_model
from coroseg.training.checkpoint import load_weights
from coroseg.training.initial_weights import BUILTIN, DEFAULT_BUILTIN, METADATA_KEY, builtin_path
from tests.conftest import run_cli

ARCADE = Path(__file__).parent / "data" / "arcade_yolo"   # two frames of arcade_syntax_val200


def _train(tmp_path: Path, small_config: Path, *args) -> tuple:
    """A one-epoch training whose weights barely move (learning rate 1e-9): its final weights show its start."""
    result = run_cli("train", "--config", small_config, "--epochs", 1, "--learning-rate", 1e-9, "--no-tracking",
                     *args, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    record = tmp_path / result.value("local_record")
    recorded = yaml.safe_load((record / "config" / "training" / "config.yaml").read_text())
    final = load_file(str(record / "final_model" / "weights" / "model.safetensors"))
    return result, recorded, final


def _close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-4) for k in b if b[k].is_floating_point())


@pytest.mark.parametrize("name", list(BUILTIN))
def test_each_built_in_start_is_a_safe_file_with_its_provenance(name):
    with safe_open(str(builtin_path(name)), framework="pt") as file:
        metadata = json.loads(file.metadata()[METADATA_KEY])
    assert metadata["spec"]["model_family"] == "unet" and metadata["spec"]["architecture"]["channels"][0] == 16
    assert len(metadata["frames"]) == 200 and "doi:10.1038/s41597-023-02871-z" in metadata["data"]
    assert metadata["recipe"].startswith("coroseg train --data arcade_syntax_val200")
    load_weights(builtin_path(name), build_model("unet"))        # fits the default network


def test_arcade_v1_is_taken_when_named_and_differs_from_arcade_v2(pairs_dir, tmp_path, small_config):
    result, recorded, final = _train(tmp_path, small_config, "--data", pairs_dir, "--init", "arcade-v1")
    assert recorded["init"] == "arcade-v1" and "starting from the built-in weights arcade-v1" in result.stderr
    assert _close(final, load_file(str(builtin_path("arcade-v1"))))
    assert not _close(final, load_file(str(builtin_path("arcade-v2"))))


def test_real_frames_start_from_the_built_in_weights_by_default(pairs_dir, tmp_path, small_config):
    result, recorded, final = _train(tmp_path, small_config, "--data", pairs_dir)
    assert DEFAULT_BUILTIN == "arcade-v2" and recorded["init"] == DEFAULT_BUILTIN   # as taken, not as "auto"
    assert "starting from the built-in weights arcade-v2" in result.stderr
    assert "were in its training" not in result.stderr           # these frames are not ARCADE's
    assert _close(final, load_file(str(builtin_path(DEFAULT_BUILTIN))))


def test_init_none_and_synthetic_frames_start_from_random_weights(pairs_dir, tmp_path, small_config):
    built_in = load_file(str(builtin_path(DEFAULT_BUILTIN)))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    result, recorded, final = _train(tmp_path / "a", small_config, "--data", pairs_dir, "--init", "none")
    assert recorded["init"] is None and "built-in" not in result.stderr and not _close(final, built_in)
    result, recorded, final = _train(tmp_path / "b", small_config)           # the config's synthetic frames
    assert recorded["init"] is None and "built-in" not in result.stderr and not _close(final, built_in)


def test_another_network_starts_from_random_weights_unless_the_start_is_named(pairs_dir, tmp_path, small_config):
    result, recorded, _ = _train(tmp_path, small_config, "--data", pairs_dir, "--width", 8)
    assert recorded["init"] is None and "--init auto: random weights" in result.stderr
    named = run_cli("train", "--config", small_config, "--data", pairs_dir, "--width", 8, "--init", DEFAULT_BUILTIN,
                    "--no-tracking", "--output-dir", tmp_path / "named", cwd=tmp_path)
    assert named.exit_code == 2 and "built with other arguments" in named.stderr
    assert len(named.stderr.strip().splitlines()) == 1 and not (tmp_path / "named").exists()


@pytest.mark.parametrize("init", ["auto", "arcade-v1", "arcade-v2"])
def test_training_on_frames_the_start_has_seen_is_warned(tmp_path, small_config, init):
    """On ARCADE's own frames auto takes arcade-v2 too (measured out of fold there), and every start warns."""
    result, recorded, final = _train(tmp_path, small_config, "--data", ARCADE, "--init", init)
    taken = DEFAULT_BUILTIN if init == "auto" else init
    assert recorded["init"] == taken and _close(final, load_file(str(builtin_path(taken))))
    assert "2 of these 2 frames were in its training" in result.stderr and "--init none" in result.stderr


def test_a_changed_frame_is_read_again_for_the_start(tmp_path, small_config):
    """The frames' identities are kept for a second look in one process, but not once a file changes."""
    data = tmp_path / "data"
    shutil.copytree(ARCADE, data)
    assert "2 of these 2 frames were in its training" in _train(tmp_path, small_config, "--data", data)[0].stderr
    for image in (data / "images").iterdir():              # other pixels: no longer ARCADE's frames
        pixels = np.asarray(Image.open(image).convert("L")).copy()
        pixels[0, 0] ^= 1
        Image.fromarray(pixels).save(image)
    assert "frames were in its training" not in _train(tmp_path, small_config, "--data", data)[0].stderr


def test_a_bad_input_stays_one_line_when_the_start_has_something_to_say(tmp_path, small_config):
    """--clahe makes the built-in start's preprocessing differ (a warning); a bad frame must still be one line."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "1.png").write_bytes(b"not a png")
    (data / "1_gt.png").write_bytes(b"not a png")
    result = run_cli("train", "--config", small_config, "--data", data, "--clahe", "--no-tracking", cwd=tmp_path)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "1.png" in result.stderr
