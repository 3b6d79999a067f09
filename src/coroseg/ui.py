"""`coroseg ui`: the MLflow UI for the runs of this folder, bound to loopback only."""

from __future__ import annotations

import os
import subprocess
import sys

DEFAULT_STORE = "sqlite:///mlflow.db"  # MLflow 3's own default store, in the working directory


def ui_command(port: int, store: str) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def serve(port: int, store: str | None = None) -> int:
    store = store or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    print(f"Access MLflow UI: http://localhost:{port}", flush=True)
    print("Press Ctrl+C to stop.", file=sys.stderr, flush=True)
    try:
        return subprocess.call(ui_command(port, store))
    except KeyboardInterrupt:
        return 0
