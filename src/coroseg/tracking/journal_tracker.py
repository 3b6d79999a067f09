"""The tracker that writes every call to the local record's journal and sends nothing.

It is the tracker of `--no-tracking` (`coroseg sync` can send such a record later), and the base of
`MlflowTracker`, which hands each entry to a background uploader as well.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from filelock import FileLock

from coroseg.errors import first_line
from coroseg.tracking import layout
from coroseg.tracking.base import DatasetRef, Tracker
from coroseg.tracking.journal import Journal, hold_record
from coroseg.tracking.redact import redact_text, redact_uri
from coroseg.tracking.sender import PARAM_VALUE_LIMIT

log = logging.getLogger("coroseg")


def redacted(values: dict[str, Any]) -> dict[str, str]:
    return {k: redact_text(str(v)) for k, v in values.items()}


def _dataset_fields(dataset: DatasetRef | None) -> dict[str, str]:
    """A dataset's name (redacted: it comes from a folder's name) and digest, as journal fields."""
    return {"dataset_name": redact_text(dataset.name), "dataset_digest": dataset.digest} if dataset else {}


class JournalTracker(Tracker):
    def __init__(self, record_dir: Path, tracking_uri: str | None = None, experiment: str = "",
                 system_metrics: bool = False, parent: "JournalTracker | None" = None) -> None:
        self.record_dir = Path(record_dir)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.system_metrics = system_metrics
        self.parent = parent
        self.children: list[JournalTracker] = []
        self.journal: Journal | None = None
        self._model: tuple | None = None        # log_model's arguments, saved into the record by finish
        self._model_metrics: tuple = ({}, None, None)
        self._register: tuple | None = None
        self._monitor = None
        self._record_lock: FileLock | None = None

    # -- the interface ---------------------------------------------------------------------------
    def start(self, run_name: str | None, tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        self._hold_record()
        # `train --resume` carries on the record's journal, also for a run that no server holds yet.
        carry_on = resume_run_id is not None or (self.record_dir / layout.RESUME_STATE_DIR).exists()
        if not carry_on:
            self._set_aside_earlier_journal()
        self.journal = Journal(self.record_dir)
        earlier = self.journal.pending(resume_run_id) if carry_on else []   # what earlier processes left unsent
        self._opened()
        uri = redact_uri(self.tracking_uri)
        if resume_run_id is not None:
            self._append("resume", run_id=resume_run_id)
            self.journal.update_info(run_id=resume_run_id, status="RUNNING")
        else:
            self._append("start", run_name=run_name, tags=redacted(tags), experiment=self.experiment,
                         tracking_uri=uri, **({"parent_record": ".."} if self.parent else {}))
            self.journal.update_info(run_name=run_name, experiment=self.experiment, tracking_uri=uri,
                                     status="RUNNING")
        self._carry_on(earlier)
        if self.system_metrics:
            from coroseg.tracking.system_metrics import SystemMetrics

            self._monitor = SystemMetrics(self.log_metrics)
            self._monitor.start()
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        self._append("params", params={k: v[:PARAM_VALUE_LIMIT] for k, v in redacted(params).items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None,
                    dataset: DatasetRef | None = None) -> None:
        self._append("metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step,
                     **({"model_id": model_id} if model_id else {}), **_dataset_fields(dataset))

    def log_image(self, local_path: Path, key: str, step: int) -> None:
        path, root = Path(local_path).resolve(), self.record_dir.resolve()
        self._append("image", path=str(path.relative_to(root) if path.is_relative_to(root) else path), key=key,
                     step=step)

    def log_dataset(self, dataset: DatasetRef, context: str, source: str, profile: dict[str, Any]) -> None:
        self._append("dataset", **_dataset_fields(dataset), context=context, source=redact_text(source),
                     profile=profile)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._append("tags", tags=redacted(tags))

    def log_artifact(self, local_path: Path, artifact_dir: str) -> None:
        path, root = Path(local_path).resolve(), self.record_dir.resolve()
        self._append("artifact", path=str(path.relative_to(root) if path.is_relative_to(root) else path),
                     artifact_dir=artifact_dir)

    def log_model(self, weights: Path, metadata: dict[str, Any], input_example: Any,
                  metrics: dict[str, float] | None = None, step: int | None = None,
                  dataset: DatasetRef | None = None) -> None:
        # Saved by `finish`, not here: the journal names the folder only once it is complete.
        self._model = (weights, metadata, input_example)
        self._model_metrics = ({k: float(v) for k, v in (metrics or {}).items()}, step, dataset)

    def register_model(self, name: str, tags: dict[str, str]) -> None:
        self._register = (name, redacted(tags))      # after the model, by `finish`

    @property
    def model_uri(self) -> str | None:
        """The model folder in the local record (there once `finish` saved it)."""
        return str(self.record_dir / layout.MODEL_NAME)

    def child(self) -> Tracker:
        """A fold's tracker: its journal in the fold's record, `fold_<n>` inside this one."""
        tracker = self._new_child(layout.fold_record_dir(self.record_dir, len(self.children) + 1))
        self.children.append(tracker)
        return tracker

    def finish(self, status: str = "FINISHED") -> None:
        if self.journal is None:            # never started
            return
        if self._monitor is not None:
            self._monitor.stop()
        if self._model is not None:
            self._save_model()
        self._append("finish", status=status)
        self.journal.update_info(status=status)
        self._close()

    # -- for subclasses ------------------------------------------------------------------------------
    def _new_child(self, record_dir: Path) -> "JournalTracker":
        return JournalTracker(record_dir, self.tracking_uri, self.experiment, parent=self)

    def _opened(self) -> None:
        """The journal is open; subclasses set up what sends it."""

    def _submit(self, entry: dict[str, Any]) -> None:
        """Hand a journaled entry on (nothing to hand it to here)."""

    def _carry_on(self, earlier: list[dict[str, Any]]) -> None:
        """A resumed run: hand on the entries that earlier processes could not send (nothing to do here)."""

    def _close(self) -> None:
        self._release_record()

    # -- helpers ---------------------------------------------------------------------------------
    def _append(self, kind: str, **fields: Any) -> None:
        if self.journal is None:
            raise RuntimeError(f"tracker of {self.record_dir}: {kind} before start")
        self._submit(self.journal.append(kind, **fields))

    def _set_aside_earlier_journal(self) -> None:
        """A new run in a folder that holds an earlier run's journal (`predict --overwrite`): that journal
        moves to .coroseg/earlier/<n>/, so the folder's journal is of one run."""
        if not Journal.exists(self.record_dir):
            return
        attempt = 1
        while (self.record_dir / layout.EARLIER_JOURNALS / str(attempt)).exists():
            attempt += 1
        earlier = self.record_dir / layout.EARLIER_JOURNALS / str(attempt)
        earlier.mkdir(parents=True)
        for name in (layout.JOURNAL_FILE, layout.SENT_FILE, layout.RECORD_FILE):
            if (self.record_dir / name).exists():
                (self.record_dir / name).rename(earlier / Path(name).name)

    def _save_model(self) -> None:
        from coroseg.tracking.model_store import save_model_folder

        folder = self.record_dir / layout.MODEL_NAME
        weights, metadata, example = self._model
        metrics, step, dataset = self._model_metrics
        self._model = None
        try:
            if not (folder / "MLmodel").is_file():
                save_model_folder(folder, weights, metadata, example)
        except Exception as exc:  # noqa: BLE001 - the weights are in the record already; the run still closes
            log.error("could not save the MLflow model into %s (%s: %s); its weights are in final_model/weights/",
                      folder, type(exc).__name__, redact_text(first_line(exc)))
            if metrics:
                self.log_metrics(metrics, step, dataset=dataset)      # not linked, but not lost
            return
        self._append("model", path=layout.MODEL_NAME, name=layout.MODEL_NAME, metrics=metrics, step=step,
                     **_dataset_fields(dataset))
        if self._register is not None:
            name, tags = self._register
            self._append("register", name=name, tags=tags, model=layout.MODEL_NAME)

    def _hold_record(self) -> None:
        """Tell `coroseg sync` that this process writes the record."""
        self._record_lock = hold_record(self.record_dir)
        if self._record_lock is None:
            log.warning("%s: another process holds this record (a running `coroseg sync`?)", self.record_dir)

    def _release_record(self) -> None:
        if self._record_lock is not None:
            self._record_lock.release()
            self._record_lock = None
