"""The model contract (ModelSpec): recorded with the model, checked when read, and enough to rebuild it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from coroseg.config import TrainConfig
from coroseg.data.preprocess import Preprocessing
from coroseg.errors import InputError, Stopped
from coroseg.inference.model_loading import load_model
from coroseg.model_spec import ModelSpec
from coroseg.models import FAMILIES, architecture_of, build_model, parameter_count
from coroseg.tracking.base import run_status
from coroseg.training.postprocess import Postprocessing

SMALL_UNET = {"channels": [8, 16, 32, 64, 128]}     # other constructor arguments than today's unet


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_spec_round_trips_through_the_mlmodel_yaml(name):
    config = TrainConfig(model_family=name, image_size=96, clahe=True)
    spec = ModelSpec.of_training(config, Postprocessing(threshold=0.4, min_component_fraction=0.0005))
    text = yaml.safe_dump({"metadata": spec.to_metadata()})
    again = ModelSpec.from_metadata(yaml.safe_load(text)["metadata"], Path("MLmodel"))
    assert again == spec
    assert again.architecture == architecture_of(name) and again.preprocessing == Preprocessing(clahe=True)
    assert parameter_count(again.build()) == parameter_count(build_model(name))


def test_a_model_from_before_the_spec_gets_the_defaults_it_was_trained_with():
    spec = ModelSpec.from_metadata({"model_family": "unet"}, Path("MLmodel"))
    assert spec.image_size == TrainConfig().image_size and spec.divisor == 16
    assert spec.postprocessing == Postprocessing(0.5, 0.0)
    assert spec.preprocessing == Preprocessing(normalize=False, field_of_view=False, clahe=False)
    assert spec.architecture == {}


def _set_metadata(model: Path, **changes) -> None:
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    for key, value in changes.items():
        if value is None:
            mlmodel["metadata"].pop(key, None)
        else:
            mlmodel["metadata"][key] = value
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def test_a_model_is_rebuilt_with_the_arguments_it_recorded_not_todays(local_model, tmp_path):
    model = Path(shutil.copytree(local_model, tmp_path / "model"))
    small = build_model("unet", SMALL_UNET)
    save_file(small.state_dict(), str(model / "data/model.safetensors"))
    _set_metadata(model, architecture={**architecture_of("unet"), **SMALL_UNET})
    loaded = load_model(str(model), torch.device("cpu"))
    assert parameter_count(loaded.module) == parameter_count(small) < parameter_count(build_model("unet")) / 3
    for name, tensor in small.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor), name
    with torch.no_grad():
        out = loaded.module(torch.rand(2, 1, 40, 48))
    assert out.shape == (2, 1, 40, 48)


def test_a_model_without_recorded_arguments_loads_with_todays(local_model, tmp_path):
    model = Path(shutil.copytree(local_model, tmp_path / "model"))
    _set_metadata(model, architecture=None)
    loaded = load_model(str(model), torch.device("cpu"))
    assert loaded.spec.architecture == {} and parameter_count(loaded.module) == parameter_count(build_model("unet"))


@pytest.mark.parametrize("architecture, expected", [
    ({"channels": [16, 32], "dropout_rate": 0.5}, "arguments unet does not take: dropout_rate"),
    ({"in_channels": 3}, "architecture in_channels must be 1"),
    ({"channels": [4096, 8192, 16384]}, "architecture channels is out of bounds"),
    ("channels=16", "architecture must be a mapping"),
    ({"channels": "sixteen"}, "cannot build the recorded unet architecture"),
])
def test_recorded_arguments_are_checked_before_anything_is_built(architecture, expected, local_model, tmp_path):
    model = Path(shutil.copytree(local_model, tmp_path / "model"))
    _set_metadata(model, architecture=architecture)
    with pytest.raises(InputError) as error:
        load_model(str(model), torch.device("cpu"))
    assert expected in str(error.value) and str(model / "MLmodel") in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("raised, status", [(None, "FINISHED"), (ValueError, "FAILED"), (Stopped, "KILLED"),
                                            (KeyboardInterrupt, "KILLED")])
def test_a_run_ends_as_its_block_did(raised, status):
    ended = []
    try:
        with run_status(ended.append):
            if raised is not None:
                raise raised()
    except BaseException as exc:  # noqa: BLE001 - each is re-raised unchanged
        assert raised is not None and isinstance(exc, raised)
    assert ended == [status]


def test_only_the_tracking_backend_imports_mlflow():
    """Training, prediction and evaluation reach MLflow only through tracking/ (it costs seconds to import)."""
    code = ("import sys, coroseg.cli, coroseg.training.run, coroseg.inference.predict, coroseg.evaluation.evaluate,"
            " coroseg.model_spec, coroseg.inference.model_loading, coroseg.tracking.upload_process;"
            " print(sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_predictions_use_the_recorded_postprocessing(local_model, tmp_path):
    model = Path(shutil.copytree(local_model, tmp_path / "model"))
    _set_metadata(model, threshold=0.35, min_component_fraction=0.001)
    loaded = load_model(str(model), torch.device("cpu"))
    assert loaded.spec.postprocessing == Postprocessing(0.35, 0.001)
    probabilities = np.zeros((100, 100), np.float32)
    probabilities[10:20, 10:90] = 0.4                 # 800 px: kept
    probabilities[50:52, 50:52] = 0.9                 # 4 px < 0.001 of the frame: dropped
    mask = loaded.spec.postprocessing.mask(probabilities)
    assert mask.sum() == 800 and not mask[50:52, 50:52].any()
