"""Several coroseg processes started at once into one new SQLite store all get their runs recorded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROCESSES = 4


def _env_without_tracking_uri() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)   # conftest's in-process runs may have set it
    return env


def _start_train(workdir: Path, config: Path, store: str, index: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "coroseg", "train", "--config", str(config), "--epochs", "1",
               "--tracking-uri", store, "--experiment", "concurrent", "--run-name", f"process-{index}"]
    return subprocess.Popen(command, cwd=workdir, env=_env_without_tracking_uri(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.integration
def test_processes_started_together_into_a_new_sqlite_store_all_record_their_run(tmp_path, small_config):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    processes = [_start_train(tmp_path, small_config, store, i) for i in range(PROCESSES)]
    outputs = [p.communicate(timeout=600) for p in processes]

    run_ids = []
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "tracking failed" not in stderr, stderr
        last = stdout.strip().splitlines()[-1]
        assert last.startswith("run_id: ") and not last.startswith("run_id: none"), stdout + stderr
        run_ids.append(last.split(": ", 1)[1])

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)    # the store still opens
    experiment = client.get_experiment_by_name("concurrent")
    runs = {run_id: client.get_run(run_id) for run_id in run_ids}
    assert len(runs) == PROCESSES
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert run.info.experiment_id == experiment.experiment_id     # not filed in "Default"
    assert {r.info.run_name for r in runs.values()} == {f"process-{i}" for i in range(PROCESSES)}


def test_the_default_store_is_created_under_a_lock_beside_it(tmp_path):
    """No URI and no MLFLOW_TRACKING_URI: MLflow's default ./mlflow.db, locked like any other SQLite file."""
    code = "from coroseg.tracking.store import prepare_store; prepare_store(None); prepare_store(None)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env_without_tracking_uri(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlflow.db.lock").is_file()


def test_other_stores_are_left_alone(tmp_path):
    from coroseg.tracking.store import prepare_store

    prepare_store(f"file://{tmp_path / 'mlruns'}")
    prepare_store("http://127.0.0.1:9")          # nothing listens: not contacted here
    assert list(tmp_path.iterdir()) == []
