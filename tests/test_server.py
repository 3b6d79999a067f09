"""Against a real MLflow tracking server on loopback: the team set-up. And `coroseg ui`."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import EPOCHS, free_port, run_cli, start_mlflow_server, stop, wait_http
from tests.test_training_run import all_artifacts


def test_train_and_predict_through_a_tracking_server(mlflow_server, small_config, pairs_dir, tmp_path):
    from mlflow import MlflowClient

    result = run_cli("train", "--config", small_config, "--epochs", EPOCHS, "--tracking-uri", mlflow_server,
                     "--experiment", "team", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    run_id = result.value("run_id")
    client = MlflowClient(tracking_uri=mlflow_server)
    artifacts = all_artifacts(client, run_id)
    assert f"predictions/epoch_{EPOCHS:03d}/" in "".join(artifacts)
    assert "final_model/weights/model.safetensors" in artifacts
    assert len(client.get_metric_history(run_id, "val_dice")) == EPOCHS
    pred = run_cli("predict", "--model", f"runs:/{run_id}/pytorch_model", "--input", pairs_dir, "--output",
                   tmp_path / "out", "--tracking-uri", mlflow_server, "--experiment", "team")
    assert pred.exit_code == 0, pred.stderr
    assert client.get_run(pred.value("run_id")).data.metrics["files_processed"] == 6


def test_ui_serves_the_local_store_on_loopback_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    process = subprocess.Popen([sys.executable, "-m", "coroseg", "ui", "--port", str(port)], cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().strip() == f"Access MLflow UI: http://localhost:{port}"
        wait_http(f"http://127.0.0.1:{port}/health")
        assert (tmp_path / "mlflow.db").exists()          # the embedded store of the working directory
    finally:
        stop(process)
    assert process.returncode == 0
    # the server went down with it
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        raise AssertionError("the MLflow server outlived `coroseg ui`")
    except OSError:
        pass


def test_server_dying_mid_run_does_not_stop_training(small_config, tmp_path):
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    try:
        train = subprocess.Popen(
            [sys.executable, "-m", "coroseg", "train", "--config", str(small_config), "--epochs", "6",
             "--tracking-uri", f"http://127.0.0.1:{port}"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in train.stderr:                      # kill the server once epoch 2 is done
            if line.startswith("epoch 2/6"):
                stop(server)
                break
        rest = train.stderr.read()
        stdout = train.stdout.read()
        assert train.wait(timeout=300) == 0, rest
    finally:
        stop(server)
    assert rest.count("tracking failed") == 1, rest
    record = tmp_path / next(l.split(": ", 1)[1] for l in stdout.splitlines() if l.startswith("local_record: "))
    assert (record / "metrics/epoch_006/metrics.json").is_file()
    assert (record / "pytorch_model/MLmodel").is_file()        # the model is kept locally
    # The run exists on the server, so its id is printed, with the command that sends the rest once it is back.
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("run_id: ") and not last.startswith("run_id: none"), stdout
    assert f"coroseg sync {record.relative_to(tmp_path)}" in rest, rest
