"""The background uploader: drains a record's journal to MLflow while the work goes on.

One daemon thread and one `MlflowClient` per run, inside the command's uploader process (upload_process.py),
which hands it the entries the command journaled; a failed call leaves its entries pending and is retried
after a pause, so an outage of the server costs nothing but time on this thread. At the end the command gives the uploader a bounded
time (`COROSEG_UPLOAD_DRAIN_SECONDS`) and leaves it behind after that: whatever is left is in the journal
for `coroseg sync`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from coroseg.errors import first_line
from coroseg.settings import env_number
from coroseg.tracking.journal import Journal
from coroseg.tracking.redact import redact_text

log = logging.getLogger("coroseg")

DRAIN_ENV = "COROSEG_UPLOAD_DRAIN_SECONDS"
DEFAULT_DRAIN_S = 60.0
START_WAIT_S = 10.0          # how long asking a tracker for its run id waits for the run to be created
_BACKOFF_S = (1, 2, 5, 10, 30)
_DRAIN_ATTEMPTS = 2          # failed tries in a row, once draining, before the rest is left to `coroseg sync`


def drain_seconds() -> float:
    """The drain bound: COROSEG_UPLOAD_DRAIN_SECONDS, else 60 s (a bad value is an error when tracking starts)."""
    return env_number(DRAIN_ENV, DEFAULT_DRAIN_S, float, minimum=0)


class ParentNotReady(RuntimeError):
    """A fold's run waits for its parent run to exist on the server."""


class FailureReport:
    """Tells the user once per command (folds share their parent's) that uploads fail, and where the record is.
    `tell` shows the text to the user (the uploader process hands it to the command, which prints it)."""

    def __init__(self, record_dir: Path, tell: Callable[[str], None]) -> None:
        self.record_dir = record_dir
        self.tell = tell
        self.told = False
        self._lock = threading.Lock()

    def __call__(self, action: str, exc: BaseException) -> None:
        said = redact_text(first_line(exc))
        with self._lock:
            if self.told:
                log.debug("upload failed again while %s: %s", action, said)
                return
            self.told = True
        self.tell(f"coroseg: MLflow tracking failed while {action} ({type(exc).__name__}: {said}). The work goes "
                  f"on; the complete record is kept in {self.record_dir}, uploads are retried in the background "
                  f"and `coroseg sync` sends what is left.")


def _action(entry: dict[str, Any] | None) -> str:
    kind = entry["kind"] if entry else ""
    if kind in ("start", "resume"):
        return "starting the run"
    if kind == "artifact":
        return f"uploading {entry['artifact_dir']}/{Path(entry['path']).name}"
    if kind == "model":
        return "logging the model"
    if kind == "finish":
        return "closing the run"
    return f"logging {kind or 'to the run'}"


class Uploader:
    def __init__(self, journal: Journal, tracking_uri: str | None, experiment: str,
                 report: Callable[[str, BaseException], None],
                 parent_run_id: Callable[[], str | None] | None = None,
                 on_opened: Callable[[str | None], None] | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.journal = journal
        self.on_opened = on_opened             # told the run's id once known, or None after a first failed try
        self.say = say                         # tells the user what the uploads decided (a registry alias)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.report = report
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.opened = threading.Event()        # the run's creation was tried (and maybe failed)
        self._client = None
        self._pending: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._gave_up = False
        self._draining = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="coroseg-uploader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, entry: dict[str, Any]) -> None:
        with self._cond:
            self._pending.append(entry)
            self._cond.notify_all()

    def drain(self, deadline: float) -> list[dict[str, Any]]:
        """Wait until everything is sent, the uploader gave up, or `deadline` (time.monotonic) passed; what is
        still pending. The thread is a daemon: one stuck on a server that never answers is left behind."""
        with self._cond:
            self._closing = True
            self._draining.set()
            self._cond.notify_all()
            if self._thread.is_alive():
                while (self._pending or self._busy) and not self._gave_up:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            return list(self._pending)

    # -- the thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._busy = list(self._pending), True
            try:
                self._send(batch)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - server or network down: entries stay pending, retried
                failures += 1
                self.report(_action(self._head()), exc)
                if self._draining.is_set() and failures >= _DRAIN_ATTEMPTS:
                    self._give_up()
                    return
                self._idle()
                self._draining.wait(_BACKOFF_S[min(failures, len(_BACKOFF_S)) - 1])  # a drain retries at once
                if self._draining.is_set():
                    failures = min(failures, _DRAIN_ATTEMPTS - 1)    # one more try once the drain has begun
            finally:
                if not self.opened.is_set() and self.run_id is None and self.on_opened:
                    self.on_opened(None)
                self.opened.set()
                self._idle()

    def _head(self) -> dict[str, Any] | None:
        with self._cond:
            return self._pending[0] if self._pending else None

    def _idle(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _give_up(self) -> None:
        with self._cond:
            self._gave_up, self._busy = True, False
            self._cond.notify_all()

    def _send(self, batch: list[dict[str, Any]]) -> None:
        from coroseg.tracking.sender import send_entries

        if self.run_id is None:
            self._open_run(batch[0])
            batch = batch[1:]
        send_entries(self._client, self.run_id, self.journal.record_dir, batch, self._mark, self.say)

    def _mark(self, seqs: list[int], rejected: str | None) -> None:
        self.journal.mark_sent(self.run_id, seqs, rejected)
        if rejected:
            log.warning("MLflow refused journal entries %s of %s for good: %s", seqs, self.journal.record_dir, rejected)
        done = set(seqs)
        with self._cond:
            self._pending = deque(e for e in self._pending if e["seq"] not in done)

    def _open_run(self, head: dict[str, Any]) -> None:
        """Create the run from the journal's start entry (or reopen the run a resume entry names)."""
        from coroseg.tracking.sender import create_run, send_run_state

        if self._client is None:
            from mlflow import MlflowClient

            from coroseg.tracking.store import prepare_store

            prepare_store(self.tracking_uri)              # a new sqlite store is created under a lock
            self._client = MlflowClient(self.tracking_uri)
        parent = None
        if head["kind"] == "resume":
            send_run_state(self._client, head["run_id"], self.journal.record_dir, head)
            run_id = head["run_id"]
        else:
            parent = self.parent_run_id() if self.parent_run_id else None
            if self.parent_run_id and parent is None:
                raise ParentNotReady("the parent run does not exist on the server yet")
            run_id = create_run(self._client, head, self.experiment, parent)
        self.journal.update_info(run_id=run_id, **({"parent_run_id": parent} if parent else {}))
        self.run_id = run_id
        if self.on_opened:
            self.on_opened(run_id)
        self._mark([head["seq"]], None)
