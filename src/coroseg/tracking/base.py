"""The small interface the training loop and the commands talk to, in the spirit of Lightning's Logger.

`Tracker` itself records nothing. `JournalTracker` writes the record's journal (the tracker of `--no-tracking`);
`MlflowTracker` also uploads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coroseg.errors import Stopped


@dataclass(frozen=True)
class DatasetRef:
    """How MLflow names a dataset: a name and a short digest of its content."""
    name: str
    digest: str


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

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None,
                    dataset: "DatasetRef | None" = None) -> None:
        """`model_id`: an MLflow LoggedModel these metrics are about (its page shows them); `dataset`: the
        data they were measured on."""

    def log_image(self, local_path: Path, key: str, step: int) -> None:
        """A picture of one step (an epoch's overlay), for the UI's step slider; the file stays an artifact too."""

    def log_dataset(self, dataset: "DatasetRef", context: str, source: str, profile: dict[str, Any]) -> None:
        """The data the run used (`context`: training, validation, evaluation), as an MLflow dataset input."""

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, local_path: Path, artifact_dir: str) -> None:
        pass

    def log_model(self, weights: Path, metadata: dict[str, Any], input_example: Any,
                  metrics: dict[str, float] | None = None, step: int | None = None,
                  dataset: "DatasetRef | None" = None) -> None:
        """The run's model: `weights` (safetensors) with its spec's `metadata` (see serving.py); `metrics` are
        logged to the run linked to the model (measured on `dataset`)."""

    def register_model(self, name: str, tags: dict[str, str]) -> None:
        """Register the run's model as a new version of `name`; the `champion` alias moves to it only when its
        `val_dice` tag beats the champion's, else it becomes the `challenger`."""

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
