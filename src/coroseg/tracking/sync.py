"""`coroseg sync`: send what a local record's journal holds and its MLflow run lacks.

Into the same run when the server has it; else (another server, a wiped store, a `--no-tracking` record)
into a new run of the same name, tagged `coroseg.original_run_id`, whose id the record then keeps, so a
second sync carries on there. Which entries reached which run is in the record's sent.jsonl: a second sync
of a complete record sends nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coroseg.errors import InputError
from coroseg.tracking import layout
from coroseg.tracking.journal import Journal, describe, hold_record
from coroseg.tracking.redact import MASK

TERMINAL = ("FINISHED", "FAILED", "KILLED")


@dataclass
class SyncResult:
    record: Path
    run_id: str | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)
    created: bool = False
    original_run_id: str | None = None
    skipped: str | None = None           # why nothing was tried

    def line(self) -> str:
        if self.skipped:
            return f"{self.record}: skipped ({self.skipped})"
        what = f"sent {describe(self.sent)}" if self.sent else "nothing to send"
        where = f"run {self.run_id}"
        if self.created:
            where = f"new run {self.run_id}" + (f" (the record's run {self.original_run_id} is not on this server)"
                                                if self.original_run_id else "")
        return f"{self.record}: {what} to {where}"


def find_records(paths: list[Path], default_root: Path) -> list[Path]:
    """The records in `paths` and below them (fold records), parents first; with no path, those under
    `default_root` that have something pending."""
    roots = paths or [default_root]
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            if paths:
                raise InputError(f"{root}: no such record folder")
            continue
        # a record is the folder that holds .coroseg/journal.jsonl
        below = [p.parents[len(Path(layout.JOURNAL_FILE).parts) - 1] for p in root.rglob(layout.JOURNAL_FILE)
                 if layout.EARLIER_JOURNALS not in str(p)]
        if paths and not below:
            raise InputError(f"{root}: not a coroseg record (no {layout.JOURNAL_FILE} in it or below it)")
        found += [p for p in below if p not in found]
    found.sort(key=lambda p: (len(p.parts), str(p)))
    if not paths:
        found = [p for p in found if has_pending(p)]
    return found


def has_pending(record: Path) -> bool:
    journal = Journal(record)
    return bool(journal.pending(journal.info().get("run_id")))


def sync_record(record: Path, tracking_uri: str | None) -> SyncResult:
    """Send `record`'s pending entries; raises what MLflow raises when the server fails."""
    lock = hold_record(record)
    if lock is None:
        return SyncResult(record, skipped="a running coroseg process is writing it; its own uploader sends it")
    try:
        return _sync(record, tracking_uri)
    finally:
        lock.release()


def _sync(record: Path, tracking_uri: str | None) -> SyncResult:
    from mlflow import MlflowClient

    from coroseg.tracking.sender import ORIGINAL_RUN_TAG, create_run, run_exists, send_entries
    from coroseg.tracking.store import prepare_store

    journal = Journal(record)
    info = journal.info()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or info.get("tracking_uri")
    if uri and MASK in uri:
        raise InputError(f"{record}: the record keeps its tracking URI without the secret ({uri}); "
                         "give --tracking-uri or set MLFLOW_TRACKING_URI")
    prepare_store(uri)
    client = MlflowClient(uri)
    # The record's run, or the run it was first made in (a record synced to another server, then back).
    known = [r for r in (info.get("run_id"), info.get("original_run_id")) if r]
    result = SyncResult(record, run_id=next((r for r in known if run_exists(client, r)), None))
    if result.run_id is None:
        result.run_id = info.get("run_id")
        _new_run(client, journal, result, create_run, ORIGINAL_RUN_TAG)
    elif result.run_id != info.get("run_id"):
        journal.update_info(run_id=result.run_id)
    run_id = result.run_id
    pending = journal.pending(run_id)
    send_entries(client, run_id, record, pending, lambda seqs, rejected: journal.mark_sent(run_id, seqs, rejected))
    result.sent = [e for e in pending if e["kind"] != "start"]
    # The end as the record says, also where it was sent before and the server's run has another status.
    status = journal.info().get("status")
    if status in TERMINAL and client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status=status)
    return result


def _new_run(client: Any, journal: Journal, result: SyncResult, create_run, original_tag: str) -> None:
    entries = journal.entries()
    start = next((e for e in entries if e["kind"] == "start"), None)
    if start is None:
        raise InputError(f"{journal.path}: the journal has no start entry; cannot create its run")
    info = journal.info()
    original = info.get("original_run_id") or result.run_id
    parent = None
    if start.get("parent_record"):
        parent = Journal(journal.record_dir / start["parent_record"]).info().get("run_id")
    result.run_id = create_run(client, start, info.get("experiment") or start.get("experiment") or "Default",
                               parent, {original_tag: original} if original else None)
    result.created, result.original_run_id = True, original
    journal.update_info(run_id=result.run_id, **({"original_run_id": original} if original else {}),
                        **({"parent_run_id": parent} if parent else {}))
    journal.mark_sent(result.run_id, [start["seq"]])
