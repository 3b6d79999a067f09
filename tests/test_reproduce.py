"""`coroseg reproduce RUN_ID` trains a run again from its record in MLflow, into a new run tagged with the
original's id: on CPU every epoch's val_dice (and loss) is exactly the original's. Other data, an unknown run,
a run that is no training run are refused before anything is trained; other versions are warned of."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coroseg.training.reproduce import REPRODUCES_TAG
from tests.conftest import run_cli

RECORDED_TORCH = "1.0.0+recorded"       # what the original "ran with", to be warned of


@dataclass
class Original:
    workdir: Path
    store: str
    run_id: str


def _train(workdir: Path, *args) -> Original:
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    result = run_cli("train", *args, "--device", "cpu", "--learning-rate", 0.03, "--tracking-uri", store,
                     "--experiment", "originals", cwd=workdir)
    assert result.exit_code == 0, result.stderr
    return Original(workdir, store, result.value("run_id"))


def _reproduce(original: Original, *args):
    return run_cli("reproduce", original.run_id, "--tracking-uri", original.store, *args, cwd=original.workdir)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, small_config) -> Original:
    """A synthetic run recorded as if made with another torch (the environment as it reads it is patched)."""
    from coroseg.training import run

    real = run.environment
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "environment", lambda device: {**real(device), "torch_version": RECORDED_TORCH})
        return _train(tmp_path_factory.mktemp("synthetic"), "--config", small_config, "--epochs", 3,
                      "--run-name", "synthetic-original")


def test_a_synthetic_run_is_reproduced_exactly_into_a_tagged_run(synthetic):
    from mlflow import MlflowClient

    result = _reproduce(synthetic)
    assert result.exit_code == 0, result.stderr
    new_id = result.stdout.strip().splitlines()[-1].removeprefix("run_id: ")
    assert new_id == result.value("run_id") and new_id != synthetic.run_id
    assert result.value("reproduces") == synthetic.run_id
    assert result.value("matches_original").startswith("yes (val_dice: all 3 values identical)")
    assert f"torch_version {RECORDED_TORCH} recorded" in result.stderr          # the warning, on stderr
    assert "monai_version" not in result.stderr and "git_commit" not in result.stderr   # those are the same

    client = MlflowClient(synthetic.store)
    original, new = client.get_run(synthetic.run_id), client.get_run(new_id)
    assert new.info.status == "FINISHED"
    assert new.data.tags[REPRODUCES_TAG] == synthetic.run_id
    assert new.data.tags["task"] == "coronary_segmentation"
    assert new.info.experiment_id == original.info.experiment_id               # beside the original
    assert new.info.run_name == "synthetic-original-reproduction"
    val_dice = _history(client, new_id, "val_dice")
    assert [step for step, _ in val_dice] == [1, 2, 3] and any(v > 0 for _, v in val_dice)
    for key in ("val_dice", "val_loss", "train_loss"):
        assert _history(client, new_id, key) == _history(client, synthetic.run_id, key), key   # exactly
    # the same recipe and data: every param but the run's name and the recorded environment
    differing = {k for k, v in original.data.params.items() if new.data.params.get(k) != v}
    assert {k for k in differing if not k.startswith("env_")} == {"run_name"}
    assert new.data.params["data_digest"] == original.data.params["data_digest"]


def test_a_folder_run_is_refused_on_changed_or_missing_data_and_reproduced_from_a_moved_copy(tmp_path, folder,
                                                                                               small_config):
    from mlflow import MlflowClient

    original = _train(tmp_path, "--data", folder, "--config", small_config, "--epochs", 2, "--run-name", "pairs")
    client = MlflowClient(original.store)
    experiment = client.get_run(original.run_id).info.experiment_id
    recorded = client.get_run(original.run_id).data.params["data_digest"]
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)

    missing = _reproduce(original)
    assert missing.exit_code == 2
    assert f"{folder.resolve()}: the data folder of run {original.run_id} no longer exists" in missing.stderr

    changed = tmp_path / "changed"
    shutil.copytree(moved, changed)
    mask = np.array(Image.open(changed / "1_gt.png"))
    mask[:8, :8] = 255 - mask[:8, :8]                                          # a few pixels of one mask
    Image.fromarray(mask).save(changed / "1_gt.png")
    refused = _reproduce(original, "--data", changed)
    assert refused.exit_code == 2
    digests = re.search(r"data digest ([0-9a-f]{12})… recorded, ([0-9a-f]{12})… now", refused.stderr)
    assert digests and digests[1] == recorded[:12] and digests[2] != digests[1], refused.stderr
    assert len(client.search_runs([experiment])) == 1                         # nothing was started

    result = _reproduce(original, "--data", moved, "--run-name", "pairs-again")
    assert result.exit_code == 0, result.stderr
    assert result.value("matches_original").startswith("yes")
    new_id = result.value("run_id")
    assert client.get_run(new_id).data.tags[REPRODUCES_TAG] == original.run_id
    assert client.get_run(new_id).data.params["data"] == str(moved)
    for key in ("val_dice", "val_loss"):
        assert _history(client, new_id, key) == _history(client, original.run_id, key), key


def test_unknown_runs_other_runs_and_other_stores_are_refused_in_one_line(synthetic, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(synthetic.store)
    before = len(client.search_runs([client.get_experiment_by_name("originals").experiment_id]))

    unknown = run_cli("reproduce", "0123456789abcdef0123456789abcdef", "--tracking-uri", synthetic.store, cwd=tmp_path)
    assert unknown.exit_code == 2
    assert unknown.stderr.strip() == (f"coroseg: error: run 0123456789abcdef0123456789abcdef: no such run in "
                                      f"{synthetic.store}")

    other = client.create_run(client.get_experiment_by_name("originals").experiment_id).info.run_id
    client.set_terminated(other)
    not_training = run_cli("reproduce", other, "--tracking-uri", synthetic.store, cwd=tmp_path)
    assert not_training.exit_code == 2 and "not a coroseg training run (tag task=unset" in not_training.stderr

    nowhere = run_cli("reproduce", synthetic.run_id, "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}",
                      cwd=tmp_path)
    assert nowhere.exit_code == 2 and f"no store at {tmp_path / 'none.db'}" in nowhere.stderr
    assert not (tmp_path / "none.db").exists()

    moved_synthetic = run_cli("reproduce", synthetic.run_id, "--tracking-uri", synthetic.store, "--data", tmp_path,
                              cwd=tmp_path)
    assert moved_synthetic.exit_code == 2 and "trained on synthetic frames" in moved_synthetic.stderr
    assert len(client.search_runs([client.get_experiment_by_name("originals").experiment_id])) == before + 1


def test_a_cross_validation_run_is_reproduced_with_its_folds_and_a_fold_alone_is_refused(tmp_path, small_config):
    from mlflow import MlflowClient

    original = _train(tmp_path, "--config", small_config, "--epochs", 1, "--folds", 2, "--run-name", "cv")
    client = MlflowClient(original.store)
    experiment = client.get_run(original.run_id).info.experiment_id
    folds = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{original.run_id}'")

    fold = run_cli("reproduce", folds[0].info.run_id, "--tracking-uri", original.store, cwd=tmp_path)
    assert fold.exit_code == 2
    assert f"a fold of cross-validation run {original.run_id}; reproduce that run" in fold.stderr

    result = _reproduce(original)
    assert result.exit_code == 0, result.stderr
    assert result.value("matches_original").startswith("yes (the fold summary")
    parent = client.get_run(result.value("run_id"))
    assert parent.data.tags[REPRODUCES_TAG] == original.run_id
    new_folds = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(f.info.run_name for f in new_folds) == ["cv-reproduction-fold1", "cv-reproduction-fold2"]
    by_name = {f.info.run_name.rsplit("-", 1)[1]: f.info.run_id for f in folds}
    for new_fold in new_folds:
        old = by_name[new_fold.info.run_name.rsplit("-", 1)[1]]
        assert _history(client, new_fold.info.run_id, "val_loss") == _history(client, old, "val_loss")
