"""Where the training loop's batches come from: the frame cache (frame_store.py), streamed or resident.

- Streamed: a DataLoader's workers read each batch's records from the file ahead of the loop, and the loop
  copies them to its device. Memory follows the batch size, not the data set. The CPU's way, and a GPU's when
  the data set would not fit in its memory.
- Resident: every record is copied once to the GPU as uint8 (a quarter of float32's bytes), and a batch is an
  index into it: no host work and no copy per step, which at 512 px and batch 16 the host could not keep up
  with (bench/gpu.sh).

Either way a batch arrives as (B,3,S,S) uint8 records on the device; `frame_store.as_inputs` makes the
network's float inputs of them there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from coroseg.data.dataset import Frames
from coroseg.data.frame_store import FrameFile, RecordLoader

RESIDENT_SHARE = 0.25           # of the GPU's free memory that the records may take to be resident
_CHUNK = 256                    # records copied to the GPU at a time (host memory stays small)

Positions = Sequence["torch.Tensor | np.ndarray"]       # each batch's positions in its Frames


def default_workers(device: torch.device) -> int:
    """Loader workers when not configured. On a GPU machine one per two spare cores, up to 4 (the loop keeps a
    core). On a CPU the loop's threads use every core and reading a batch costs ~1 % of its step: one worker
    reads ahead where there are cores to spare, none on 2 cores, where it cost the loop 4 % (bench/memory.py)."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(4, (cores - 1) // 2))
    return 0 if cores <= 2 else 1


class StreamedRecords:
    order_device = None         # batch positions stay on the host: they are read there

    def __init__(self, file: FrameFile, device: torch.device, workers: int) -> None:
        self.device = device
        self.loader = RecordLoader(file, workers, pin_memory=device.type == "cuda")

    def read(self, frames: Frames, positions: Positions) -> Iterator[torch.Tensor]:
        rows = [frames.rows[np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p)] for p in positions]
        return (batch.to(self.device, non_blocking=True) for batch in self.loader.batches(rows))


class ResidentRecords:
    def __init__(self, file: FrameFile, device: torch.device) -> None:
        self.order_device = device
        self.records = torch.empty((file.count, 3, file.side, file.side), dtype=torch.uint8, device=device)
        for start in range(0, file.count, _CHUNK):
            stop = min(start + _CHUNK, file.count)
            self.records[start:stop] = torch.from_numpy(file.read(range(start, stop))).to(device)

    def read(self, frames: Frames, positions: Positions) -> Iterator[torch.Tensor]:
        rows = torch.as_tensor(frames.rows, device=self.order_device)
        return (self.records[rows[torch.as_tensor(p, device=self.order_device)]] for p in positions)


def frame_source(file: FrameFile, device: torch.device, workers: int | None) -> StreamedRecords | ResidentRecords:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if file.count * file.record_bytes <= RESIDENT_SHARE * free:
            return ResidentRecords(file, device)
    return StreamedRecords(file, device, default_workers(device) if workers is None else workers)
