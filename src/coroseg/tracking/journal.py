"""The journal of a local record: every tracker call, appended before anything is sent anywhere.

`<record>/.coroseg/journal.jsonl` holds one JSON object per line, in call order:
    {"seq": 7, "time": 1764240000.123, "kind": "metrics", "metrics": {"val_dice": 0.61}, "step": 2}
`seq` counts from 1 per record (a resumed run carries on the count); `time` is the wall clock of the call
(seconds), which becomes the metric timestamp and the run's start and end time. Kinds and their fields:
    start     run_name, tags, experiment, tracking_uri (redacted), parent_record (a fold: "..")
    resume    run_id                       (the same run carries on: `train --resume`)
    params    params      metrics  metrics, step (+ model_id, dataset_name, dataset_digest)      tags  tags
    artifact  path (relative to the record), artifact_dir
    model     path (the saved MLflow model folder, relative to the record), name, metrics + step (logged
              linked to the model), dataset_name + dataset_digest (what those metrics were measured on)
    image     path (a PNG of the record), key, step: MLflow's stepped image (the UI's slider)
    dataset   dataset_name, dataset_digest, context (training, validation, evaluation), source, profile
    register  name, tags, model (the model entry's name): a new registered version, champion or challenger
    finish    status (FINISHED, FAILED, KILLED)
Param and tag values are redacted before they are written here.

`sent.jsonl` beside it says which entries reached which run: {"run_id": "...", "seqs": [3, 4, 5]}, plus
"rejected": "<why>" for entries the server refused for good (they are not tried again). `record.json` holds
the run id once known, the redacted tracking URI, the experiment, the run name and the status.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from coroseg.tracking import layout
from coroseg.tracking.record import atomic_write, to_json

log = logging.getLogger("coroseg")

VALUE_KINDS = ("params", "metrics", "tags")      # sent together, in batches


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a torn last line (a process killed while writing) is left out."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number != len(lines):
                log.warning("%s:%d: unreadable journal line left out (%s)", path, number, exc)
    return rows


class Journal:
    """Appends to and reads one record's journal. The command appends; its uploader process marks what is sent."""

    def __init__(self, record_dir: Path) -> None:
        self.record_dir = Path(record_dir)
        self.path = self.record_dir / layout.JOURNAL_FILE
        self.sent_path = self.record_dir / layout.SENT_FILE
        self.info_path = self.record_dir / layout.RECORD_FILE
        self._lock = threading.Lock()
        self._next_seq = max((e["seq"] for e in self.entries()), default=0) + 1   # a resumed record carries on

    @staticmethod
    def exists(record_dir: Path) -> bool:
        return (Path(record_dir) / layout.JOURNAL_FILE).is_file()

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one entry (append + flush: a crash right after loses nothing written before) and return it."""
        with self._lock:
            entry = {"seq": self._next_seq, "time": time.time(), "kind": kind, **fields}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(entry, default=str) + "\n")
                handle.flush()
            self._next_seq += 1
        return entry

    def entries(self) -> list[dict[str, Any]]:
        return _read_lines(self.path)

    def mark_sent(self, run_id: str, seqs: list[int], rejected: str | None = None) -> None:
        if not seqs:
            return
        row = {"run_id": run_id, "seqs": sorted(seqs), **({"rejected": rejected} if rejected else {})}
        with self._lock, self.sent_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def sent(self, run_id: str | None) -> set[int]:
        """Seqs that reached (or were refused for good by) run `run_id`."""
        done: set[int] = set()
        for row in _read_lines(self.sent_path):
            if row.get("run_id") == run_id:
                done.update(row["seqs"])
        return done

    def pending(self, run_id: str | None) -> list[dict[str, Any]]:
        """Entries run `run_id` does not hold yet (all of them for a run not yet created)."""
        done = self.sent(run_id) if run_id else set()
        return [e for e in self.entries() if e["seq"] not in done]

    def info(self) -> dict[str, Any]:
        if not self.info_path.is_file():
            return {}
        return json.loads(self.info_path.read_text())

    def update_info(self, **fields: Any) -> dict[str, Any]:
        # Under a file lock: the command writes the status, its uploader process the run id.
        self.info_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, FileLock(f"{self.info_path}.lock"):
            info = {**self.info(), **fields}
            atomic_write(self.info_path, to_json(info).encode())
        return info


def hold_record(record_dir: Path) -> FileLock | None:
    """The record's lock, taken without waiting (it goes with the process that holds it); None when another
    process holds it: the tracker of a running command, or a running `coroseg sync`."""
    lock_path = Path(record_dir) / layout.RECORD_LOCK
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def describe(entries: list[dict[str, Any]]) -> str:
    """`12 entries: 3 metrics, 8 artifacts, the model, the run's end`, for messages."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["kind"]] = counts.get(entry["kind"], 0) + 1
    parts = []
    for kind, count in counts.items():
        if kind == "model":
            parts.append("the model")
        elif kind == "finish":
            parts.append("the run's end")
        elif kind in ("start", "resume"):
            parts.append("the run's start")
        else:
            parts.append(f"{count} {kind if kind != 'artifact' else 'artifacts'}")
    noun = "entry" if len(entries) == 1 else "entries"
    return f"{len(entries)} {noun} ({', '.join(parts)})"
