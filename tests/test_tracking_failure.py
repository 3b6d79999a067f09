"""When tracking fails, training still runs to the end, the record stays on disk, the user is told once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import EPOCHS, free_port, run_cli

SECRET = "s3cr3t-pass"


@pytest.mark.parametrize("uri", [
    f"http://alice:{SECRET}@127.0.0.1:{free_port()}",    # nothing listens there
    "nosuchscheme://somewhere/store",                    # a URI MLflow cannot use
])
def test_training_completes_and_keeps_a_local_record(uri, tmp_path, small_config):
    started = time.perf_counter()
    result = run_cli("train", "--config", small_config, "--epochs", EPOCHS, "--tracking-uri", uri, cwd=tmp_path)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "tracking failed" in line]
    assert len(warnings) == 1, result.stderr            # told once
    record = tmp_path / result.value("local_record")
    assert str(record.name) in warnings[0]                # ... and told where the record is
    assert SECRET not in result.stderr + result.stdout
    assert elapsed < 120, f"tracking failure cost {elapsed:.0f}s"   # guards against MLflow's minutes of retries
    for epoch in range(1, EPOCHS + 1):
        assert (record / f"metrics/epoch_{epoch:03d}/metrics.json").is_file()
        assert (record / f"logs/epoch_{epoch:03d}/epoch.log").is_file()
    assert (record / "final_model/weights/model.safetensors").is_file()
    assert (record / "summaries/training/summary.md").is_file()
    for path in record.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".md", ".log"):
            assert SECRET not in path.read_text(), path
    assert result.stdout.strip().splitlines()[-1] == "run_id: none (tracking failed)"


def test_local_model_of_a_failed_tracking_run_is_usable(tmp_path, small_config, pairs_dir):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_cli("train", "--config", small_config, "--epochs", 1, "--tracking-uri", uri, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    model_folder = result.value("model_uri")
    assert (tmp_path / model_folder / "MLmodel").is_file()
    import mlflow

    model = mlflow.pyfunc.load_model(str(tmp_path / model_folder))
    assert np.asarray(model.predict(np.random.rand(2, 1, 40, 48).astype(np.float32))).shape == (2, 1, 40, 48)
    out = run_cli("predict", "--model", tmp_path / model_folder, "--input", pairs_dir, "--output", tmp_path / "p",
                  "--no-tracking")
    assert out.exit_code == 0, out.stderr


def test_no_tracking_records_nothing_in_mlflow(tmp_path, small_config):
    result = run_cli("train", "--config", small_config, "--epochs", 1, "--no-tracking", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert (tmp_path / result.value("local_record") / "final_model/weights/model.safetensors").is_file()
    assert "tracking failed" not in result.stderr


def test_a_run_refused_for_a_moment_is_created_and_a_lasting_refusal_is_raised(monkeypatch):
    """basic-auth writes the permission on a new experiment after the experiment: another process of the same
    user may be refused its run in between; coroseg waits and asks again, a refusal that lasts is raised."""
    import types

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    import coroseg.tracking.sender as sender

    monkeypatch.setattr(sender, "PERMISSION_WAITS", (0.0, 0.0))

    class Client:
        def __init__(self, refusals: int) -> None:
            self.refusals, self.calls = refusals, 0

        def get_experiment_by_name(self, name):
            return types.SimpleNamespace(experiment_id="1")

        def create_run(self, experiment_id, **kwargs):
            self.calls += 1
            if self.calls <= self.refusals:
                raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

    start = {"time": 0.0, "tags": {}, "run_name": "x"}
    once = Client(refusals=1)
    assert sender.create_run(once, start, "e", None) == "r1" and once.calls == 2
    always = Client(refusals=10)
    with pytest.raises(MlflowException, match="Permission denied"):
        sender.create_run(always, start, "e", None)
    assert always.calls == 3                      # the first try and one after each wait
