"""A run's record: every artifact is written to a local folder in the layout, then handed to the tracker.

The local folder is what survives when tracking fails, and what `--no-tracking` leaves behind.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from coroseg.tracking import layout
from coroseg.tracking.base import Tracker
from coroseg.tracking.redact import redact_text


def _umask_from_proc() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:   # not Linux
        return None
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return None       # Linux before 4.7


@functools.cache
def _umask() -> int:
    """The process umask, read once: from /proc where it can be, since the portable way (set it, set it
    back) changes it for every thread for a moment; that moment's value is 077, so nothing is looser."""
    found = _umask_from_proc()
    if found is not None:
        return found
    current = os.umask(0o077)
    os.umask(current)
    return current


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside the target, then rename: no reader ever sees half a file.

    The file gets the mode an ordinary open() would give it (0666 less the umask), not mkstemp's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys as CSV text, header first."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _fmt(value: Any, pattern: str | None = None) -> str:
    if pattern is not None:
        return pattern.format(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(rows: dict[str, Any]) -> str:
    """A key | value table."""
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]
    return "\n".join(lines) + "\n"


def markdown_rows(rows: list[dict[str, Any]], columns: list[str], formats: dict[str, str] | None = None) -> str:
    """A table of `columns`, one row per dict; `formats` overrides the format of some columns."""
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c], formats.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def new_record_dir(base: str | Path, run_name: str) -> Path:
    """A fresh folder per run: an earlier record is never written over."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(base)
    for attempt in range(1000):
        candidate = root / (f"{stamp}-{run_name}" + (f"-{attempt}" if attempt else ""))
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:   # a read-only place, or a file where the folder should be
            from coroseg.errors import InputError

            raise InputError(f"{candidate}: cannot create the run's folder ({exc.strerror or exc})") from exc
    raise FileExistsError(f"{root}: no free record folder name for {run_name}")


class RunRecord:
    def __init__(self, root: Path, tracker: Tracker) -> None:
        self.root = root
        self.tracker = tracker

    def path(self, category: str, filename: str, epoch: int | None = None) -> Path:
        return self.root / layout.artifact_dir(category, epoch) / filename

    def write_bytes(self, category: str, filename: str, data: bytes, epoch: int | None = None) -> Path:
        target = self.path(category, filename, epoch)
        atomic_write(target, data)
        self.tracker.log_artifact(target, layout.artifact_dir(category, epoch))
        return target

    def write_text(self, category: str, filename: str, text: str, epoch: int | None = None) -> Path:
        """Text is redacted (see redact.py); binary files such as PNGs go through write_bytes as they are."""
        return self.write_bytes(category, filename, redact_text(text).encode(), epoch)

    def write_json(self, category: str, filename: str, obj: Any, epoch: int | None = None) -> Path:
        return self.write_text(category, filename, to_json(obj), epoch)


def ensure_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it, so an output we cannot write is an error before any run
    exists; the folders made here are removed again when it fails."""
    from coroseg.errors import InputError

    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        for path in made:          # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise InputError(f"{folder}: cannot write here ({exc.strerror or exc.__class__.__name__})") from exc
