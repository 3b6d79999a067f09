"""Lineage in MLflow's own terms (dataset inputs, metrics linked to the model) and the model registry with a
champion and a challenger."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def _client(store: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


def _logged_model(client, run_id: str):
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")[0]


def test_a_training_run_logs_its_datasets_and_links_the_validation_metrics_to_its_model(trained):
    client = _client(trained.store)
    run = client.get_run(trained.run_id)
    inputs = {[t.value for t in d.tags if t.key == "mlflow.data.context"][0]: d.dataset
              for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    assert inputs["training"].name == "synthetic-train" and inputs["validation"].name == "synthetic-val"
    assert inputs["training"].digest != inputs["validation"].digest
    assert '"frames": 10' in inputs["training"].profile and '"frames": 2' in inputs["validation"].profile
    model = _logged_model(client, trained.run_id)
    linked = {m.key: m for m in model.metrics}
    assert {"best_val_dice", "best_val_cldice", "val_dice_postprocessed"} <= set(linked)
    assert linked["best_val_dice"].value == pytest.approx(run.data.metrics["best_val_dice"])
    assert linked["best_val_dice"].dataset_name == "synthetic-val"
    assert linked["best_val_dice"].dataset_digest == inputs["validation"].digest
    # logged once: the run's history holds each linked metric a single time
    assert len(client.get_metric_history(trained.run_id, "best_val_dice")) == 1


def test_an_evaluation_logs_the_data_it_scored_and_links_its_metrics_to_the_model(trained, folder, tmp_path):
    client = _client(trained.store)
    result = run_cli("evaluate", "--model", f"runs:/{trained.run_id}/pytorch_model", "--data", folder,
                     "--output", tmp_path / "eval", "--tracking-uri", trained.store, "--experiment", "tests")
    assert result.exit_code == 0, result.stderr
    evaluation = client.get_run(result.value("run_id"))
    [dataset] = evaluation.inputs.dataset_inputs
    assert dataset.dataset.name == folder.name and [t.value for t in dataset.tags] == ["evaluation"]
    linked = {(m.key, m.run_id): m for m in _logged_model(client, trained.run_id).metrics}
    assert linked[("dice", evaluation.info.run_id)].value == pytest.approx(evaluation.data.metrics["dice"])
    assert linked[("dice", evaluation.info.run_id)].dataset_digest == dataset.dataset.digest


def _train(workdir, config, store, *args):
    return run_cli("train", "--config", config, "--epochs", 1, "--tracking-uri", store, "--register", "vessels",
                   *args, cwd=workdir)


def test_register_makes_a_champion_then_moves_it_only_for_a_better_val_dice(small_config, pairs_dir, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _train(tmp_path, small_config, store)
    assert first.exit_code == 0, first.stderr
    assert "registered vessels version 1 as champion: the first version with a val Dice" in first.stderr
    second = _train(tmp_path, small_config, store, "--seed", 7)
    assert second.exit_code == 0, second.stderr
    client = _client(store)
    versions = {str(v.version): v for v in client.search_model_versions("name = 'vessels'")}
    assert set(versions) == {"1", "2"}
    assert versions["2"].run_id == second.value("run_id") and versions["2"].tags["model_family"] == "unet"
    dice = {k: float(v.tags["val_dice"]) for k, v in versions.items()}
    if dice["2"] > dice["1"]:
        assert str(client.get_model_version_by_alias("vessels", "champion").version) == "2"
        assert "registered vessels version 2 as champion: val Dice" in second.stderr
    else:
        assert str(client.get_model_version_by_alias("vessels", "champion").version) == "1"
        assert str(client.get_model_version_by_alias("vessels", "challenger").version) == "2"
        assert "registered vessels version 2 as challenger: val Dice" in second.stderr
    predicted = run_cli("predict", "--model", "models:/vessels@champion", "--input", pairs_dir / "1.png",
                        "--output", tmp_path / "out", "--tracking-uri", store, "--no-tracking")
    assert predicted.exit_code == 0, predicted.stderr


def test_a_registration_that_could_not_be_sent_is_completed_by_sync(small_config, tmp_path):
    trained = _train(tmp_path, small_config, "sqlite:///unused.db", "--no-tracking")
    assert trained.exit_code == 0, trained.stderr
    store = f"sqlite:///{tmp_path / 'team.db'}"
    synced = run_cli("sync", tmp_path / trained.value("local_record"), "--tracking-uri", store)
    assert synced.exit_code == 0, synced.stderr
    assert "registered vessels version 1 as champion" in synced.stderr
    version = _client(store).get_model_version_by_alias("vessels", "champion")
    assert version.run_id == synced.stdout.strip().splitlines()[-1].split(": ", 1)[1]


def test_a_cross_validation_run_registers_its_fold_ensemble_judged_out_of_fold(small_config, pairs_dir, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _train(tmp_path, small_config, store, "--folds", 2)
    assert result.exit_code == 0, result.stderr
    client = _client(store)
    (version,) = client.search_model_versions("name = 'vessels'")
    parent = client.get_run(result.value("run_id"))
    assert version.run_id == parent.info.run_id                     # the parent's model: the folds' ensemble
    assert float(version.tags["val_dice"]) == pytest.approx(parent.data.metrics["cv_oof_val_dice_postprocessed"],
                                                            abs=1e-6)
    predicted = run_cli("predict", "--model", "models:/vessels@champion", "--input", pairs_dir / "1.png",
                        "--output", tmp_path / "out", "--tracking-uri", store, "--no-tracking")
    assert predicted.exit_code == 0, predicted.stderr
