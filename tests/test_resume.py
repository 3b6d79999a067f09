"""A killed or preempted training resumes from its last finished epoch, in the same MLflow run, and ends exactly
as an uninterrupted run of the same seed would: per-epoch val_dice and final weights bit-identical (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import run_cli

EPOCHS = 6


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def start_training(workdir: Path, config: Path, store: str, *options: str,
                   own_group: bool = False) -> subprocess.Popen:
    command = [sys.executable, "-m", "coroseg", "train", "--config", str(config), "--epochs", str(EPOCHS),
               "--tracking-uri", store, "--run-name", "resumable", *options]
    return subprocess.Popen(command, cwd=workdir, env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=own_group)


def wait_for_epoch(process: subprocess.Popen, epoch: int) -> list[str]:
    """Read stderr until the line of `epoch` finishing; the lines read."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith(f"epoch {epoch}/{EPOCHS}"):
            return lines
    raise AssertionError("training ended before epoch %d:\n%s" % (epoch, "".join(lines)))


def history(record: Path) -> list[float]:
    return [e["val_dice"] for e in json.loads((record / "final_model/training_history/history.json").read_text())]


def final_weights(record: Path) -> dict:
    return load_file(str(record / "final_model/weights/model.safetensors"))


def assert_same_training(resumed: Path, reference: Path) -> None:
    assert history(resumed) == history(reference)                 # exactly equal floats
    a, b = final_weights(resumed), final_weights(reference)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_config) -> Path:
    """The same training, never interrupted."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_cli("train", "--config", small_config, "--epochs", EPOCHS, "--no-tracking", cwd=workdir)
    assert result.exit_code == 0, result.stderr
    return workdir / result.value("local_record")


def _record_of(workdir: Path) -> Path:
    (record,) = (workdir / "coroseg_runs").iterdir()
    return record


@pytest.mark.integration
def test_sigkill_then_resume_is_bit_identical(tmp_path, small_config, reference):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start_training(tmp_path, small_config, store)
    wait_for_epoch(process, 3)
    process.kill()                                                # during epoch 4: no handler, no cleanup
    process.wait(timeout=60)
    record = _record_of(tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("coroseg").experiment_id])
    assert run.info.status == "RUNNING"                           # what SIGKILL leaves

    result = run_cli("train", "--resume", run.info.run_id, "--tracking-uri", store, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.value("run_id") == run.info.run_id             # the same run carries on
    assert "resuming after epoch" in result.stderr
    assert_same_training(record, reference)
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1))
    assert "epoch 1/6" in (record / "logs/training/training.log").read_text()   # the earlier process's lines kept


@pytest.mark.integration
def test_sigterm_stops_as_killed_prints_the_command_and_resumes(tmp_path, small_config, reference):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start_training(tmp_path, small_config, store)
    wait_for_epoch(process, 2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    resume_line = next(line for line in stdout.splitlines() if line.startswith("resume: "))
    command = resume_line.split(": ", 1)[1]
    assert command.startswith("coroseg train --resume ")
    run_id = stdout.strip().splitlines()[-1].split(": ", 1)[1]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    assert client.get_run(run_id).info.status == "KILLED"

    args = command.split()[1:] + ["--tracking-uri", store]
    result = run_cli(*args, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.value("run_id") == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_same_training(_record_of(tmp_path), reference)


@pytest.mark.integration
def test_ctrl_c_to_the_whole_process_group_stops_the_training_and_its_loader_workers(tmp_path, small_config):
    """A terminal's Ctrl-C reaches every process of the group, the batch-reading workers too: they leave the
    stop to the training, which ends the run as KILLED with the resume command, and no worker is left."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start_training(tmp_path, small_config, store, "--loader-workers", "2", own_group=True)
    wait_for_epoch(process, 2)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "DataLoader worker" not in stderr and "Traceback" not in stderr
    assert any(line.startswith("resume: coroseg train --resume ") for line in stdout.splitlines())
    from mlflow import MlflowClient

    run_id = stdout.strip().splitlines()[-1].split(": ", 1)[1]
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.status == "KILLED"
    time.sleep(1)
    left = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left in the group: {left}"


