"""Per-image overlap metrics of a predicted mask against the expert mask (MONAI metrics)."""

from __future__ import annotations

import numpy as np
import torch

METRIC_NAMES = ("dice", "iou", "precision", "recall")


def image_metrics(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision, recall of two boolean (H,W) masks; NaN where a ratio is 0/0."""
    from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU

    y_pred = torch.from_numpy(prediction.astype(np.float32))[None, None]
    y = torch.from_numpy(truth.astype(np.float32))[None, None]
    dice = DiceMetric(include_background=True, ignore_empty=False)(y_pred, y)
    iou = MeanIoU(include_background=True, ignore_empty=False)(y_pred, y)
    confusion = ConfusionMatrixMetric(include_background=True, metric_name=("precision", "recall"))
    confusion(y_pred, y)
    precision, recall = confusion.aggregate()
    return {
        "dice": float(dice.item()),
        "iou": float(iou.item()),
        "precision": float(precision.item()),
        "recall": float(recall.item()),
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means over images, leaving out the NaNs of undefined ratios."""
    return {name: float(np.nanmean([r[name] for r in rows])) if rows else float("nan") for name in METRIC_NAMES}
