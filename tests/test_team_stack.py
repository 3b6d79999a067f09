"""A team's MLflow stack, all real, started and stopped here by deploy/team_stack.py (the script a team runs):
PostgreSQL as the backend store, SeaweedFS' S3 for the artifacts (proxied by the server), basic auth. Four
trainings at once against it each record a complete run, and their password is nowhere in what they leave."""

from __future__ import annotations

import importlib.util
import os
import random
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from coroseg import mlflow_env
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_SCRIPT = ROOT / "deploy" / "team_stack.py"
TRAININGS = 4
EPOCHS = 2
EXPERIMENT = "team-stack"

pytestmark = pytest.mark.integration


def _load_deploy_script():
    spec = importlib.util.spec_from_file_location("team_stack", DEPLOY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


team_stack = _load_deploy_script()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((team_stack.LOOPBACK, port))
            return True
        except OSError:
            return False


def _listened(port: int) -> bool:
    try:
        socket.create_connection((team_stack.LOOPBACK, port), timeout=2).close()
        return True
    except OSError:
        return False


def _seaweedfs_base_port(taken: set[int]) -> int:
    """A first port whose block of SeaweedFS ports, and each of them + its gRPC offset, are all free (and not
    among the ports `taken` for the rest of the stack, not bound yet)."""
    for _ in range(200):
        base = random.randrange(20000, min(45000, team_stack.MAX_SEAWEEDFS_PORT))
        block = range(base, base + team_stack.SEAWEEDFS_PORTS)
        ports = {*block, *(p + team_stack.SEAWEEDFS_GRPC_OFFSET for p in block)}
        if not ports & taken and all(_port_free(p) for p in ports):
            return base
    raise AssertionError("no free block of SeaweedFS ports on 127.0.0.1")


def _deploy(*args, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEPLOY_SCRIPT), *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@dataclass
class Stack:
    state: Path
    config: team_stack.StackConfig
    uri: str
    keys: team_stack.Secrets
    start_output: str

    def secrets(self) -> tuple[str, ...]:
        k = self.keys
        return k.database_password, k.s3_secret_key, k.flask_secret_key, k.admin_password


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack as a team starts it (`team_stack.py start`, which returns once all is ready), on free loopback
    ports; stopped with `team_stack.py stop`, by the PIDs it recorded, and checked gone."""
    state = tmp_path_factory.mktemp("team") / "stack"
    port, postgres_port = free_port(), free_port()
    config = team_stack.StackConfig(state, port=port, workers=1, postgres_port=postgres_port,
                                    seaweedfs_port=_seaweedfs_base_port({port, postgres_port}))
    started = _deploy("start", "--state", state, "--port", config.port, "--workers", 1,
                      "--postgres-port", config.postgres_port, "--seaweedfs-port", config.seaweedfs_port)
    processes = team_stack.load_state(state).processes if team_stack.state_path(state).is_file() else {}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield Stack(state, config, config.local_uri, team_stack.load_secrets(state), started.stdout + started.stderr)
    finally:
        stopped = _deploy("stop", "--state", state, timeout=240)
    assert stopped.returncode == 0, stopped.stderr
    assert set(processes) == {"postgres", "seaweedfs", "mlflow"}
    assert {line.split(":")[0] for line in stopped.stdout.splitlines() if ": stopped (pid" in line} == set(processes), \
        stopped.stdout
    assert not any(team_stack.alive(p) for p in processes.values()), stopped.stdout
    assert not [port for port in (config.port, config.postgres_port, config.s3_port) if _listened(port)]
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{config.s3_port}.sock"))      # weed's sockets went with it
    assert _deploy("status", "--state", state).returncode == 1          # nothing left to report as running


def _get(url: str, username: str | None = None, password: str | None = None) -> int:
    headers = {"Authorization": "Basic " + b64encode(f"{username}:{password}".encode()).decode()} if username else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    import psutil

    processes = [psutil.Process(pid) for pid in pids]
    processes += [child for p in processes for child in p.children(recursive=True)]
    return {(c.laddr.ip, c.laddr.port) for p in processes for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_the_stack_listens_on_loopback_only_and_lets_no_one_in_without_credentials(stack):
    import psycopg
    from botocore import UNSIGNED
    from botocore.exceptions import ClientError

    assert f"tracking_uri: {stack.uri}" in stack.start_output
    assert "MLFLOW_TRACKING_USERNAME" in stack.start_output and "MLFLOW_TRACKING_PASSWORD" in stack.start_output
    assert not [s for s in stack.secrets() if s in stack.start_output]
    assert _deploy("status", "--state", stack.state).returncode == 0

    pids = [p.pid for p in team_stack.load_state(stack.state).processes.values()]
    listening = _listening(pids)
    seaweedfs = {stack.config.seaweedfs_port + i for i in range(team_stack.SEAWEEDFS_PORTS)}
    expected = {stack.config.port, stack.config.postgres_port} | seaweedfs | {
        p + team_stack.SEAWEEDFS_GRPC_OFFSET for p in seaweedfs}
    assert expected <= {port for _, port in listening}, listening
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening

    search = f"{stack.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(search) == 401
    assert _get(search, team_stack.ADMIN_USERNAME, "not-the-password") == 401
    assert _get(search, team_stack.ADMIN_USERNAME, stack.keys.admin_password) == 200

    anonymous = team_stack.s3_client(stack.config, stack.keys)
    anonymous.meta.events.register("choose-signer.s3.*", lambda **_: UNSIGNED)
    with pytest.raises(ClientError, match="AccessDenied"):
        anonymous.list_objects_v2(Bucket=team_stack.BUCKET)
    wrong = replace(stack.keys, s3_secret_key="wrong" + stack.keys.s3_secret_key)
    with pytest.raises(ClientError):
        team_stack.s3_client(stack.config, wrong).list_objects_v2(Bucket=team_stack.BUCKET)
    assert team_stack.s3_client(stack.config, stack.keys).head_bucket(Bucket=team_stack.BUCKET)

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=stack.config.postgres_port, user=team_stack.DATABASE_USER,
                        password="not-the-password", dbname="postgres", connect_timeout=5).close()


def _member_environment(username: str, password: str) -> dict[str, str]:
    """A team member's shell: their credentials, and only the MLflow settings coroseg makes itself (in-process
    runs of other tests have set some here)."""
    env = {k: v for k, v in os.environ.items()
           if k not in mlflow_env.DEFAULTS and not k.startswith(("MLFLOW_TRACKING_", "AWS_", "PG"))}
    env.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
    return env


def _files_holding(folder: Path, needles: tuple[str, ...]) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and any(n.encode() in p.read_bytes() for n in needles)]


REQUIRED_ARTIFACTS = ["final_model/weights/model.safetensors", "summaries/training/",
                      "config/training/", "logs/training/", "final_model/training_history/", "final_model/summary/",
                      "checkpoints/best_model/metadata/", "visualizations/training_curves/epoch_002/"]
EPOCH_METRICS = ["train_loss", "val_loss", "val_dice", "learning_rate", "epoch_duration_seconds"]


def test_four_trainings_at_once_each_record_a_complete_run_and_their_password_nowhere(stack, small_config, tmp_path,
                                                                                      monkeypatch):
    import torch
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    from coroseg.inference.model_loading import load_model

    member, password = "member", "team-pw-" + secrets.token_urlsafe(12)
    created = _deploy("add-user", member, "--state", stack.state, "--password-stdin", stdin=password + "\n")
    assert created.returncode == 0, created.stderr
    assert password not in created.stdout + created.stderr

    env = _member_environment(member, password)
    workdirs = [tmp_path / f"member-{i}" for i in range(TRAININGS)]
    processes = []
    for i, workdir in enumerate(workdirs):
        workdir.mkdir()
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "coroseg", "train", "--config", str(small_config), "--epochs", str(EPOCHS),
             "--tracking-uri", stack.uri, "--experiment", EXPERIMENT, "--run-name", f"member-{i}"],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in processes]

    run_ids = []
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "tracking failed" not in stderr and "coroseg sync" not in stderr, stderr     # all of it was sent
        assert password not in stdout + stderr
        last = stdout.strip().splitlines()[-1]
        assert last.startswith("run_id: ") and not last.startswith("run_id: none"), stdout + stderr
        run_ids.append(last.split(": ", 1)[1])
    assert len(set(run_ids)) == TRAININGS

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", member)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = MlflowClient(tracking_uri=stack.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    needles = (password, *stack.secrets())
    for i, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert (run.info.status, run.info.run_name, run.info.user_id) == ("FINISHED", f"member-{i}", member)
        assert run.info.experiment_id == experiment.experiment_id
        params = run.data.params
        assert (params["epochs"], params["image_size"], params["model_family"]) == (str(EPOCHS), "64", "unet")
        assert params["artifact_organization"] == "hierarchical" and run.data.tags["task"] == "coronary_segmentation"
        for name in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run_id, name)] == list(range(1, EPOCHS + 1)), name
        assert "best_val_dice" in run.data.metrics and "training_duration_seconds" in run.data.metrics
        # Every artifact of the run, through the server's proxy; the listing is the server's.
        downloaded = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts" / run_id)))
        artifacts = {p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*") if p.is_file()}
        for required in REQUIRED_ARTIFACTS + [f"metrics/epoch_{e:03d}/" for e in range(1, EPOCHS + 1)]:
            assert any(a.startswith(required) for a in artifacts), (required, sorted(artifacts))
        assert _files_holding(downloaded, needles) == []
        assert not [v for v in {**params, **run.data.tags}.values() if any(n in v for n in needles)]

        loaded = load_model(f"runs:/{run_id}/pytorch_model", torch.device("cpu"), stack.uri)
        final = load_file(str(downloaded / "final_model/weights/model.safetensors"))
        state = loaded.module.state_dict()
        assert final.keys() == state.keys() and all(torch.equal(final[k], state[k]) for k in final)
        with torch.no_grad():
            assert loaded.module(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)

    for workdir in workdirs:
        assert (workdir / "coroseg_runs").is_dir()
        assert _files_holding(workdir, needles) == []
    assert _files_holding(stack.state / "logs", needles) == []

    # The runs are PostgreSQL rows and their files SeaweedFS objects, not some fallback store of the server.
    with team_stack.postgres_connect(stack.config, stack.keys, team_stack.TRACKING_DATABASE) as connection:
        rows = dict(connection.execute("SELECT run_uuid, status FROM runs").fetchall())
    assert {rows.get(run_id) for run_id in run_ids} == {"FINISHED"}
    s3 = team_stack.s3_client(stack.config, stack.keys)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=team_stack.BUCKET)
            for o in page.get("Contents", [])]
    for run_id in run_ids:
        assert any(k.endswith(f"{run_id}/artifacts/final_model/weights/model.safetensors") for k in keys), keys
