"""Vessel-segmentation metrics of coroseg.evaluation.metrics on hand-built masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coroseg.evaluation.metrics import METRIC_NAMES, image_metrics, mean_metrics


def blank(h: int = 32, w: int = 32) -> np.ndarray:
    return np.zeros((h, w), bool)


def vessel_tree() -> np.ndarray:
    """A 3-px-wide trunk with two 1-px and 2-px branches, one 8-connected component."""
    m = blank(64, 64)
    m[30:33, 4:60] = True                      # trunk
    for i in range(20):                        # diagonal 1-px branch going up
        m[29 - i, 20 + i] = True
    m[33:60, 40:42] = True                     # 2-px branch going down
    return m


def test_names_and_order():
    assert METRIC_NAMES == ("dice", "iou", "precision", "recall", "sensitivity", "specificity",
                            "cldice", "hd95", "assd", "component_error")
    m = image_metrics(vessel_tree(), vessel_tree())
    assert tuple(m) == METRIC_NAMES
    assert all(isinstance(v, float) for v in m.values())


def test_identical_masks_are_perfect():
    t = vessel_tree()
    m = image_metrics(t.copy(), t)
    for name in ("dice", "iou", "precision", "recall", "sensitivity", "specificity", "cldice"):
        assert m[name] == pytest.approx(1.0), name
    assert m["hd95"] == 0.0
    assert m["assd"] == 0.0
    assert m["component_error"] == 0.0


def test_thin_line_shifted_by_three_pixels():
    truth, pred = blank(), blank()
    truth[10, 4:20] = True                     # 16 px
    pred[13, 4:20] = True                      # same line, 3 px lower
    m = image_metrics(pred, truth)
    assert m["hd95"] == pytest.approx(3.0)
    assert m["assd"] == pytest.approx(3.0)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["precision"] == 0.0 and m["recall"] == 0.0
    assert m["cldice"] == 0.0                  # no skeleton pixel inside the other mask
    assert m["component_error"] == 0.0         # one line each
    assert m["specificity"] == pytest.approx((32 * 32 - 32) / (32 * 32 - 16))


def test_hd95_ignores_a_single_far_outlier_that_assd_sees():
    truth = blank(64, 128)
    truth[10, 0:100] = True                    # 100 px line
    pred = truth.copy()
    pred[30, 50] = True                        # 1 stray pixel, 20 px away
    m = image_metrics(pred, truth)
    assert m["hd95"] == pytest.approx(0.0)     # 95th percentile, not the maximum (20)
    assert m["assd"] == pytest.approx(20.0 / 201)
    assert m["component_error"] == 1.0


def test_broken_vessel_is_penalised_by_topology_metrics_not_by_dice():
    truth = blank(64, 64)
    truth[30:33, 2:62] = True                  # 3-px-wide vessel, 60 px long
    pred = truth.copy()
    pred[:, 31:33] = False                     # 2-px gap: 2 pieces
    m = image_metrics(pred, truth)
    assert m["component_error"] == 1.0
    assert m["dice"] == pytest.approx(2 * 58 * 3 / (58 * 3 + 60 * 3))  # stays high (~0.98)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(58 / 60)
    assert m["cldice"] < 0.99                  # skeleton of the truth crosses the gap
    assert m["cldice"] < m["dice"]
    assert m["cldice"] > 0.9
    assert 0.0 < m["assd"] < 0.1               # a few boundary px move by 1 px; hd95 stays 0


def test_component_error_uses_eight_connectivity():
    diagonal = blank()
    for i in range(10):
        diagonal[5 + i, 5 + i] = True          # 10 components under 4-connectivity, 1 under 8
    straight = blank()
    straight[20, 5:15] = True
    assert image_metrics(diagonal, straight)["component_error"] == 0.0
    three = straight.copy()
    three[20, [8, 11]] = False                 # 3 pieces
    assert image_metrics(three, straight)["component_error"] == 2.0
    assert image_metrics(straight, three)["component_error"] == 2.0


def test_specificity_from_a_known_confusion_count():
    truth, pred = blank(10, 10), blank(10, 10)
    truth[:, 0:2] = True                       # 20 positives
    pred[0:5, 0:3] = True                      # 15 px: 10 TP, 5 FP
    pred[5:10, 0] = True                       # 5 more TP -> TP 15, FP 5, FN 5, TN 75
    m = image_metrics(pred, truth)
    assert m["specificity"] == pytest.approx(75 / 80)
    assert m["precision"] == pytest.approx(15 / 20)
    assert m["recall"] == pytest.approx(15 / 20)
    assert m["sensitivity"] == m["recall"]
    assert m["dice"] == pytest.approx(2 * 15 / 40)
    assert m["iou"] == pytest.approx(15 / 25)


def test_fov_ignores_pixels_outside_it():
    truth, pred = blank(10, 10), blank(10, 10)
    fov = blank(10, 10)
    fov[:, 0:6] = True                         # 60 px field of view
    truth[:, 1] = True                         # 10 vessel px inside
    truth[:, 9] = True                         # 10 vessel px outside (ignored with FOV)
    pred[:, 1] = True                          # 10 TP
    pred[0:5, 3] = True                        # 5 FP inside
    pred[:, 8] = True                          # 10 FP outside

    without = image_metrics(pred, truth)
    assert without["precision"] == pytest.approx(10 / 25)
    assert without["recall"] == pytest.approx(10 / 20)
    assert without["specificity"] == pytest.approx(65 / 80)   # 100 - 20 positives - 15 FP

    within = image_metrics(pred, truth, fov)
    assert within["precision"] == pytest.approx(10 / 15)
    assert within["recall"] == pytest.approx(1.0)
    assert within["specificity"] == pytest.approx(45 / 50)    # TN counted inside the FOV only
    assert within["dice"] == pytest.approx(20 / 25)
    assert within["component_error"] == 1.0                   # 2 pieces vs 1 inside the FOV
    assert without["component_error"] == 1.0                  # 3 pieces vs 2 in the whole image

    # false positives only outside the FOV: perfect inside it
    clean = truth.copy()
    clean[:, 7] = True
    assert image_metrics(clean, truth)["precision"] == pytest.approx(20 / 30)
    inside = image_metrics(clean, truth, fov)
    assert inside["precision"] == pytest.approx(1.0)
    assert inside["specificity"] == pytest.approx(1.0)
    assert inside["hd95"] == 0.0 and inside["component_error"] == 0.0 and inside["cldice"] == 1.0


def test_both_empty():
    m = image_metrics(blank(), blank())
    assert m["dice"] == 1.0 and m["iou"] == 1.0
    assert m["cldice"] == 1.0
    assert m["hd95"] == 0.0 and m["assd"] == 0.0
    assert m["component_error"] == 0.0
    assert m["specificity"] == pytest.approx(1.0)
    assert math.isnan(m["precision"]) and math.isnan(m["recall"]) and math.isnan(m["sensitivity"])


@pytest.mark.parametrize("empty_side", ["prediction", "truth"])
def test_one_side_empty(empty_side):
    mask = blank()
    mask[5, 2:12] = True
    mask[20, 2:12] = True                      # 2 components
    pred, truth = (blank(), mask) if empty_side == "prediction" else (mask, blank())
    m = image_metrics(pred, truth)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["cldice"] == 0.0
    assert math.isnan(m["hd95"]) and math.isnan(m["assd"])
    assert m["component_error"] == 2.0
    if empty_side == "prediction":
        assert m["recall"] == 0.0 and math.isnan(m["precision"]) and m["specificity"] == pytest.approx(1.0)
    else:
        assert m["precision"] == 0.0 and math.isnan(m["recall"])


def test_distances_agree_with_monai_metric_classes():
    from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric
    from scipy import ndimage

    rng = np.random.default_rng(7)
    truth = ndimage.binary_dilation(rng.random((96, 96)) < 0.01, iterations=2)
    pred = ndimage.binary_dilation(truth) ^ (rng.random((96, 96)) < 0.03)
    m = image_metrics(pred, truth)
    y_pred = torch.from_numpy(pred.astype(np.float32))[None, None]
    y = torch.from_numpy(truth.astype(np.float32))[None, None]
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95)(y_pred, y)
    assd = SurfaceDistanceMetric(include_background=True, symmetric=True)(y_pred, y)
    assert m["hd95"] == pytest.approx(float(hd95.item()), rel=1e-5)
    assert m["assd"] == pytest.approx(float(assd.item()), rel=1e-5)
    assert m["hd95"] > 1.0


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        image_metrics(blank(10, 10), blank(10, 11))
    with pytest.raises(ValueError):
        image_metrics(blank(10, 10), blank(10, 10), fov=blank(5, 5))


def test_mean_metrics_skips_nans():
    rows = [dict.fromkeys(METRIC_NAMES, 1.0), dict.fromkeys(METRIC_NAMES, 3.0), dict.fromkeys(METRIC_NAMES, 5.0)]
    rows[1]["hd95"] = float("nan")
    for r in rows:
        r["assd"] = float("nan")
    means = mean_metrics(rows)
    assert tuple(means) == METRIC_NAMES
    assert means["dice"] == pytest.approx(3.0)
    assert means["hd95"] == pytest.approx(3.0)        # mean of 1 and 5
    assert math.isnan(means["assd"])                  # all NaN -> NaN
    assert all(math.isnan(v) for v in mean_metrics([]).values())


def test_mean_metrics_over_image_metrics_rows():
    t = vessel_tree()
    rows = [image_metrics(t, t), image_metrics(blank(64, 64), t)]
    means = mean_metrics(rows)
    assert means["dice"] == pytest.approx(0.5)
    assert means["hd95"] == 0.0                       # the empty prediction's NaN is left out
    assert means["component_error"] == pytest.approx(0.5)
