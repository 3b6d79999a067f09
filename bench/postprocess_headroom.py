"""Post-processing headroom (not a test): how much Dice the choice of threshold and small-piece removal leaves
on held-out frames, out of fold, for the default recipe.

Each outer fold trains as `coroseg train` would on its training frames (quality_cv.as_coroseg_trains: on a
small set the 5-fold ensemble, its post-processing chosen on the networks' out-of-fold validation predictions,
made without test-time flips at the training size), then its model predicts the held-out frames as `coroseg
predict` does (with flips, at each frame's size) and they are scored with:

- chosen: the post-processing the model carries (what coroseg does);
- flips: chosen instead on the validation frames predicted as `predict` predicts (with flips, at each frame's
  size), each by the network that did not train on it: the same kind of probabilities the choice is used on;
- 0.5: threshold 0.5, nothing removed;
- oracle: the best of the grid on the held-out frames themselves (optimistic by construction: the most any
  choice of this grid could give).

    PYTHONPATH=src .venv/bin/python bench/postprocess_headroom.py --data ../shared/data/cimat40_train
    smoke: ... --folds 2 --epochs 1 --image-size 64
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_cv import as_coroseg_trains, mean_sd, predicted  # noqa: E402 - the bench's own

from coroseg.config import TrainConfig  # noqa: E402
from coroseg.data.dataset import load_training_data  # noqa: E402
from coroseg.data.pairs import find_pairs  # noqa: E402
from coroseg.evaluation.metrics import image_metrics  # noqa: E402
from coroseg.model_spec import ModelSpec  # noqa: E402
from coroseg.training.postprocess import Postprocessing, choose_postprocessing  # noqa: E402

ROWS = ("chosen", "flips", "0.5", "oracle")


def with_flips(model, spec: ModelSpec, device, pairs, names) -> tuple[list, list[np.ndarray]]:
    """Predictions of these frames as `coroseg predict` makes them (flips, each frame's size), and their truths
    inside the field of view."""
    predictions, masks = predicted(model, spec, device, pairs, names, tta=True)
    return predictions, [(m > 0) & p.fov for m, p in zip(masks, predictions)]


def dice(postprocessing: Postprocessing, predictions, truths) -> float:
    return float(np.mean([image_metrics(postprocessing.mask(p.probabilities), t, p.fov)["dice"]
                          for p, t in zip(predictions, truths)]))


def fold_row(config: TrainConfig, data, device, pairs) -> dict[str, tuple[Postprocessing, float]]:
    trained = as_coroseg_trains(config, data, device, None)
    oof, oof_truths = [], []
    for (network, _), split in zip(trained.members, trained.splits):
        predictions, truths = with_flips(network, trained.spec, device, pairs, split.val.names)
        oof += [p.probabilities for p in predictions]
        oof_truths += truths
    flips = choose_postprocessing(np.stack(oof), np.stack(oof_truths)).chosen
    held, truths = with_flips(trained.model, trained.spec, device, pairs, data.val.names)
    oracle = choose_postprocessing(np.stack([p.probabilities for p in held]), np.stack(truths))
    return {"chosen": (trained.spec.postprocessing, dice(trained.spec.postprocessing, held, truths)),
            "flips": (flips, dice(flips, held, truths)),
            "0.5": (Postprocessing(), oracle.val_dice_before),
            "oracle": (oracle.chosen, oracle.val_dice_after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cimat40_train"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--folds", type=int, default=5, help="outer folds: each scores its held-out frames")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke runs)")
    parser.add_argument("--image-size", type=int, default=TrainConfig().image_size)
    args = parser.parse_args()
    device = torch.device(args.device)
    config = TrainConfig(data=str(args.data), device=args.device, tracking=False, epochs=args.epochs,
                         image_size=args.image_size)
    pairs = {p.image.name: p for p in find_pairs(config.data)}
    rows = []
    for k, data in enumerate(load_training_data(replace(config, folds=args.folds)), 1):
        t0 = time.perf_counter()
        rows.append(fold_row(config, data, device, pairs))
        print(f"fold {k}/{args.folds} ({time.perf_counter() - t0:.0f} s): " + "; ".join(
            f"{name} {pp.threshold:.2f}/{pp.min_component_fraction:.4f} {d:.4f}" for name, (pp, d) in
            rows[-1].items()), flush=True)
    print(f"\nHeld-out Dice with flips, {args.folds} outer folds of {args.data.name}, {device}\n"
          "| post-processing | Dice | change vs chosen | thresholds |\n| --- | --- | --- | --- |")
    for name in ROWS:
        scores = [row[name][1] for row in rows]
        change = [s - row["chosen"][1] for s, row in zip(scores, rows)]
        print(f"| {name} | {mean_sd(scores)} | {np.mean(change):+.4f} | "
              f"{', '.join(f'{row[name][0].threshold:.2f}' for row in rows)} |")


if __name__ == "__main__":
    main()
