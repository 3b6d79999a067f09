"""MLflow backend of the Tracker interface: journal first, then a background uploader (see uploader.py).

A failure of tracking never stops the work, and no longer switches tracking off: the user is told once,
failed uploads are retried, and what is still unsent when the command ends is listed with the
`coroseg sync` command that sends it. `failed` means that no MLflow run could be created at all.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coroseg import mlflow_env
from coroseg.tracking.journal import describe
from coroseg.tracking.journal_tracker import JournalTracker
from coroseg.tracking.uploader import START_WAIT_S, FailureReport, Uploader, drain_seconds


def model_signature():
    """Any batch size and any spatial size, one channel in, one probability channel out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))])
    return ModelSignature(inputs=spec, outputs=spec)


def pip_requirements() -> list[str]:
    """Given explicitly: MLflow's own inference of them costs seconds and guesses."""
    import mlflow
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={numpy.__version__}"]


def save_model_folder(folder: Path, model: Any, input_example: Any, metadata: dict[str, Any],
                      extra_files: list[str]) -> None:
    """The MLflow model, saved once into the local record; the uploader logs this folder as the run's model."""
    import mlflow.pytorch

    mlflow.pytorch.save_model(model, str(folder), signature=model_signature(), input_example=input_example,
                              pip_requirements=pip_requirements(), metadata=metadata, extra_files=extra_files,
                              serialization_format="pt2")   # a graph, not a pickle: safe to load from anyone


class MlflowTracker(JournalTracker):
    def __init__(self, tracking_uri: str | None, experiment: str, record_dir: Path | None = None,
                 system_metrics: bool = False, parent: "MlflowTracker | None" = None) -> None:
        mlflow_env.apply()   # also here, for callers that do not come through the CLI
        if record_dir is None:   # a caller without a record (a notebook, a test): the journal still needs a home
            record_dir = Path(tempfile.mkdtemp(prefix="coroseg-record-"))
        super().__init__(record_dir, tracking_uri, experiment, system_metrics, parent)
        self.report = parent.report if parent else FailureReport(self.record_dir)   # told once per command
        self.uploader: Uploader | None = None
        self.finished = False

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id; asked before the uploader created the run, it waits for it, briefly."""
        if self.uploader is None:
            return None
        if not self.finished and self.uploader.running():
            self.uploader.opened.wait(START_WAIT_S)
        return self.uploader.run_id

    @property
    def failed(self) -> bool:
        """No MLflow run exists for this record (uploads that are only pending do not count)."""
        return self.run_id is None and (self.finished or self.report.told)

    def start(self, run_name: str | None, tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        super().start(run_name, tags, resume_run_id)
        self.uploader.start()
        # Not waited for here: creating the run (MLflow's import, the store, the server) overlaps with loading
        # the data and the first epoch; whoever needs the id first (`run_id`) waits for it then.
        return self.uploader.run_id

    def _opened(self) -> None:
        parent_run_id = (lambda: self.parent.run_id) if self.parent else None
        self.uploader = Uploader(self.journal, self.tracking_uri, self.experiment, self.report, parent_run_id)

    def _submit(self, entry: dict[str, Any]) -> None:
        self.uploader.submit(entry)

    def _carry_on(self, earlier: list[dict[str, Any]]) -> None:
        # Not their start (the run exists or is being created now) nor their end (the run goes on); sync
        # sends those, and then sets the status the record ends with.
        for entry in earlier:
            if entry["kind"] not in ("start", "finish"):
                self.uploader.submit(entry)

    def _new_child(self, record_dir: Path) -> "MlflowTracker":
        return MlflowTracker(self.tracking_uri, self.experiment, record_dir, parent=self)

    def _close(self) -> None:
        """A fold leaves its uploads to its parent's drain, so the next fold starts at once."""
        if self.parent is None:
            self._drain()
        self.finished = True

    def _drain(self) -> None:
        deadline = time.monotonic() + drain_seconds()
        trackers = [*self._descendants(), self]
        left = {t: t.uploader.drain(deadline) for t in trackers if t.uploader is not None}
        for tracker in trackers:
            tracker.finished = True
            tracker._release_record()
        pending = [e for entries in left.values() for e in entries]
        if pending:
            print(f"coroseg: {describe(pending)} not in MLflow yet (uploads stopped after at most "
                  f"{drain_seconds():.0f} s); the journal in {self.record_dir} keeps them.\n"
                  f"coroseg: send them with: coroseg sync {self.record_dir}", file=sys.stderr, flush=True)

    def _descendants(self) -> list["MlflowTracker"]:
        return [d for c in self.children for d in (*c._descendants(), c)]
