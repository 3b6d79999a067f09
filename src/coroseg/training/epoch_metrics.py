"""Each epoch's vessel metrics of the validation frames (clDice, HD95...), computed where they cost the loop least.

They are CPU work (skeletons, surface distances) that costs more than a whole GPU epoch. On a GPU they run while
the next epoch trains, in a process of their own: on a thread they held the GIL that the loop needs to queue its
steps, and the loop trained at half speed (bench/gpu_profile.py: 806 img/s alone, 410 beside the thread, H200).
The process gets the validation truths once, then only each epoch's thresholded predictions. On a CPU, which has
no core to spare, they are computed at once.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch

from coroseg.training.postprocess import PROBABILITY_STEPS, quantized

VESSEL_METRICS = ("cldice", "hd95", "assd", "component_error", "sensitivity", "specificity", "precision", "iou")

HALF = PROBABILITY_STEPS // 2 + 1          # 128: p >= 0.5 in uint8 steps (127.5 rounds up)
_held: tuple[np.ndarray, np.ndarray] | None = None        # the worker process's truths and fields of view


def metrics_of(predictions: np.ndarray, truths: np.ndarray, fovs: np.ndarray) -> dict[str, float]:
    """`val_<name>` for each of VESSEL_METRICS: means over frames, inside each frame's field of view."""
    from coroseg.evaluation.metrics import image_metrics, mean_metrics

    means = mean_metrics([image_metrics(p, t, f) for p, t, f in zip(predictions, truths, fovs)])
    return {f"val_{name}": means[name] for name in VESSEL_METRICS}


def _hold(truths: np.ndarray, fovs: np.ndarray) -> None:
    # A stop is the training's to make: Ctrl-C reaches the terminal's whole process group, and torchrun signals
    # each worker's group, this process included; it ends when the training closes it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    global _held
    _held = truths, fovs


def _held_metrics(predictions: np.ndarray) -> dict[str, float]:
    return metrics_of(predictions, *_held)


class EpochMetrics:
    """`submit(probabilities)`: a Future of the metrics of the thresholded (0.5) probabilities, (N, H, W) uint8
    steps of 1/255 (trainer.py's validation)."""

    def __init__(self, truths: np.ndarray, fovs: np.ndarray, background: bool) -> None:
        self.truths, self.fovs = truths, fovs           # (N, H, W) bool
        self.pool = None
        if background:      # spawn: a fork of a process that holds CUDA state is unsafe
            self.pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), initializer=_hold,
                                            initargs=(self.truths, self.fovs))

    @property
    def in_background(self) -> bool:
        return self.pool is not None

    def submit(self, probabilities: torch.Tensor) -> Future:
        predictions = quantized(probabilities).numpy() >= HALF
        if self.pool is not None:
            return self.pool.submit(_held_metrics, predictions)
        done: Future = Future()
        done.set_result(metrics_of(predictions, self.truths, self.fovs))
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
