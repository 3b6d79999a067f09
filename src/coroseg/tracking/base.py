"""The small interface the training loop and the commands talk to, in the spirit of Lightning's Logger.

`Tracker` itself records nothing. `JournalTracker` writes the record's journal (the tracker of `--no-tracking`);
`MlflowTracker` also uploads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coroseg.errors import Stopped


class Tracker:
    """Records nothing. Subclasses send params, metrics, tags, artifacts and the model somewhere."""

    run_id: str | None = None
    failed: bool = False
    model_uri: str | None = None      # where the model of `log_model` loads from (runs:/..., or a local folder)

    def start(self, run_name: str | None, tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        """Open a new run, or carry on `resume_run_id` (same id, later steps). Returns the run's id when it is
        known at once, else None: `run_id` gives it (waiting, briefly, for a run still being created)."""
        return None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, local_path: Path, artifact_dir: str) -> None:
        pass

    def log_model(self, model: Any, input_example: Any, metadata: dict[str, Any], extra_files: list[str]) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def child(self) -> "Tracker":
        """A tracker for a nested run under this one (records nothing here)."""
        return Tracker()


@contextmanager
def run_status(finish: Callable[[str], None]) -> Iterator[None]:
    """The run ends as its block did: FINISHED, KILLED when stopped (Ctrl-C, SIGTERM), else FAILED; `finish`
    is called whatever happened, a crash included."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except (Stopped, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        finish(status)


def make_tracker(enabled: bool, tracking_uri: str | None, experiment: str, record_dir: Path,
                 system_metrics: bool = False) -> Tracker:
    """MLflow when tracking is on, else a tracker that only journals (the record can be synced later)."""
    if not enabled:
        from coroseg.tracking.journal_tracker import JournalTracker

        return JournalTracker(record_dir, tracking_uri, experiment)
    from coroseg.tracking.mlflow_tracker import MlflowTracker  # imported where used: MLflow is slow to import

    return MlflowTracker(tracking_uri, experiment, record_dir, system_metrics)
