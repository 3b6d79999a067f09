"""`coroseg train --folds K`: a parent run with the mean and sd over folds, and one nested run per fold."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from coroseg.data.dataset import fold_indices
from tests.conftest import run_cli
from tests.test_training_run import all_artifacts


def test_folds_cover_every_frame_once_as_validation():
    folds = fold_indices(10, 3, seed=1)
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals.tolist()) == list(range(10))
    for train, val in folds:
        assert not set(train) & set(val) and len(train) + len(val) == 10
    assert [v.tolist() for _, v in fold_indices(10, 3, seed=1)] == [v.tolist() for _, v in folds]


def test_cross_validation_runs(tmp_path, small_config):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("train", "--config", small_config, "--epochs", 1, "--folds", 3, "--tracking-uri", store,
                     "--experiment", "cv", "--run-name", "cv", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert not result.value("run_id").startswith("none"), result.stderr
    client = MlflowClient(store)
    parent = client.get_run(result.value("run_id"))
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["cv-fold1", "cv-fold2", "cv-fold3"]
    rows = list(csv.DictReader(open(client.download_artifacts(parent.info.run_id,
                                                              "summaries/training/cross_validation.csv"))))
    dice = [float(r["best_val_dice"]) for r in rows]
    assert parent.data.metrics["cv_best_val_dice_mean"] == pytest.approx(np.mean(dice))
    assert parent.data.metrics["cv_best_val_dice_std"] == pytest.approx(np.std(dice, ddof=1))
    assert parent.data.tags["cross_validation"] == "3-fold"
    for child in children:
        artifacts = all_artifacts(client, child.info.run_id)
        assert "metrics/epoch_001/metrics.json" in artifacts and "final_model/weights/model.safetensors" in artifacts
        assert child.data.metrics["best_val_dice"] == pytest.approx(
            float(next(r for r in rows if r["run_id"] == child.info.run_id)["best_val_dice"]))
    # the printed model is the parent's ensemble: the mean of the folds' networks
    import torch

    from coroseg.inference.model_loading import load_model

    assert result.value("model_uri") == f"runs:/{parent.info.run_id}/pytorch_model"
    ensemble = load_model(result.value("model_uri"), torch.device("cpu"), store)
    assert ensemble.spec.members == 3
    folds = [load_model(f"runs:/{c.info.run_id}/pytorch_model", torch.device("cpu"), store) for c in children]
    x = torch.rand(2, 1, 48, 56)
    with torch.no_grad():
        expected = torch.stack([f.module(x) for f in folds]).mean(0)
        assert torch.allclose(ensemble.module(x), expected, atol=1e-6)
    assert "cv_oof_val_dice_postprocessed" in parent.data.metrics
    assert ensemble.spec.postprocessing.threshold == pytest.approx(parent.data.metrics["chosen_threshold"])


def test_init_starts_from_another_runs_weights(trained, tmp_path, small_config):
    import torch

    from coroseg.inference.model_loading import load_model
    from coroseg.models import build_model
    from coroseg.training.checkpoint import load_weights

    source = f"runs:/{trained.run_id}/pytorch_model"
    result = run_cli("train", "--config", small_config, "--epochs", 1, "--init", source, "--tracking-uri",
                     trained.store, "--learning-rate", 1e-9, "--run-name", "finetune", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "saw frames prepared with" not in result.stderr          # same preprocessing: nothing to warn of
    # with a vanishing learning rate the fine-tuned weights stay those of the source model
    start = load_model(source, torch.device("cpu")).module.state_dict()
    tuned = load_weights(tmp_path / result.value("local_record") / "final_model/weights/model.safetensors",
                         build_model("unet")).state_dict()
    assert all(torch.allclose(start[k], tuned[k], atol=1e-4) for k in start if start[k].is_floating_point())


def test_init_from_a_model_with_other_preprocessing_warns(trained, tmp_path, small_config):
    result = run_cli("train", "--config", small_config, "--epochs", 1, "--init",
                     f"runs:/{trained.run_id}/pytorch_model", "--tracking-uri", trained.store, "--clahe",
                     "--no-tracking", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "saw frames prepared with Preprocessing(normalize=True, field_of_view=True, clahe=False)" in result.stderr


def test_init_with_another_family_is_refused_before_the_run(trained, tmp_path, small_config):
    result = run_cli("train", "--config", small_config, "--init", f"runs:/{trained.run_id}/pytorch_model",
                     "--model-family", "segresnet", "--no-tracking", cwd=tmp_path)
    assert result.exit_code == 2 and "cannot start a segresnet training" in result.stderr
    assert not (tmp_path / "coroseg_runs").exists()


def test_a_fold_ensemble_records_the_per_fold_schedule_and_the_native_side_it_took(tmp_path):
    """--patience auto resolves for folds (25) and image_size native for the frames (60 px: 64), each recorded
    as a number in the parent's and the folds' configuration, so that --resume and reproduce take the same."""
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text("synthetic_count: 12\nsynthetic_size: 60\nimage_size: native\nval_samples: 1\n")
    result = run_cli("train", "--config", config, "--epochs", 1, "--folds", 2, "--no-tracking", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    record = tmp_path / result.value("local_record")
    for folder in (record, record / "fold_1", record / "fold_2"):
        recorded = yaml.safe_load((folder / "config/training/config.yaml").read_text())
        taken = (recorded["folds"], recorded["epochs"], recorded["patience"], recorded["image_size"])
        assert taken == (2, 1, 25, 64), folder
    assert "cv_oof_val_dice_postprocessed" in result.stdout      # the ensemble's own figure is printed
