"""Post-processing of predicted probabilities, chosen on the validation frames after training.

Two knobs: the probability threshold, and the minimum size of a connected vessel piece (8-connectivity),
given as a FRACTION of the frame area so that it carries over to frames of any size. Both are chosen by
grid search for the best mean validation Dice, recorded with the model, and applied by `Predictor.masks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))      # 0.3, 0.35, ..., 0.7
MIN_COMPONENT_FRACTIONS = (0.0, 0.0001, 0.0002, 0.0005, 0.001)
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_COMPONENT_FRACTION = 0.0

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels of a boolean 2-D mask and the size of each label (index 0: background)."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)


def remove_small_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """The boolean 2-D mask without its 8-connected pieces smaller than `min_fraction` of the frame area.

    A piece of exactly `min_fraction * H * W` pixels is kept; `min_fraction` 0 keeps everything.
    """
    mask = np.asarray(mask, dtype=bool)
    if min_fraction <= 0 or not mask.any():
        return mask.copy()
    labels, sizes = _components(mask)
    keep = sizes >= min_fraction * mask.size
    keep[0] = False
    return keep[labels]


@dataclass(frozen=True)
class Postprocessing:
    """How a model's probabilities become a mask; part of its `ModelSpec`."""

    threshold: float = DEFAULT_THRESHOLD
    min_component_fraction: float = DEFAULT_MIN_COMPONENT_FRACTION

    def mask(self, probabilities: np.ndarray) -> np.ndarray:
        """The mask of one probability map: `probabilities > threshold`, small pieces removed."""
        return remove_small_components(np.asarray(probabilities) > self.threshold, self.min_component_fraction)


@dataclass(frozen=True)
class PostprocessingChoice:
    """The post-processing chosen on the validation frames, and the mean validation Dice without and with it."""

    chosen: Postprocessing
    val_dice_before: float      # threshold 0.5, nothing removed
    val_dice_after: float


PROBABILITY_STEPS = 255        # validation probabilities are kept as uint8 k/255: a quarter of float32's memory


def quantized(probabilities: torch.Tensor) -> torch.Tensor:
    """Probabilities (N,1,H,W) or (N,H,W), float or already uint8, as (N,H,W) uint8 steps of 1/255 (0.5 and
    above is 128 and above: thresholds keep their meaning to within half a step)."""
    if probabilities.ndim == 4:
        probabilities = probabilities[:, 0]
    if probabilities.dtype == torch.uint8:
        return probabilities
    return (probabilities.float() * PROBABILITY_STEPS).round_().to(torch.uint8)


def _as_maps(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N,1,H,W) or (N,H,W) tensor or array -> (N,H,W) numpy; uint8 probabilities stay uint8 (see `dequantized`)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = (values if values.dtype in (torch.uint8, torch.bool) else values.float()).numpy()
    values = np.asarray(values)
    return values[:, 0] if values.ndim == 4 else values


def dequantized(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as float32 from uint8 steps (float ones as they are); the choice below converts one frame
    at a time, not all at once."""
    if probabilities.dtype == np.uint8:
        return probabilities.astype(np.float32) / PROBABILITY_STEPS
    return probabilities


def _dice_grid(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of one frame for every (threshold, fraction) of the grid; 1.0 when both masks are empty
    (as MONAI's DiceMetric with ignore_empty=False, used for model selection)."""
    grid = np.empty((len(THRESHOLDS), len(MIN_COMPONENT_FRACTIONS)))
    truth_sum = int(truth.sum())
    for i, threshold in enumerate(THRESHOLDS):
        labels, sizes = _components(probs > threshold)
        overlap = np.bincount(labels.ravel(), weights=truth.ravel(), minlength=len(sizes))
        for j, fraction in enumerate(MIN_COMPONENT_FRACTIONS):
            keep = sizes >= fraction * truth.size
            keep[0] = False
            denominator = sizes[keep].sum() + truth_sum
            grid[i, j] = 2.0 * overlap[keep].sum() / denominator if denominator else 1.0
    return grid


def choose_postprocessing(probabilities: np.ndarray | torch.Tensor,
                          masks: np.ndarray | torch.Tensor) -> PostprocessingChoice:
    """The threshold and minimum component fraction of the grid that maximise the mean validation Dice.

    Ties go to the threshold nearest 0.5, then to the smaller fraction.
    """
    probs, truth = _as_maps(probabilities), _as_maps(masks) > 0.5
    if probs.shape != truth.shape:
        raise ValueError(f"probabilities {probs.shape} and masks {truth.shape} differ in shape")
    if len(probs) == 0:
        raise ValueError("no validation frames to choose the post-processing on")
    mean = np.mean([_dice_grid(dequantized(p), t) for p, t in zip(probs, truth)], axis=0)
    rounded = np.round(mean, 10)                      # equal Dice up to float noise is a tie
    candidates = [(i, j) for i in range(len(THRESHOLDS)) for j in range(len(MIN_COMPONENT_FRACTIONS))]
    i, j = max(candidates, key=lambda c: (rounded[c], -abs(THRESHOLDS[c[0]] - DEFAULT_THRESHOLD),
                                          -MIN_COMPONENT_FRACTIONS[c[1]]))
    default = (THRESHOLDS.index(DEFAULT_THRESHOLD), MIN_COMPONENT_FRACTIONS.index(DEFAULT_MIN_COMPONENT_FRACTION))
    return PostprocessingChoice(Postprocessing(float(THRESHOLDS[i]), float(MIN_COMPONENT_FRACTIONS[j])),
                                val_dice_before=float(mean[default]), val_dice_after=float(mean[i, j]))
