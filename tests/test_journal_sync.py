"""Journal-first tracking and `coroseg sync`: nothing is lost when the server dies, hangs or was never there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from coroseg.tracking import layout
from coroseg.tracking.journal import Journal
from tests.conftest import free_port, run_cli, start_mlflow_server, stop
from tests.test_training_run import all_artifacts


def _env(**extra: str) -> dict[str, str]:
    # conftest's in-process runs may have set MLFLOW_TRACKING_URI
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, **extra}


def _train(workdir: Path, config: Path, uri: str, *args: str, **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "coroseg", "train", "--config", str(config), "--tracking-uri", uri, *args]
    return subprocess.Popen(command, cwd=workdir, env=_env(**env), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _value(stdout: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith(f"{key}: "))


def _journal_metrics(record: Path) -> dict[str, set[int]]:
    steps: dict[str, set[int]] = {}
    for entry in Journal(record).entries():
        if entry["kind"] == "metrics":
            for key in entry["metrics"]:
                steps.setdefault(key, set()).add(entry["step"] or 0)
    return steps


def _record_files(record: Path) -> set[str]:
    """The record's files that are the run's artifacts: not its journal, nor the locally saved model."""
    return {str(p.relative_to(record)) for p in record.rglob("*")
            if p.is_file() and p.relative_to(record).parts[0] not in (".coroseg", layout.MODEL_NAME)}


def _assert_server_run_equals_record(client, run_id: str, record: Path) -> None:
    for key, steps in _journal_metrics(record).items():
        assert {m.step for m in client.get_metric_history(run_id, key)} == steps, key
    assert all_artifacts(client, run_id) == _record_files(record)
    stepped = [p for p in all_artifacts(client, run_id, "images", True) if p.endswith(".png")]
    assert len(stepped) == len([e for e in Journal(record).entries() if e["kind"] == "image"])
    assert client.get_run(run_id).info.status == "FINISHED"


def test_journal_numbers_entries_and_remembers_what_was_sent(tmp_path):
    journal = Journal(tmp_path)
    first = journal.append("start", run_name="r", tags={})
    second = journal.append("metrics", metrics={"a": 1.0}, step=1)
    assert (first["seq"], second["seq"]) == (1, 2) and second["time"] >= first["time"]
    journal.mark_sent("run-a", [1])
    assert [e["seq"] for e in journal.pending("run-a")] == [2]
    assert [e["seq"] for e in journal.pending("run-b")] == [1, 2]       # sent to a run is per run
    with journal.path.open("a") as handle:                                  # a process killed mid-line
        handle.write('{"seq": 3, "kin')
    assert [e["seq"] for e in Journal(tmp_path).entries()] == [1, 2]
    assert Journal(tmp_path).append("finish", status="FINISHED")["seq"] == 3  # a resumed journal counts on


def test_drain_bound_comes_from_the_environment(monkeypatch):
    from coroseg.tracking.uploader import DEFAULT_DRAIN_S, drain_seconds

    monkeypatch.setenv("COROSEG_UPLOAD_DRAIN_SECONDS", "7.5")
    assert drain_seconds() == 7.5
    monkeypatch.delenv("COROSEG_UPLOAD_DRAIN_SECONDS")
    assert drain_seconds() == DEFAULT_DRAIN_S
    monkeypatch.setenv("COROSEG_UPLOAD_DRAIN_SECONDS", "soon")
    result = run_cli("train", "--no-tracking")              # refused before any work
    assert result.exit_code == 2
    assert result.stderr.strip() == "coroseg: error: COROSEG_UPLOAD_DRAIN_SECONDS='soon': must be a number"


def test_sync_of_a_no_tracking_record_creates_the_run_once(tmp_path, small_config):
    from mlflow import MlflowClient

    result = run_cli("train", "--config", small_config, "--epochs", 2, "--no-tracking", "--run-name", "offline",
                     cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    record = tmp_path / result.value("local_record")
    assert not (tmp_path / "mlflow.db").exists()
    store = f"sqlite:///{tmp_path / 'team.db'}"
    first = run_cli("sync", record, "--tracking-uri", store)
    assert first.exit_code == 0, first.stderr
    run_id = first.stdout.strip().splitlines()[-1].removeprefix("run_id: ")
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.run_name == "offline" and run.info.status == "FINISHED"
    assert not run.data.tags.get("coroseg.original_run_id")            # there was no run before
    assert run.data.params["epochs"] == "2"
    _assert_server_run_equals_record(client, run_id, record)
    history = {k: len(client.get_metric_history(run_id, k)) for k in run.data.metrics}

    second = run_cli("sync", record, "--tracking-uri", store)
    assert second.exit_code == 0, second.stderr
    assert "nothing to send" in second.stdout and second.stdout.strip().endswith(f"run_id: {run_id}")
    assert {k: len(client.get_metric_history(run_id, k)) for k in history} == history
    assert len(client.search_runs([run.info.experiment_id])) == 1
    journal = json.loads((record / layout.RECORD_FILE).read_text())
    assert journal["run_id"] == run_id and journal["status"] == "FINISHED"


def test_sync_into_a_server_without_the_run_tags_the_original(trained, tmp_path):
    from mlflow import MlflowClient

    record = tmp_path / "record"
    shutil.copytree(trained.record_dir, record)
    store = f"sqlite:///{tmp_path / 'other.db'}"
    result = run_cli("sync", record, "--tracking-uri", store)
    assert result.exit_code == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1].removeprefix("run_id: ")
    assert run_id != trained.run_id
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(run_id).data.tags["coroseg.original_run_id"] == trained.run_id
    _assert_server_run_equals_record(client, run_id, record)
    original = client.get_metric_history(run_id, "val_dice")
    there = MlflowClient(tracking_uri=trained.store).get_metric_history(trained.run_id, "val_dice")
    assert sorted((m.step, m.timestamp) for m in original) == sorted((m.step, m.timestamp) for m in there)


class _SilentServer:
    """Accepts connections and never answers: a hung tracking server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:      # closed at the end of the test
                return
            self.held.append(connection)

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.mark.integration
def test_a_server_that_never_answers_costs_only_the_bounded_drain(tmp_path, small_config):
    server = _SilentServer()
    try:
        train = _train(tmp_path, small_config, f"http://127.0.0.1:{server.port}", "--epochs", "1",
                       COROSEG_UPLOAD_DRAIN_SECONDS="5")
        stdout, stderr = train.communicate(timeout=240)     # a hang guard, not a timing
    finally:
        server.close()
    assert train.returncode == 0, stderr
    record = _value(stdout, "local_record")
    assert f"coroseg sync {record}" in stderr
    assert stdout.strip().splitlines()[-1].startswith("run_id: ")
    assert (tmp_path / record / "pytorch_model/MLmodel").is_file()


