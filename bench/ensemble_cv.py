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
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_cv import fit, leak_refused, mean_sd  # noqa: E402 - the bench's own training and format

from coroseg.config import TrainConfig  # noqa: E402
from coroseg.data.dataset import TrainingData, all_frames, fold_indices  # noqa: E402
from coroseg.data.imageio import read_gray  # noqa: E402
from coroseg.data.pairs import find_pairs, load_mask  # noqa: E402
from coroseg.evaluation.metrics import image_metrics, mean_metrics  # noqa: E402
from coroseg.inference.model_loading import LoadedModel  # noqa: E402
from coroseg.inference.predictor import Predictor  # noqa: E402
from coroseg.model_spec import ModelSpec  # noqa: E402
from coroseg.models import Ensemble  # noqa: E402
from coroseg.training.postprocess import choose_postprocessing  # noqa: E402


def score(module, spec: ModelSpec, device, frames: list[np.ndarray], truths: list[np.ndarray], tta: bool) -> dict:
    predictor = Predictor(LoadedModel(module.to(device).eval(), spec, "in-memory"), batch_size=8, tta=tta)
    return mean_metrics([image_metrics(p.mask, t, p.fov) for p, t in zip(predictor.predict(frames), truths)])


def outer_fold(config: TrainConfig, frames, outer_train: np.ndarray, inner: int, device, source: str):
    """The inner cross-validation on `outer_train`: its fold models, results and out-of-fold choice."""
    sub = frames.subset(outer_train)
    models, results = [], []
    for train_idx, val_idx in fold_indices(len(outer_train), inner, config.seed):
        data = TrainingData(sub.subset(train_idx), sub.subset(val_idx), source, "", np.zeros((1, 1), np.uint8))
        model, result = fit(config, data, device, None)
        models.append(model.cpu())
        results.append((result, data.val.masks()))
    choice = choose_postprocessing(torch.cat([r.best_val_probabilities for r, _ in results]),
                                   np.concatenate([m for _, m in results]))
    return models, [r for r, _ in results], choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cimat40_train"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--outer", type=int, default=4)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--image-size", type=int, default=TrainConfig().image_size)
    parser.add_argument("--no-tta", dest="tta", action="store_false",
                        help="score without test-time flips (coroseg predict's default is with them)")
    parser.add_argument("--init", choices=("auto", "none"), default="auto",
                        help="the start of every training (auto: the built-in one where it fits, as train)")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = TrainConfig(data=str(args.data), epochs=args.epochs, image_size=args.image_size, device=args.device,
                         tracking=False, init=args.init)
    leak_refused(config)
    frames = all_frames(config)
    names = frames.names
    pairs = {p.image.name: p for p in find_pairs(args.data)}
    started = time.perf_counter()
    scores: dict[str, list[dict]] = {"best fold": [], "ensemble": []}
    for k, (outer_train, held_out) in enumerate(fold_indices(len(names), args.outer, config.seed), 1):
        models, results, choice = outer_fold(config, frames, outer_train, args.inner, device, str(args.data))
        best = int(np.argmax([r.best_val_dice for r in results]))
        test = [pairs[names[i]] for i in held_out]
        test_frames, truths = [read_gray(p.image) for p in test], [load_mask(p.mask) for p in test]
        best_spec = ModelSpec.of_training(config, results[best].postprocessing.chosen)
        scores["best fold"].append(score(models[best], best_spec, device, test_frames, truths, args.tta))
        ensemble_spec = ModelSpec.of_training(config, choice.chosen, members=len(models))
        scores["ensemble"].append(score(Ensemble(models), ensemble_spec, device, test_frames, truths, args.tta))
        print(f"  outer fold {k}: {len(held_out)} held-out frames; best fold Dice "
              f"{scores['best fold'][-1]['dice']:.4f}, ensemble Dice {scores['ensemble'][-1]['dice']:.4f}",
              flush=True)
    seconds = time.perf_counter() - started
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nnested cross-validation on {args.data.name} ({len(names)} frames): {args.outer} outer folds x "
          f"{args.inner} inner folds, {args.epochs} epochs, {args.image_size} px, test-time flips "
          f"{'on' if args.tta else 'off'}, {name}, {seconds:.0f} s")
    print("| model | Dice | clDice | HD95 (px) |\n| --- | --- | --- | --- |")
    for label, scored in scores.items():
        print(f"| {label} | " + " | ".join(mean_sd([s[m] for s in scored], 4) for m in ("dice", "cldice", "hd95"))
              + " |")
    gain = [e["dice"] - b["dice"] for e, b in zip(scores["ensemble"], scores["best fold"])]
    print(f"\nensemble - best fold, Dice per outer fold: {', '.join(f'{g:+.4f}' for g in gain)}")


if __name__ == "__main__":
    main()