def test_resume_refuses_other_settings_and_other_data(tmp_path, small_config, folder):
    first = run_cli("train", "--data", folder, "--config", small_config, "--epochs", 2, "--no-tracking", cwd=tmp_path)
    assert first.exit_code == 0, first.stderr
    record = tmp_path / first.value("local_record")
    (record / "summaries/training/summary.json").unlink()          # as if it had been stopped after epoch 2
    changed = run_cli("train", "--resume", record, "--learning-rate", "0.1", "--batch-size", 2, cwd=tmp_path)
    assert changed.exit_code == 2
    assert "batch_size (4 recorded, 2 asked)" in changed.stderr and "learning_rate" in changed.stderr
    (folder / "1_gt.png").write_bytes((folder / "2_gt.png").read_bytes())
    other_data = run_cli("train", "--resume", record, cwd=tmp_path)
    assert other_data.exit_code == 2 and "the data differ" in other_data.stderr


def test_resume_of_a_finished_or_unknown_run_is_refused(tmp_path, trained):
    finished = run_cli("train", "--resume", trained.record_dir, cwd=tmp_path)
    assert finished.exit_code == 2 and "nothing to resume" in finished.stderr
    unknown = run_cli("train", "--resume", "0123456789abcdef", cwd=tmp_path)
    assert unknown.exit_code == 2 and "no record of that run id" in unknown.stderr


def _read_until(process: subprocess.Popen, *starts: str) -> None:
    """Read stderr past a line starting with each of `starts`, in that order."""
    lines, wanted = [], list(starts)
    for line in process.stderr:
        lines.append(line)
        if line.startswith(wanted[0]):
            wanted.pop(0)
            if not wanted:
                return
    raise AssertionError(f"training ended before {wanted[0]!r}:\n" + "".join(lines))


@pytest.mark.integration
def test_a_stopped_cross_validation_resumes_its_stopped_fold_and_keeps_its_finished_one(tmp_path, small_config):
    """Stopped in fold 2 of 2: the resume takes fold 1 as it finished, carries fold 2 on from its last epoch in
    the same nested run, and the folds and their ensemble come out as an uninterrupted run's, bit for bit."""
    (tmp_path / "reference").mkdir()
    reference = run_cli("train", "--config", small_config, "--epochs", EPOCHS, "--folds", 2, "--no-tracking",
                        cwd=tmp_path / "reference")
    assert reference.exit_code == 0, reference.stderr
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start_training(tmp_path, small_config, store, "--folds", "2")
    _read_until(process, "fold 2/2", f"epoch 2/{EPOCHS}")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    command = next(line for line in stdout.splitlines() if line.startswith("resume: ")).split(": ", 1)[1]
    record = _record_of(tmp_path)
    assert command == f"coroseg train --resume {record.relative_to(tmp_path)}"   # the parent's, not a fold's
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    parent_id = stdout.strip().splitlines()[-1].split(": ", 1)[1]
    fold_ids = {r.info.run_name: r.info.run_id for r in client.search_runs(
        [client.get_run(parent_id).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")}
    assert {name: client.get_run(i).info.status for name, i in fold_ids.items()} == {
        "resumable-fold1": "FINISHED", "resumable-fold2": "KILLED"}

    result = run_cli("train", "--resume", record, "--tracking-uri", store, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.value("run_id") == parent_id
    assert "fold 1/2: finished before" in result.stderr and "resuming after epoch" in result.stderr
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([parent_id, *fold_ids.values()])   # no new run
    assert all(r.info.status == "FINISHED" for r in runs)
    steps = [m.step for m in client.get_metric_history(fold_ids["resumable-fold2"], "val_dice")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1))
    original = tmp_path / "reference" / reference.value("local_record")
    for fold in ("fold_1", "fold_2"):
        assert_same_training(record / fold, original / fold)
    ensemble, expected = final_weights(record), final_weights(original)
    assert ensemble.keys() == expected.keys() and all((ensemble[k] == expected[k]).all() for k in ensemble)

    def fold_rows(parent: Path) -> list[dict]:
        rows = json.loads((parent / "summaries/training/cross_validation.json").read_text())["folds"]
        return [{k: row[k] for k in ("best_epoch", "best_val_dice", "val_loss_at_best", "epochs")} for row in rows]
    assert fold_rows(record) == fold_rows(original)
