"""Prepared training frames in one file on disk, read a batch at a time.

A data set is prepared once (data/preprocess.py, resized to the training side) into a cache file of uint8
records, one per frame: the network input (0..255), its mask (0/1) and its field of view (0/1), each S x S.
Training reads each batch's records through a DataLoader whose workers read ahead, so a process holds a few
batches whatever the size of the data set. Records are read with pread, not through a memory map: the pages
of a mapping that were read count in the process's resident memory until the kernel takes them back, while
pread's stay in the kernel's page cache.

A cache file is named by a digest of all its content depends on: the bytes of the data files, the preparation
settings and the code of `coroseg.data`. A changed frame, setting or version makes a new file, so a cache is
never stale. It is written under a temporary name and renamed, its metadata last: a file is used only once
complete, and trainings that prepare the same data at once leave each other alone. `COROSEG_CACHE_DIR` moves
the cache (default: $XDG_CACHE_HOME/coroseg, else ~/.cache/coroseg); deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coroseg.errors import InputError

PLANES = ("image", "mask", "fov")       # the planes of a record, in order
FORMAT_VERSION = 1                      # of the file layout below; part of every cache key


def cache_root() -> Path:
    configured = os.environ.get("COROSEG_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coroseg"


def code_digest() -> str:
    """sha256 of the source of `coroseg.data`: what reads, draws and prepares frames (a fix there must not
    meet frames prepared before it)."""
    h = hashlib.sha256(f"frame-store-{FORMAT_VERSION}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class FrameFile:
    """A complete cache file: `count` records of 3 planes of side x side uint8."""

    path: Path
    side: int
    count: int

    @property
    def record_bytes(self) -> int:
        return len(PLANES) * self.side * self.side

    def read(self, rows: Sequence[int]) -> np.ndarray:
        """The records of `rows` (any order, repeats allowed) as (len(rows), 3, side, side) uint8."""
        out = np.empty((len(rows), len(PLANES), self.side, self.side), dtype=np.uint8)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows):
                if not 0 <= row < self.count:
                    raise IndexError(f"{self.path}: record {row} of {self.count}")
                if os.preadv(fd, [out[i]], int(row) * self.record_bytes) != self.record_bytes:
                    raise InputError(f"{self.path}: frame cache truncated at record {row}; delete it to rebuild")
        finally:
            os.close(fd)
        return out

    def plane(self, name: str, rows: Sequence[int], chunk: int = 64) -> np.ndarray:
        """One plane of `rows` as (len(rows), side, side) uint8, read `chunk` records at a time."""
        index = PLANES.index(name)
        out = np.empty((len(rows), self.side, self.side), dtype=np.uint8)
        for start in range(0, len(rows), chunk):
            out[start : start + chunk] = self.read(rows[start : start + chunk])[:, index]
        return out


class FrameWriter:
    """Writes records one at a time under a temporary name; `commit` makes the cache file and its metadata."""

    def __init__(self, path: Path, side: int) -> None:
        self.path, self.side, self.count = path, side, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self.file = open(self.temporary, "wb")

    def add(self, image: np.ndarray, mask: np.ndarray, fov: np.ndarray) -> None:
        """A prepared frame: `image` float in [0, 1], `mask` and `fov` boolean, all side x side."""
        record = np.stack([np.round(np.clip(image, 0.0, 1.0) * 255), mask, fov]).astype(np.uint8)
        self.file.write(record.tobytes())
        self.count += 1

    def commit(self, metadata: dict) -> FrameFile:
        self.file.close()
        os.replace(self.temporary, self.path)
        _write_json(self.path.with_suffix(".json"), {**metadata, "side": self.side, "count": self.count})
        return FrameFile(self.path, self.side, self.count)

    def abandon(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)


def _write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def cached(path: Path) -> tuple[FrameFile, dict] | None:
    """The complete cache file at `path` and its metadata, or None."""
    try:
        metadata = json.loads(path.with_suffix(".json").read_text())
        frames = FrameFile(path, int(metadata["side"]), int(metadata["count"]))
        if path.stat().st_size != frames.count * frames.record_bytes:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return frames, metadata


def as_inputs(records: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,3,S,S) uint8 records -> the network's images (B,1,S,S) float32 in [0,1], masks and fields of view
    (B,1,S,S) float32 0/1, on the records' device."""
    records = records.float()
    return records[:, 0:1].div_(255.0), records[:, 1:2], records[:, 2:3]


class _Records(torch.utils.data.Dataset):
    """Item = an array of rows; value = their records as one uint8 tensor (the batch is read as one)."""

    def __init__(self, frames: FrameFile) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return self.frames.count

    def __getitem__(self, rows) -> torch.Tensor:
        return torch.from_numpy(self.frames.read(rows))


class _Order(torch.utils.data.Sampler):
    """The batches the loader reads next; set before each pass."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _ignore_stops(worker_id: int) -> None:
    """A stop is the training's to make: Ctrl-C reaches the whole process group and a cluster's SIGTERM every
    process of the job, and a worker that died of it would fail the loop's next read instead of letting it
    stop at the batch's end. Workers end with the training (the DataLoader's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class RecordLoader:
    """Batches of records from the file, read by `workers` processes ahead of the loop (0: by the loop itself).

    The loader draws its workers' seeds from its own generator, not torch's global one, so the training's
    random draws are the same with any number of workers."""

    def __init__(self, frames: FrameFile, workers: int, pin_memory: bool) -> None:
        self.order = _Order()
        self.loader = torch.utils.data.DataLoader(
            _Records(frames), batch_size=None, sampler=self.order, num_workers=workers, pin_memory=pin_memory,
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=_ignore_stops, generator=torch.Generator())

    def batches(self, rows: list[np.ndarray]) -> Iterator[torch.Tensor]:
        self.order.batches = [np.asarray(r, dtype=np.int64) for r in rows]
        return iter(self.loader)
