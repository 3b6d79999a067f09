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
