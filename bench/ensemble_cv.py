"""Ensemble benchmark (not a test): does `--folds K`'s ensemble beat the single best fold, on frames neither saw?

Nested cross-validation on real angiograms. The frames are split into outer folds; for each, the other frames
are cross-validated as `coroseg train --folds K` does (K inner fold models, each picked at its best epoch), and
two models are scored on the held-out outer frames, at their original size as `coroseg predict` does:
- the single best inner fold (the highest inner validation Dice), with its own chosen post-processing;
- the ensemble: the mean of the K inner networks, post-processed as chosen on their out-of-fold predictions.

    .venv/bin/python bench/ensemble_cv.py --data ../shared/data/cimat40_train [--outer 4 --inner 3 --epochs 30]

Prints Dice and clDice (mean +- sd over outer folds) of both, and the wall time. The loop and predictor are
driven directly (no MLflow), as in bench/quality_cv.py, whose training and scoring it reuses.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_cv import as_coroseg_trains, leak_refused, mean_sd, score_fold  # noqa: E402 - the bench's own

from coroseg.config import TrainConfig  # noqa: E402
from coroseg.data.dataset import load_training_data  # noqa: E402
from coroseg.data.pairs import find_pairs  # noqa: E402
from coroseg.evaluation.metrics import mean_metrics  # noqa: E402
from coroseg.model_spec import ModelSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cimat40_train"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--outer", type=int, default=4)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="each inner fold's (default: auto, as coroseg train's folds)")
    parser.add_argument("--image-size", type=int, default=TrainConfig().image_size)
    parser.add_argument("--no-tta", dest="tta", action="store_false",
                        help="score without test-time flips (coroseg predict's default is with them)")
    parser.add_argument("--init", choices=("auto", "none"), default="auto",
                        help="the start of every training (auto: the built-in one where it fits, as train)")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = TrainConfig(data=str(args.data), folds=args.inner, epochs=args.epochs, image_size=args.image_size,
                         device=args.device, tracking=False, init=args.init)
    leak_refused(config)
    outer = load_training_data(replace(config, folds=args.outer))
    pairs = {p.image.name: p for p in find_pairs(args.data)}
    started = time.perf_counter()
    scores: dict[str, list[dict]] = {"best fold": [], "ensemble": []}
    for k, data in enumerate(outer, 1):
        trained = as_coroseg_trains(config, data, device, None)     # the inner folds and their ensemble
        model, result = max(trained.members, key=lambda member: member[1].best_val_dice)
        best_spec = ModelSpec.of_training(config, result.postprocessing.chosen)
        for label, (module, spec) in (("best fold", (model, best_spec)), ("ensemble", (trained.model, trained.spec))):
            scores[label].append(mean_metrics(score_fold(module, spec, device, pairs, data.val.names, args.tta)))
        print(f"  outer fold {k}: {len(data.val)} held-out frames; best fold Dice "
              f"{scores['best fold'][-1]['dice']:.4f}, ensemble Dice {scores['ensemble'][-1]['dice']:.4f}",
              flush=True)
    seconds = time.perf_counter() - started
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nnested cross-validation on {args.data.name} ({sum(len(d.val) for d in outer)} frames): {args.outer} "
          f"outer folds x {args.inner} inner folds, {args.epochs or 'auto'} epochs, {args.image_size} px, test-time flips "
          f"{'on' if args.tta else 'off'}, {name}, {seconds:.0f} s")
    print("| model | Dice | clDice | HD95 (px) |\n| --- | --- | --- | --- |")
    for label, scored in scores.items():
        print(f"| {label} | " + " | ".join(mean_sd([s[m] for s in scored], 4) for m in ("dice", "cldice", "hd95"))
              + " |")
    gain = [e["dice"] - b["dice"] for e, b in zip(scores["ensemble"], scores["best fold"])]
    print(f"\nensemble - best fold, Dice per outer fold: {', '.join(f'{g:+.4f}' for g in gain)}")


if __name__ == "__main__":
    main()
