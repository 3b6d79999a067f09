"""`coroseg ui`: the MLflow UI for the runs of this folder, bound to loopback only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from coroseg.errors import first_line
from coroseg.tracking.redact import redact_text, redact_uri
from coroseg.tracking.store import prepare_store

DEFAULT_STORE = "sqlite:///mlflow.db"  # MLflow 3's own default store, in the working directory


# MLflow 3's UI opens in its GenAI view (traces, prompts, judges). Its `workflowType` URL parameter selects the
# classic model-training view (runs, model metrics, artifacts) for the page it opens; the choice is kept only once
# the user clicks "Model training" in the switch at the top left, which MLflow stores in the browser
# (localStorage "mlflow.workflowType_v1") for that address. No server option sets the default.
MODEL_TRAINING_VIEW = "#/experiments?workflowType=machine_learning"


def ui_url(port: int) -> str:
    """Where to point a browser: the experiment list in MLflow's model-training view."""
    return f"http://localhost:{port}/{MODEL_TRAINING_VIEW}"


def ui_command(port: int, store: str) -> list[str]:
    # uvicorn (MLflow 3's default server) without its access log: no line per HTTP request. Its start-up
    # messages and errors (a port in use, a store it cannot open) still show. The registry is the same store,
    # named so that MLflow does not say so on every start.
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--registry-store-uri", store,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--uvicorn-opts=--no-access-log"]


def _port_taken(port: int) -> OSError | None:
    """Why 127.0.0.1:port cannot be bound, as uvicorn binds it; None when it can. `mlflow server` exits 0 when
    its server could not start, so a port in use is told here, with an error status."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc
    return None


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def serve(port: int, store: str | None = None) -> int:
    """Run the server until Ctrl+C or SIGTERM, and take it down with us either way."""
    store = store or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    if (taken := _port_taken(port)) is not None:
        print(f"coroseg: error: cannot listen on 127.0.0.1:{port} ({taken.strerror or taken}); "
              "choose another with --port", file=sys.stderr)
        return 2
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
    print(f"Model training view: {ui_url(port)}", flush=True)
    print('Other pages open in MLflow\'s GenAI view until you click "Model training" at the top left once '
          "(the browser keeps it).\nPress Ctrl+C to stop.", file=sys.stderr, flush=True)
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
