"""MLflow backend of the Tracker interface: journal first, then a background uploader process
(see upload_process.py).

A failure of tracking never stops the work, and no longer switches tracking off: the user is told once,
failed uploads are retried, and what is still unsent when the command ends is listed with the
`coroseg sync` command that sends it. `failed` means that no MLflow run could be created at all.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from coroseg import mlflow_env
from coroseg.tracking.journal import describe
from coroseg.tracking.journal_tracker import JournalTracker
from coroseg.tracking.model_store import run_model_uri
from coroseg.tracking.upload_process import RunState, UploadProcess
from coroseg.tracking.uploader import START_WAIT_S, drain_seconds


class MlflowTracker(JournalTracker):
    def __init__(self, tracking_uri: str | None, experiment: str, record_dir: Path | None = None,
                 system_metrics: bool = False, parent: "MlflowTracker | None" = None) -> None:
        mlflow_env.apply()   # also here, for callers that do not come through the CLI
        if record_dir is None:   # a caller without a record (a notebook, a test): the journal still needs a home
            record_dir = Path(tempfile.mkdtemp(prefix="coroseg-record-"))
        super().__init__(record_dir, tracking_uri, experiment, system_metrics, parent)
        # One uploader process per command, started now: it imports MLflow while the data loads. Folds share it.
        self.uploads = parent.uploads if parent else UploadProcess(tracking_uri)
        self.state: RunState | None = None
        self.finished = False

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id; asked before the uploader created the run, it waits for it, briefly."""
        if self.state is None:
            return None
        if not self.finished and self.uploads.running():
            self.state.opened.wait(START_WAIT_S)
        return self.state.run_id

    @property
    def failed(self) -> bool:
        """No MLflow run exists for this record (uploads that are only pending do not count)."""
        return self.run_id is None and (self.finished or self.uploads.told)

    @property
    def model_uri(self) -> str | None:
        """`runs:/<run_id>/<name>` once the run exists in MLflow, else the model folder in the local record."""
        run_id = self.run_id
        return run_model_uri(run_id) if run_id is not None and not self.failed else super().model_uri

    def start(self, run_name: str | None, tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        super().start(run_name, tags, resume_run_id)
        # Not waited for here: creating the run overlaps with loading the data and the first epoch; whoever
        # needs the id first (`run_id`) waits for it then.
        return self.state.run_id

    def _opened(self) -> None:
        self.state = self.uploads.follow(self.record_dir, self.tracking_uri, self.experiment,
                                         self.parent.record_dir if self.parent else None)

    def _submit(self, entry: dict[str, Any]) -> None:
        self.uploads.submit(self.record_dir, entry)

    def _carry_on(self, earlier: list[dict[str, Any]]) -> None:
        # Not their start (the run exists or is being created now) nor their end (the run goes on); sync
        # sends those, and then sets the status the record ends with.
        for entry in earlier:
            if entry["kind"] not in ("start", "finish"):
                self._submit(entry)

    def _new_child(self, record_dir: Path) -> "MlflowTracker":
        return MlflowTracker(self.tracking_uri, self.experiment, record_dir, parent=self)

    def _close(self) -> None:
        """A fold leaves its uploads to its parent's drain, so the next fold starts at once."""
        if self.parent is None:
            self._drain()
        self.finished = True

    def _drain(self) -> None:
        self.uploads.drain(drain_seconds())
        trackers = [*self._descendants(), self]
        for tracker in trackers:
            tracker.finished = True
            tracker._release_record()
        pending = [e for t in trackers if t.journal is not None for e in t.journal.pending(t.state.run_id)]
        if pending:
            print(f"coroseg: {describe(pending)} not in MLflow yet (uploads stopped after at most "
                  f"{drain_seconds():.0f} s); the journal in {self.record_dir} keeps them.\n"
                  f"coroseg: send them with: coroseg sync {self.record_dir}", file=sys.stderr, flush=True)

    def _descendants(self) -> list["MlflowTracker"]:
        return [d for c in self.children for d in (*c._descendants(), c)]
