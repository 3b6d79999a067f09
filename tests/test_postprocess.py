"""Threshold and small-component removal: chosen on validation frames, applied by the Predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coroseg.inference.model_loading import LoadedModel
from coroseg.inference.predictor import Predictor
from coroseg.model_spec import ModelSpec
from coroseg.training.postprocess import (
    MIN_COMPONENT_FRACTIONS,
    THRESHOLDS,
    Postprocessing,
    PostprocessingChoice,
    choose_postprocessing,
    remove_small_components,
)


def test_grid():
    assert THRESHOLDS == (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
    assert MIN_COMPONENT_FRACTIONS == (0.0, 0.0001, 0.0002, 0.0005, 0.001)


def test_remove_small_components_removes_exactly_the_pieces_below_the_size():
    mask = np.zeros((100, 100), dtype=bool)         # area 10 000: fraction 0.001 = 10 pixels
    mask[10, 10:19] = True                          # 9 pixels: removed
    mask[30, 10:20] = True                          # 10 pixels: kept (not below the size)
    mask[50:52, 50:56] = True                       # 12 pixels: kept
    mask[80, 80] = True                             # 1 pixel: removed
    mask[81, 81] = mask[82, 82] = True              # with the pixel above, 3 diagonal pixels: one piece
    out = remove_small_components(mask, 0.001)
    expected = np.zeros_like(mask)
    expected[30, 10:20] = True
    expected[50:52, 50:56] = True
    assert np.array_equal(out, expected)
    # diagonal neighbours are one piece (8-connectivity): 3 pixels survive a 3-pixel minimum
    assert remove_small_components(mask, 0.0003)[80:83, 80:83].sum() == 3
    assert np.array_equal(remove_small_components(mask, 0.0), mask)
    assert not remove_small_components(np.zeros((5, 5), bool), 0.5).any()


def bar_case(n: int = 3, size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Truth: a horizontal bar. Probabilities: 0.45 in the bar, 0.2 elsewhere, and a 0.9 speck of noise."""
    truth = np.zeros((n, 1, size, size), dtype=np.float32)
    truth[:, :, 40:50, 10:90] = 1.0
    probs = np.where(truth > 0, 0.45, 0.2).astype(np.float32)
    probs[:, :, 80:82, 80:82] = 0.9                 # 4 pixels = 0.0004 of the frame
    return probs, truth


def test_choose_postprocessing_finds_the_known_best():
    probs, truth = bar_case()
    chosen = choose_postprocessing(torch.from_numpy(probs), torch.from_numpy(truth))
    assert chosen.chosen.threshold == 0.4               # 0.3..0.4 all find the bar; ties go to the one nearest 0.5
    assert chosen.chosen.min_component_fraction == 0.0005    # the smallest fraction that drops the 4-pixel speck
    assert chosen.val_dice_after == pytest.approx(1.0)
    assert chosen.val_dice_before == pytest.approx(0.0)     # at 0.5 only the speck is predicted


def test_choose_postprocessing_keeps_the_defaults_when_nothing_is_better():
    truth = np.zeros((2, 1, 32, 32), dtype=np.float32)
    truth[:, :, 10:20, 5:25] = 1.0
    chosen = choose_postprocessing(truth * 0.9 + 0.05, truth)        # perfect at every threshold
    assert chosen == PostprocessingChoice(Postprocessing(0.5, 0.0), val_dice_before=1.0, val_dice_after=1.0)


class Identity(torch.nn.Module):
    """Probabilities in, probabilities out: the mask is then the input thresholded."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_predictor_masks_apply_the_metadata_threshold_and_min_component_fraction():
    probs, _ = bar_case(n=1)
    frame = probs[0, 0]
    old = Predictor(LoadedModel(Identity(), ModelSpec.from_metadata({"image_size": 100}, "test"), "in-memory"))
    assert old.model.spec.postprocessing == Postprocessing(threshold=0.5, min_component_fraction=0.0)
    assert np.array_equal(old.masks([frame])[0], frame > 0.5)        # older models: threshold 0.5 only
    metadata = {"image_size": 100, "threshold": 0.4, "min_component_fraction": 0.0005}
    model = LoadedModel(Identity(), ModelSpec.from_metadata(metadata, "test"), "in-memory")
    predictor = Predictor(model)
    mask = predictor.masks([frame])[0]
    assert mask.dtype == bool and np.array_equal(mask, frame == np.float32(0.45))   # the bar, no speck
    # the minimum piece scales with each frame's own area: at 4x the area the 4x speck is still dropped
    big = np.kron(frame, np.ones((2, 2), dtype=np.float32))
    assert np.array_equal(predictor.masks([big])[0], big == np.float32(0.45))
    # and end to end through predict() (a model recorded without preprocessing gets none)
    assert np.array_equal(predictor.predict([frame])[0].mask, mask)
