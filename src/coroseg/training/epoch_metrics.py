"""Each epoch's vessel metrics of the validation frames (clDice, HD95...), computed where they cost the loop least.

They are CPU work (skeletons, surface distances) that costs more than a whole GPU epoch. On a GPU they run while
the next epochs train, in processes of their own: on a thread they held the GIL that the loop needs to queue its
steps, and the loop trained at half speed (bench/gpu_profile.py: 806 img/s alone, 410 beside the thread, H200).
The frames are shared out among several processes: in one, the 40 frames of 512 px of the GPU benchmark took
about 5 s an epoch while the training phase took 0.15 s (H200 machine, bench/gpu_speed.py under cProfile).
Each process gets the validation truths once (no more processes than 1 GiB of such copies allows), then only
its share of each epoch's thresholded predictions. On a CPU, which has no core to spare, they are computed at
once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch

from coroseg.training.postprocess import PROBABILITY_STEPS, quantized

VESSEL_METRICS = ("cldice", "hd95", "assd", "component_error", "sensitivity", "specificity", "precision", "iou")

HELD_BYTES = 2**30       # the copies of the truths and fields of view that all the processes hold together
HALF = PROBABILITY_STEPS // 2 + 1          # 128: p >= 0.5 in uint8 steps (127.5 rounds up)
_held: tuple[np.ndarray, np.ndarray] | None = None        # the worker process's truths and fields of view


def frame_metrics(predictions: np.ndarray, truths: np.ndarray, fovs: np.ndarray) -> list[dict[str, float]]:
    from coroseg.evaluation.metrics import image_metrics

    return [image_metrics(p, t, f) for p, t, f in zip(predictions, truths, fovs)]


def _means(frames: list[dict[str, float]]) -> dict[str, float]:
    """`val_<name>` for each of VESSEL_METRICS: means over frames (NaNs left out)."""
    from coroseg.evaluation.metrics import mean_metrics

    means = mean_metrics(frames)
    return {f"val_{name}": means[name] for name in VESSEL_METRICS}


def metrics_of(predictions: np.ndarray, truths: np.ndarray, fovs: np.ndarray) -> dict[str, float]:
    """The means of the frames' metrics, each inside its frame's field of view."""
    return _means(frame_metrics(predictions, truths, fovs))


def default_workers() -> int:
    """Processes for the metrics: one per two spare cores, up to 8 (the loop and its loader keep theirs)."""
    return max(1, min(8, ((os.cpu_count() or 1) - 2) // 2))


def _hold(truths: np.ndarray, fovs: np.ndarray) -> None:
    # A stop is the training's to make: Ctrl-C reaches the terminal's whole process group, and torchrun signals
    # each worker's group, this process included; it ends when the training closes it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)            # its neighbours and the loop have the other cores
    global _held
    _held = truths, fovs


def _held_metrics(rows: np.ndarray, predictions: np.ndarray) -> list[dict[str, float]]:
    truths, fovs = _held
    return frame_metrics(predictions, truths[rows], fovs[rows])


class _Joined:
    """The means over the frames of every process's share, once all are done (the Future calls used here)."""

    def __init__(self, parts: list[Future]) -> None:
        self.parts = parts

    def done(self) -> bool:
        return all(part.done() for part in self.parts)

    def result(self, timeout: float | None = None) -> dict[str, float]:
        return _means([frame for part in self.parts for frame in part.result(timeout)])


class EpochMetrics:
    """`submit(probabilities)`: a Future (`done()`, `result()`) of the metrics of the thresholded (0.5)
    probabilities, (N, H, W) uint8 steps of 1/255 (trainer.py's validation)."""

    def __init__(self, truths: np.ndarray, fovs: np.ndarray, background: bool, workers: int | None = None) -> None:
        self.truths, self.fovs = truths, fovs           # (N, H, W) bool
        self.pool, self.workers = None, 1
        if background:      # spawn: a fork of a process that holds CUDA state is unsafe
            affordable = HELD_BYTES // max(1, truths.nbytes + fovs.nbytes)      # each process holds them all
            self.workers = max(1, min(workers or default_workers(), len(truths), affordable))
            self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"), initializer=_hold,
                                            initargs=(self.truths, self.fovs))

    @property
    def in_background(self) -> bool:
        return self.pool is not None

    def submit(self, probabilities: torch.Tensor) -> Future | _Joined:
        predictions = quantized(probabilities).numpy() >= HALF
        if self.pool is not None:
            shares = np.array_split(np.arange(len(predictions)), self.workers)
            return _Joined([self.pool.submit(_held_metrics, rows, predictions[rows]) for rows in shares if len(rows)])
        done: Future = Future()
        done.set_result(metrics_of(predictions, self.truths, self.fovs))
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
