"""`coroseg ui`: the MLflow UI for the runs of this folder, bound to loopback only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from coroseg.errors import first_line
from coroseg.tracking.redact import redact_text, redact_uri
from coroseg.tracking.store import prepare_store

DEFAULT_STORE = "sqlite:///mlflow.db"  # MLflow 3's own default store, in the working directory


def ui_command(port: int, store: str) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def serve(port: int, store: str | None = None) -> int:
    """Run the server until Ctrl+C or SIGTERM, and take it down with us either way."""
    store = store or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    try:
        # A new SQLite store is created here under the lock `coroseg train` takes, not by the server
        # racing a training run that creates it at the same moment.
        prepare_store(store)
    except Exception as exc:  # noqa: BLE001 - MLflow, SQLAlchemy and the lock raise many kinds; all mean this
        print(f"coroseg: error: cannot open the store {redact_uri(store)} "
              f"({redact_text(first_line(exc))})",
              file=sys.stderr)
        return 2
    print(f"Access MLflow UI: http://localhost:{port}", flush=True)
    print("Press Ctrl+C to stop.", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Without MLflow's GenAI job runners (several more processes, seconds of start-up): coroseg's runs are
    # training runs.
    server = subprocess.Popen(ui_command(port, store), env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        return 0
