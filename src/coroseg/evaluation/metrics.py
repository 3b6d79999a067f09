"""Per-image metrics of a predicted vessel mask against the expert mask.

Pixel overlap (dice, iou, precision, recall = sensitivity, specificity) and boundary distances
(hd95, assd) come from MONAI; the topology-aware centreline Dice (clDice, Shit et al. 2021) uses
scikit-image skeletons, and the connected-component error uses scipy.

Edge cases (all documented per metric in :func:`image_metrics`):

* overlap ratios are NaN where they are 0/0 (e.g. precision of an empty prediction), except
  dice and iou, which are 1.0 when both masks are empty (MONAI, ``ignore_empty=False``);
* clDice: both masks empty -> 1.0; exactly one empty (or no skeleton pixel of either mask
  inside the other) -> 0.0;
* hd95 and assd: both masks empty -> 0.0; exactly one empty -> NaN (a distance to nothing is
  undefined; ``mean_metrics`` leaves the NaN out of the mean);
* component_error is always defined.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize

METRIC_NAMES = (
    "dice",
    "iou",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "cldice",
    "hd95",
    "assd",
    "component_error",
)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _overlap_metrics(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MONAI pixel-overlap metrics of two boolean masks of the same shape (any number of dims >= 1)."""
    from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU

    y_pred = torch.from_numpy(prediction.astype(np.float32))[None, None]
    y = torch.from_numpy(truth.astype(np.float32))[None, None]
    dice = DiceMetric(include_background=True, ignore_empty=False)(y_pred, y)
    iou = MeanIoU(include_background=True, ignore_empty=False)(y_pred, y)
    confusion = ConfusionMatrixMetric(
        include_background=True, metric_name=("precision", "sensitivity", "specificity")
    )
    confusion(y_pred, y)
    precision, sensitivity, specificity = confusion.aggregate()
    return {
        "dice": float(dice.item()),
        "iou": float(iou.item()),
        "precision": float(precision.item()),
        "recall": float(sensitivity.item()),
        "sensitivity": float(sensitivity.item()),
        "specificity": float(specificity.item()),
    }


def centreline_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """clDice (Shit et al. 2021) of two boolean 2-D masks.

    Tprec = |skel(P) ∩ T| / |skel(P)|, Tsens = |skel(T) ∩ P| / |skel(T)|,
    clDice = 2·Tprec·Tsens / (Tprec + Tsens). Both skeletons empty (both masks empty) -> 1.0;
    one skeleton empty -> 0.0; Tprec + Tsens = 0 -> 0.0.
    """
    skel_pred = skeletonize(prediction)
    skel_truth = skeletonize(truth)
    n_pred, n_truth = int(skel_pred.sum()), int(skel_truth.sum())
    if n_pred == 0 and n_truth == 0:
        return 1.0
    if n_pred == 0 or n_truth == 0:
        return 0.0
    tprec = np.count_nonzero(skel_pred & truth) / n_pred
    tsens = np.count_nonzero(skel_truth & prediction) / n_truth
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))


def surface_distances(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(hd95, assd) in pixels between the boundaries of two boolean 2-D masks (MONAI).

    Boundaries are the mask pixels with a 4-neighbour outside the mask (MONAI's erosion edges,
    so a 1-px line is its own boundary); distances are Euclidean. hd95 is the larger of the two
    directed 95th percentiles; assd the mean over the distances of both directions.
    Both masks empty -> (0.0, 0.0); exactly one empty -> (NaN, NaN).
    """
    from monai.metrics.utils import get_edge_surface_distance

    has_pred, has_truth = bool(prediction.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0, 0.0
    if not has_pred or not has_truth:
        return float("nan"), float("nan")
    # MONAI 1.6 crops to the union's bounding box and queries a KD-tree of boundary pixels on CPU,
    # fast enough (tens of ms for a 512x512 vessel mask) that no hand-written distance-transform
    # shortcut is needed. HausdorffDistanceMetric and SurfaceDistanceMetric would each extract the
    # edges and query both directions again, so both numbers come from one call of the utility
    # they share, reduced exactly as they reduce it (torch.quantile per direction then max;
    # mean over the concatenated distances).
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated get_mask_edges(always_return_as_numpy=...) internally
        # (the metric classes too); the warning is not actionable here and would reach CLI stderr.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        _, distances, _ = get_edge_surface_distance(
            torch.from_numpy(prediction), torch.from_numpy(truth), symmetric=True, warn_empty=False
        )
    hd95 = max(float(torch.quantile(d.double(), 0.95)) for d in distances)
    assd = float(torch.cat(distances).double().mean())
    return hd95, assd


def component_count(mask: np.ndarray) -> int:
    """Number of 8-connected components of a boolean 2-D mask."""
    return int(ndimage.label(mask, structure=_EIGHT_CONNECTED)[1])


def image_metrics(prediction: np.ndarray, truth: np.ndarray, fov: np.ndarray | None = None) -> dict[str, float]:
    """All of :data:`METRIC_NAMES` for two boolean (H, W) masks, in that order.

    * dice, iou, precision, recall (= sensitivity), specificity: pixel overlap (MONAI); NaN where a
      ratio is 0/0, except dice = iou = 1.0 when both masks are empty.
    * cldice: centreline Dice; both empty -> 1.0, one empty -> 0.0 (see :func:`centreline_dice`).
    * hd95, assd: boundary distances in pixels; both empty -> 0.0, one empty -> NaN
      (see :func:`surface_distances`).
    * component_error: |#components(prediction) - #components(truth)|, 8-connectivity.

    ``fov``: optional boolean (H, W) field-of-view mask. Both masks are set to False outside it
    before every metric, and the overlap metrics count only pixels inside it (so true negatives
    outside the field of view do not raise the specificity).
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape or prediction.ndim != 2:
        raise ValueError(f"expected two boolean (H, W) masks of one shape, got {prediction.shape} and {truth.shape}")
    if fov is not None:
        fov = np.asarray(fov, dtype=bool)
        if fov.shape != truth.shape:
            raise ValueError(f"fov shape {fov.shape} differs from mask shape {truth.shape}")
        prediction = prediction & fov
        truth = truth & fov
        # The in-FOV pixels as a 1-D "image": the confusion counts (true negatives included)
        # then cover the field of view only.
        overlap = _overlap_metrics(prediction[fov], truth[fov])
    else:
        overlap = _overlap_metrics(prediction, truth)
    hd95, assd = surface_distances(prediction, truth)
    return {
        **overlap,
        "cldice": centreline_dice(prediction, truth),
        "hd95": hd95,
        "assd": assd,
        "component_error": float(abs(component_count(prediction) - component_count(truth))),
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means over images of each of :data:`METRIC_NAMES`, leaving out NaNs (undefined values).

    A name whose values are all NaN (or with no rows) gets NaN.
    """
    means = {}
    for name in METRIC_NAMES:
        values = np.array([r[name] for r in rows if name in r], dtype=float)
        finite = values[~np.isnan(values)]
        means[name] = float(finite.mean()) if finite.size else float("nan")
    return means
