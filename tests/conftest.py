"""Shared fixtures: a tiny synthetic data set, a store per session, one short training run reused by many tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# Every test's frame cache (data/frame_store.py) in one folder of this session, not the user's ~/.cache.
os.environ["COROSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="coroseg_test_cache_")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Sample system metrics often enough that a seconds-long test run records some.
os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.5"
os.environ["MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"] = "1"

from coroseg.cli import main  # noqa: E402

EPOCHS = 3
SMALL_CONFIG = """\
synthetic_count: 12
synthetic_size: 96
image_size: 64
batch_size: 4
val_samples: 2
patience: 10
"""


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def value(self, key: str) -> str:
        """The value of a `key: value` line of standard output."""
        for line in self.stdout.splitlines():
            if line.startswith(f"{key}: "):
                return line.split(": ", 1)[1]
        raise AssertionError(f"no {key!r} line in:\n{self.stdout}\n{self.stderr}")


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """Run `coroseg ARGS` in-process (no interpreter start-up per call), in `cwd`."""
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process by PID; one started in its own session (a server) goes with its whole process group."""
    def send(s: int) -> None:
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, s)
            else:
                os.kill(process.pid, s)
        except ProcessLookupError:
            pass

    send(sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on loopback with a SQLite store in `folder`, in its own process group so that
    `stop` (even SIGKILL) takes its helpers along. Without MLflow's GenAI job runners, which coroseg does not
    use and which start several more processes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
    except BaseException:
        stop(process)
        raise
    return process


@pytest.fixture(scope="session")
def small_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(SMALL_CONFIG)
    return path


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> Path:
    from coroseg.data.synthetic import write_synthetic_set

    folder = tmp_path_factory.mktemp("pairs")
    write_synthetic_set(folder, count=6, size=80, seed=3)
    return folder


@pytest.fixture()
def folder(tmp_path, pairs_dir) -> Path:
    """A copy of the pairs that a test may break."""
    data = tmp_path / "data"
    shutil.copytree(pairs_dir, data)
    return data


@dataclass
class TrainedRun:
    workdir: Path
    store: str
    run_id: str
    record_dir: Path
    result: CliResult


@pytest.fixture(scope="session")
def trained(tmp_path_factory, small_config) -> TrainedRun:
    """One short training run on synthetic frames into a fresh SQLite store."""
    workdir = tmp_path_factory.mktemp("train")
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    result = run_cli("train", "--config", small_config, "--epochs", EPOCHS, "--tracking-uri", store,
                     "--experiment", "tests", "--run-name", "fixture-run", cwd=workdir)
    assert result.exit_code == 0, result.stderr
    return TrainedRun(workdir, store, result.value("run_id"), workdir / result.value("local_record"), result)


@pytest.fixture(scope="session")
def local_model(trained, tmp_path_factory) -> str:
    """The fixture run's model folder, downloaded from the store (do not change it: copy it first)."""
    import mlflow

    mlflow.set_tracking_uri(trained.store)     # a logged model's runs:/ path resolves through the global URI
    return mlflow.artifacts.download_artifacts(f"runs:/{trained.run_id}/pytorch_model", tracking_uri=trained.store,
                                               dst_path=str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="session")
def pt2_model(tmp_path_factory) -> Path:
    """A torch.export (pt2) archive as `mlflow.pytorch.save_model` writes it, with coroseg metadata and no
    safetensors, so that loading goes through the archive: how a model exported elsewhere (or logged by an
    earlier coroseg) arrives. Fixed shapes: the export takes a second or two."""
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from coroseg.config import TrainConfig
    from coroseg.model_spec import ModelSpec
    from coroseg.models import build_model

    folder = tmp_path_factory.mktemp("pt2") / "model"
    spec = Schema([TensorSpec(np.dtype(np.float32), (2, 1, 64, 64))])
    mlflow.pytorch.save_model(build_model("unet").eval(), str(folder), serialization_format="pt2",
                              signature=ModelSignature(inputs=spec, outputs=spec),
                              input_example=np.random.rand(2, 1, 64, 64).astype(np.float32),
                              metadata=ModelSpec.of_training(TrainConfig(image_size=64)).to_metadata(),
                              pip_requirements=["torch"])
    return folder


@pytest.fixture()
def client(trained):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=trained.store)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback, stopped by PID at the end."""
    port = free_port()
    process = start_mlflow_server(tmp_path_factory.mktemp("server"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