@pytest.mark.integration
def test_server_killed_mid_training_then_sync_makes_the_run_equal_the_record(tmp_path, small_config):
    import mlflow
    from mlflow import MlflowClient

    folder, port = tmp_path / "server", free_port()
    folder.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(folder, port)
    try:
        train = _train(tmp_path, small_config, uri, "--epochs", "5", "--experiment", "outage")
        seen = []
        for line in train.stderr:
            seen.append(line)
            if line.startswith("epoch 2/5"):
                stop(server, signal.SIGKILL)      # no goodbye to its clients
                server = start_mlflow_server(folder, port)    # back on the same store and port
                break
        stdout, rest = train.communicate(timeout=300)
        assert train.returncode == 0, "".join(seen) + rest
        record = tmp_path / _value(stdout, "local_record")
        run_id = _value(stdout, "run_id")
        synced = run_cli("sync", record, "--tracking-uri", uri)
        assert synced.exit_code == 0, synced.stderr
        assert synced.stdout.strip().splitlines()[-1] == f"run_id: {run_id}"   # the same run, completed
        client = MlflowClient(tracking_uri=uri)
        _assert_server_run_equals_record(client, run_id, record)
        assert len(client.get_metric_history(run_id, "val_dice")) == 5
        mlflow.set_tracking_uri(uri)
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/pytorch_model")
        assert np.asarray(model.predict(np.random.rand(2, 1, 40, 48).astype(np.float32))).shape == (2, 1, 40, 48)
    finally:
        stop(server)


@pytest.mark.integration
def test_four_trainings_at_once_into_one_server_each_hold_only_their_own(mlflow_server, tmp_path, small_config):
    from mlflow import MlflowClient

    processes = [_train(tmp_path, small_config, mlflow_server, "--epochs", "2", "--experiment", "four-at-once",
                        "--run-name", f"process-{i}") for i in range(4)]
    outputs = [p.communicate(timeout=600) for p in processes]
    client = MlflowClient(tracking_uri=mlflow_server)
    for i, (process, (stdout, stderr)) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, stderr
        assert "tracking failed" not in stderr and "coroseg sync" not in stderr, stderr
        run_id = _value(stdout, "run_id")
        run = client.get_run(run_id)
        assert run.info.run_name == f"process-{i}" and run.data.params["run_name"] == f"process-{i}"
        assert run.info.status == "FINISHED"
        record = tmp_path / _value(stdout, "local_record")
        _assert_server_run_equals_record(client, run_id, record)
        assert len(client.get_metric_history(run_id, "val_dice")) == 2
        config = client.download_artifacts(run_id, "config/training/config.yaml", str(tmp_path / f"dl{i}"))
        assert f"run_name: process-{i}" in Path(config).read_text()


def test_a_resumed_run_carries_on_its_journal_and_its_mlflow_run(tmp_path):
    from mlflow import MlflowClient

    from coroseg.tracking.mlflow_tracker import MlflowTracker

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = tmp_path / "record"
    first = MlflowTracker(store, "resume", record)
    first.start("resumed", {"task": "t"})
    run_id = first.run_id
    first.log_metrics({"val_dice": 0.1}, step=1)
    first.finish("KILLED")
    again = MlflowTracker(store, "resume", record)
    again.start("resumed", {"task": "t"}, resume_run_id=run_id)
    assert again.run_id == run_id
    again.log_metrics({"val_dice": 0.2}, step=2)
    again.finish("FINISHED")
    client = MlflowClient(tracking_uri=store)
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_dice")) == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [e["kind"] for e in Journal(record).entries()] == ["start", "metrics", "finish", "resume", "metrics",
                                                              "finish"]
    assert Journal(record).pending(run_id) == []


def test_an_untracked_resumed_record_syncs_as_one_run(tmp_path):
    from mlflow import MlflowClient

    from coroseg.tracking.journal_tracker import JournalTracker

    record = tmp_path / "record"
    first = JournalTracker(record, None, "offline")
    first.start("offline-run", {})
    first.log_metrics({"val_dice": 0.1}, step=1)
    first.finish("KILLED")
    (record / layout.RESUME_STATE_DIR).mkdir(parents=True)       # what `train --resume` finds
    again = JournalTracker(record, None, "offline")
    again.start("offline-run", {})
    again.log_metrics({"val_dice": 0.2}, step=2)
    again.finish("FINISHED")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("sync", record, "--tracking-uri", store)
    assert result.exit_code == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1].removeprefix("run_id: ")
    client = MlflowClient(tracking_uri=store)
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_dice")) == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"
