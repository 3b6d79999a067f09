"""No model file can run code: pickled models, pickle records inside a pt2 archive and bundled code are refused
at every entry point (predict, evaluate, train --init, runs:/ and models:/ URIs), with one line saying why.

Each bomb is real: its pickle calls os.system to create a marker file, and the tests check both that the
marker never appears and that the same bytes do run code when unpickled the ordinary way."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli


class Bomb:
    """Unpickling this runs a shell command (os.system), as an attacker's model.pth would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def bomb_bytes(marker: Path) -> bytes:
    return pickle.dumps(Bomb(marker))


def test_the_bomb_is_real(tmp_path):
    """Guards the tests below: the payload they plant does run code when unpickled."""
    marker = tmp_path / "fired"
    pickle.loads(bomb_bytes(marker))
    assert marker.exists()


def pickled_model_folder(folder: Path, marker: Path, metadata: dict | None = None) -> Path:
    """An MLflow pytorch model as `mlflow.pytorch.save_model(serialization_format='pickle')` lays it out,
    whose data/model.pth is the bomb."""
    (folder / "data").mkdir(parents=True)
    (folder / "data/model.pth").write_bytes(bomb_bytes(marker))
    (folder / "data/pickle_module_info.txt").write_text("mlflow.pytorch.pickle_module")
    mlmodel = {
        "artifact_path": "pytorch_model",
        "flavors": {
            "pytorch": {"model_data": "data", "pytorch_version": "2.13.0", "code": None},
            "python_function": {"loader_module": "mlflow.pytorch", "data": "data",
                                "pickle_module_name": "mlflow.pytorch.pickle_module", "python_version": "3.11"},
        },
        "mlflow_version": "3.17.2",
    }
    if metadata is not None:
        mlmodel["metadata"] = metadata
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


@pytest.fixture(params=["plain", "with_coroseg_metadata"])
def bomb_model(request, tmp_path) -> tuple[Path, Path]:
    """A pickled model: bare, or claiming to be coroseg's (metadata, but no safetensors beside it)."""
    marker = tmp_path / "bomb_fired"
    metadata = {"model_family": "unet", "image_size": 64} if request.param == "with_coroseg_metadata" else None
    return pickled_model_folder(tmp_path / "bomb_model", marker, metadata), marker


def assert_refused(result, marker: Path, *needles: str) -> None:
    assert not marker.exists(), "the pickle payload ran"
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "run_id" not in result.stdout


def test_predict_refuses_a_pickled_model(bomb_model, pairs_dir, tmp_path):
    folder, marker = bomb_model
    result = run_cli("predict", "--model", folder, "--input", pairs_dir / "1.png", "--output", tmp_path / "out",
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert_refused(result, marker, "pickle", "refused")
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_evaluate_refuses_a_pickled_model(bomb_model, pairs_dir, tmp_path):
    folder, marker = bomb_model
    result = run_cli("evaluate", "--model", folder, "--data", pairs_dir, "--output", tmp_path / "out", "--no-tracking")
    assert_refused(result, marker, "pickle", "refused")
    assert not (tmp_path / "out").exists()


def test_train_init_refuses_a_pickled_model(bomb_model, tmp_path, small_config):
    folder, marker = bomb_model
    result = run_cli("train", "--init", folder, "--config", small_config, "--epochs", 1, "--no-tracking",
                     cwd=tmp_path)
    assert_refused(result, marker, "pickle", "refused")
    assert not (tmp_path / "coroseg_runs").exists()


@pytest.fixture()
def bomb_on_server(tmp_path):
    """The bomb logged to a store as a run's `pytorch_model` and registered: what anyone who can log to a shared
    server could plant for every user who predicts with it."""
    from mlflow import MlflowClient

    marker = tmp_path / "bomb_fired"
    folder = pickled_model_folder(tmp_path / "bomb_model", marker)
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    client = MlflowClient(tracking_uri=store)
    run = client.create_run(client.create_experiment("shared"))
    client.log_artifacts(run.info.run_id, str(folder), "pytorch_model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("vessels")
    client.create_model_version("vessels", f"runs:/{run.info.run_id}/pytorch_model", run_id=run.info.run_id)
    return store, run.info.run_id, marker


@pytest.mark.parametrize("kind", ["runs", "models"])
def test_a_pickled_model_on_a_server_is_refused(bomb_on_server, kind, pairs_dir, tmp_path):
    store, run_id, marker = bomb_on_server
    uri = f"runs:/{run_id}/pytorch_model" if kind == "runs" else "models:/vessels/1"
    result = run_cli("predict", "--model", uri, "--input", pairs_dir / "1.png", "--output", tmp_path / "out",
                     "--tracking-uri", store)
    assert_refused(result, marker, "pickle", "refused")


@pytest.fixture()
def exported_model(pt2_model, tmp_path) -> Path:
    return Path(shutil.copytree(pt2_model, tmp_path / "m"))


def plant_in_archive(archive: Path, marker: Path) -> str:
    """Replace the archive's sample inputs (a torch.save checkpoint that torch.export.load unpickles, falling back
    to full pickle when weights_only refuses) with a checkpoint holding the bomb."""
    buf = io.BytesIO()
    import torch

    torch.save(Bomb(marker), buf)
    records = {}
    with zipfile.ZipFile(archive) as old:
        for info in old.infolist():
            records[info.filename] = old.read(info)
    target = next(name for name in records if "/sample_inputs/" in name)
    records[target] = buf.getvalue()
    with zipfile.ZipFile(archive, "w") as new:
        for name, data in records.items():
            new.writestr(name, data)
    return target


def test_a_pt2_archive_carrying_a_pickle_is_refused(exported_model, pairs_dir, tmp_path):
    marker = tmp_path / "bomb_fired"
    plant_in_archive(exported_model / "data/model.pt2", marker)
    result = run_cli("predict", "--model", exported_model, "--input", pairs_dir / "1.png",
                     "--output", tmp_path / "out", "--no-tracking")
    assert_refused(result, marker, "model.pt2", "sample_inputs", "is a pickle", "refused")


def test_the_planted_archive_does_run_code_when_pickle_is_allowed(exported_model, tmp_path, monkeypatch):
    """Guards the test above: the same archive runs its payload under MLflow's default (pickle allowed)."""
    import mlflow.pytorch

    marker = tmp_path / "bomb_fired"
    plant_in_archive(exported_model / "data/model.pt2", marker)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(Exception):  # noqa: B017 - what breaks after the payload ran does not matter
        mlflow.pytorch.load_model(str(exported_model))
    assert marker.exists()


def test_the_clean_archive_still_loads(exported_model, pairs_dir, tmp_path):
    result = run_cli("predict", "--model", exported_model, "--input", pairs_dir / "1.png",
                     "--output", tmp_path / "out", "--no-tracking")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out/predictions/outputs/1_mask.png").is_file()


def test_a_model_that_bundles_code_is_refused(exported_model, pairs_dir, tmp_path):
    """MLflow puts a model's `code` folder first on sys.path: its modules would shadow real ones."""
    marker = tmp_path / "code_ran"
    (exported_model / "code").mkdir()
    (exported_model / "code/numpy_helpers.py").write_text(f"import os\nos.system('touch {marker}')\n")
    mlmodel = yaml.safe_load((exported_model / "MLmodel").read_text())
    mlmodel["flavors"]["pytorch"]["code"] = "code"
    (exported_model / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    result = run_cli("predict", "--model", exported_model, "--input", pairs_dir / "1.png",
                     "--output", tmp_path / "out", "--no-tracking")
    assert_refused(result, marker, "bundles Python code")
