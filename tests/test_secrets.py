"""Secrets stay out of messages, params, tags and records; record files follow the umask; a dead server
costs seconds, not minutes, from the first MLflow call of a command."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from coroseg import mlflow_env
from coroseg.tracking.redact import redact_text, redact_uri
from tests.conftest import free_port, run_cli

TOKEN = "SECRETVALUE123"
PASSWORD = "env-pa55word-XYZ"


def _coroseg(*args, cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """`coroseg ARGS` in its own interpreter, so that MLflow's own logging is captured too, and with only
    the MLflow settings coroseg itself makes (in-process runs of other tests have set them here)."""
    environment = {k: v for k, v in os.environ.items() if k not in mlflow_env.DEFAULTS and k != "MLFLOW_TRACKING_URI"}
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "coroseg", *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def _files_holding(folder: Path, secrets: tuple[str, ...]) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)]


@pytest.mark.parametrize("text, secret", [
    ("https://bob:hunter2@host/api", "hunter2"),
    ("GET http://h/x?a=1&token=t0ps3cret failed", "t0ps3cret"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA123&X-Amz-Signature=abcdef0123", "AKIA123"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA123&X-Amz-Signature=abcdef0123", "abcdef0123"),
    ("https://b/k?X-Amz-Security-Token=FwoGZXIvYXdz", "FwoGZXIvYXdz"),
    ("https://acct.blob.core.windows.net/c?sv=2020&sig=Zm9vYmFy%3D", "Zm9vYmFy"),
    ("AccountName=a;AccountKey=Zm9vYmFyYmF6;EndpointSuffix=core.windows.net", "Zm9vYmFyYmF6"),
    ("retry with API_KEY=k-123456 and Access_Token=tok999 PASSWD=pw1 auth=xyz789", "k-123456"),
    ("retry with API_KEY=k-123456 and Access_Token=tok999 PASSWD=pw1 auth=xyz789", "tok999"),
    ("retry with API_KEY=k-123456 and Access_Token=tok999 PASSWD=pw1 auth=xyz789", "pw1"),
    ("retry with API_KEY=k-123456 and Access_Token=tok999 PASSWD=pw1 auth=xyz789", "xyz789"),
    ("client_secret=s3 credential=c4 password=p5 signature=s6 key=k7", "s3"),
])
def test_redact_text_removes_secrets_in_uris_and_free_text(text, secret):
    assert secret not in redact_text(text)


def test_redact_text_keeps_ordinary_text():
    text = "monkey=1 image_size=64 lr=3e-3 sqlite:///mlflow.db http://host:5000/x?experiment=a"
    assert redact_text(text) == text
    assert redact_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_redact_text_removes_secret_env_values_read_at_call_time(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "Endpoint=sb://x;SharedKey=abcdefgh")
    monkeypatch.setenv("MY_SERVICE_KEY", "svc-key-value")
    monkeypatch.setenv("SHORT_TOKEN", "abc")    # under 6 characters: would blank ordinary words
    text = redact_text(f"p={PASSWORD} c=Endpoint=sb://x;SharedKey=abcdefgh s=svc-key-value abc")
    assert PASSWORD not in text and "abcdefgh" not in text and "svc-key-value" not in text
    assert text.endswith(" abc")


def test_coroseg_log_messages_are_redacted(monkeypatch, capsys):
    from coroseg.cli import _setup_logging

    logger = logging.getLogger("coroseg")
    for name in ("handlers", "level", "propagate"):   # put back as other tests left them
        monkeypatch.setattr(logger, name, list(logger.handlers) if name == "handlers" else getattr(logger, name))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    _setup_logging()
    logging.getLogger("coroseg.test").warning("server %s said %s", f"http://h/?token={TOKEN}", PASSWORD)
    err = capsys.readouterr().err
    assert "server http://h/?token=*** said ***" in err
    assert TOKEN not in err and PASSWORD not in err


def test_token_in_a_dead_tracking_uri_is_never_shown(tmp_path, small_config):
    uri = f"http://127.0.0.1:{free_port()}/?token={TOKEN}"
    result = _coroseg("train", "--config", small_config, "--epochs", 1, "--tracking-uri", uri, cwd=tmp_path,
                      timeout=300, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    assert result.returncode == 0, result.stderr
    assert "tracking failed" in result.stderr                            # the user is still told
    assert TOKEN not in result.stdout + result.stderr, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert _files_holding(tmp_path / "coroseg_runs", (TOKEN, PASSWORD)) == []


def test_params_tags_and_record_of_a_tracked_run_hold_no_secret(tmp_path, small_config, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The secret reaches the config through a path the user chose; it must not reach MLflow or the record.
    data = tmp_path / f"frames-{PASSWORD}"
    run_cli("synth", "--out", data, "--count", 6, "--size", 80)
    result = run_cli("train", "--config", small_config, "--epochs", 1, "--data", data, "--tracking-uri", store,
                     cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert not result.value("run_id").startswith("none"), result.stderr
    run = MlflowClient(tracking_uri=store).get_run(result.value("run_id"))
    values = list(run.data.params.values()) + list(run.data.tags.values())
    assert any("frames-***" in v for v in values)      # the param is there, without its secret part
    assert not [v for v in values if PASSWORD in v]
    assert _files_holding(tmp_path / result.value("local_record"), (PASSWORD,)) == []


def test_mlflow_tracker_redacts_params_and_tags(tmp_path):
    from mlflow import MlflowClient

    from coroseg.tracking.mlflow_tracker import MlflowTracker

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(store, "redaction")
    tracker.start("redaction", {"source": f"s3://b/k?X-Amz-Signature={TOKEN}"})
    try:
        tracker.log_params({"init": f"http://u:{TOKEN}@h/models", "note": f"token={TOKEN}"})
        tracker.set_tags({"origin": f"https://h/?api_key={TOKEN}"})
    finally:
        tracker.finish()
    run = MlflowClient(tracking_uri=store).get_run(tracker.run_id)
    assert run.data.params["note"] == "token=***"
    assert run.data.tags["origin"] == "https://h/?api_key=***"
    assert not [v for v in {**run.data.params, **run.data.tags}.values() if TOKEN in v]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_record_files_follow_the_umask(tmp_path, umask, mode):
    code = (f"import os; os.umask({umask}); from pathlib import Path; "
            "from coroseg.tracking.base import Tracker; from coroseg.tracking.record import RunRecord; "
            "record = RunRecord(Path('record'), Tracker()); "
            "record.write_text('summary', 'a.md', 'x'); record.write_bytes('summary', 'b.png', b'x')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60)
    files = [p for p in (tmp_path / "record").rglob("*") if p.is_file()]
    assert len(files) == 2
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {mode}


def test_predict_from_a_dead_server_fails_fast_with_one_line(tmp_path, pairs_dir):
    """A hang guard: MLflow's default retries held this command for about four minutes."""
    frame = sorted(p for p in pairs_dir.glob("*.png") if not p.stem.endswith("_gt"))[0]
    uri = f"http://127.0.0.1:{free_port()}/?token={TOKEN}"
    result = _coroseg("predict", "--model", "runs:/0123/pytorch_model", "--input", frame, "--output",
                      tmp_path / "out", "--tracking-uri", uri, cwd=tmp_path, timeout=90)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coroseg: error: runs:/0123/pytorch_model"), result.stderr
    assert TOKEN not in result.stderr
