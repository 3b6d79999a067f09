"""MLflow settings every coroseg command starts with; no heavy imports, so the CLI applies them first."""

from __future__ import annotations

import os

# Defaults the user may override. MLflow's own retry a dead server for about four minutes per call, and a
# user waits for none of that; its INFO lines and progress bars say nothing our progress lines don't.
DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# Forced whatever the environment says: coroseg's models are torch.export graphs and safetensors, so it
# never needs to unpickle, and with this MLflow refuses pickled models and checks pt2 archives for pickles.
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
FORCED = {
    PICKLE_SWITCH: "false",
}


def apply() -> None:
    """Set the defaults not already set, and the forced values."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.update(FORCED)
