"""Quality benchmark (not a test): K-fold cross-validation of a training recipe on real angiograms,
with and without synthetic pretraining. Prints Dice, clDice, HD95 (mean +- sd over folds) and wall time.

Each fold is trained as `coroseg train` trains on the fold's training frames (`as_coroseg_trains`): one split
of its own validation frames (`val_fraction`), or, where `--folds` asks for folds (auto: a small real data set),
its own folds and their ensemble; the best epochs, early stops and post-processing are chosen on those
validation frames, and the fold's held-out frames are used for scoring alone (choosing on them too would make
the scores optimistic). Its model
predicts them at their original size (as `coroseg predict` does) and is scored with coroseg's evaluation
metrics. The loop and predictor are driven directly (no MLflow), so it
runs on a bare GPU machine with torch, MONAI and kornia (bench/gpu.sh) as well as on a CPU:

    .venv/bin/python bench/quality_cv.py --data ../shared/data/cimat40_train --device cpu --epochs 20
    bash bench/gpu.sh  (see bench/README.md; runs bench/gpu_check.py) or python3 bench/quality_cv.py ... on the GPU

A recipe is the default configuration (what `coroseg train --data DIR` does, so starting from the built-in
weights arcade-v2 where they fit; --init none: random) with --epochs / --image-size / --batch-size / --loss /
--clahe overrides; pretraining trains the same family on synthetic frames first and
starts every fold from those weights (what `coroseg train --init` does).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from coroseg.config import TrainConfig, epoch_schedule, fold_count
from coroseg.data.dataset import TrainingData, fold_indices, load_training_data, split_indices
from coroseg.data.imageio import read_gray
from coroseg.data.pairs import find_pairs, load_mask
from coroseg.evaluation.metrics import image_metrics, mean_metrics
from coroseg.inference.model_loading import LoadedModel
from coroseg.inference.predictor import Predictor
from coroseg.model_spec import ModelSpec
from coroseg.models import Ensemble
from coroseg.training.initial_weights import BUILTIN, frames_seen, initial_weights, resolved_init
from coroseg.training.postprocess import choose_postprocessing
from coroseg.training.trainer import NoEvents, best_model, seed_everything, train


def fit(config: TrainConfig, data, device, init: dict | None, **train_options):
    """The best epoch's model (a CPU copy) and the training result; `init` None: the start `config.init` names
    (the default: coroseg's built-in weights where they fit, as `coroseg train`); `train_options` go to the loop."""
    if init is None:
        init = initial_weights(replace(config, init=resolved_init(config)))
    seed_everything(config.seed)
    model = ModelSpec.of_training(config).build()
    if init is not None:
        model.load_state_dict(init)
    result = train(config, data, model, device, NoEvents(), **train_options)
    return best_model(model, result), result


def as_trained(data: TrainingData, config: TrainConfig) -> TrainingData:
    """A fold as `coroseg train --folds 1` would use its training frames: its own validation split of them, where
    the best epoch, the early stop and the post-processing are chosen. The fold's held-out frames (`data.val`)
    are left for scoring alone: chosen on them too, the scores would be optimistic."""
    train_idx, val_idx = split_indices(len(data.train), config.val_fraction, config.seed)
    return replace(data, train=data.train.subset(train_idx), val=data.train.subset(val_idx))


def inner_folds(data: TrainingData, config: TrainConfig, folds: int) -> list[TrainingData]:
    """A fold's training frames split as `coroseg train --folds K` splits a data set (`data.val` untouched)."""
    return [replace(data, train=data.train.subset(t), val=data.train.subset(v))
            for t, v in fold_indices(len(data.train), folds, config.seed)]


@dataclass
class Trained:
    model: torch.nn.Module          # one network, or the Ensemble of a fold ensemble (CPU)
    spec: ModelSpec                 # with the post-processing chosen on the model's own validation frames
    members: list                   # (network, TrainResult) of each training: one, or one per fold
    splits: list                    # the TrainingData each member trained and chose on (its .val: validation)
    best_epoch: int                 # the single network's, or the folds' mean
    epochs_run: int                 # summed over the trainings


def as_coroseg_trains(config: TrainConfig, data: TrainingData, device, init: dict | None,
                      **train_options) -> Trained:
    """The model `coroseg train` makes of a fold's training frames (`data.train`) with this recipe: one split
    and its network, or, where `config.folds` asks for folds (auto: `fold_count`), that many folds and the
    ensemble of their networks, post-processed as chosen on their out-of-fold predictions (as
    training/run.py's cross-validation). The held-out frames (`data.val`) play no part."""
    folds = fold_count(config, len(data.train))
    epochs, patience = epoch_schedule(config, folds)
    config = replace(config, epochs=epochs, patience=patience)
    splits = [as_trained(data, config)] if folds == 1 else inner_folds(data, config, folds)
    members = [fit(config, split, device, init, **train_options) for split in splits]
    epochs_run = sum(len(result.history) for _, result in members)
    if folds == 1:
        (model, result), = members
        chosen = result.postprocessing.chosen if result.postprocessing else None
        return Trained(model, ModelSpec.of_training(config, chosen), members, splits, result.best_epoch, epochs_run)
    choice = choose_postprocessing(torch.cat([result.best_val_probabilities for _, result in members]),
                                   np.concatenate([split.val.masks() for split in splits]))
    return Trained(Ensemble([model for model, _ in members]),
                   ModelSpec.of_training(config, choice.chosen, members=folds), members, splits,
                   round(float(np.mean([result.best_epoch for _, result in members]))), epochs_run)


def seen_by_start(config: TrainConfig) -> bool:
    """Whether the built-in start this recipe takes (`--init auto`) was trained on some of its data set's frames:
    then its folds leak, and only a start pretrained inside each fold measures it (quality_sweep's pretrain_fold)."""
    name = resolved_init(config)
    return name in BUILTIN and frames_seen(config, name)[0] > 0


def leak_refused(config: TrainConfig) -> None:
    if seen_by_start(config):
        sys.exit(f"{config.data}: the built-in start {resolved_init(config)} was trained on these frames, so its "
                 "folds would leak; give --init none, or measure it with quality_sweep.py --levers pretrain_fold")


def pretrain(config: TrainConfig, device, count: int, epochs: int, source: str = "synthetic",
             **train_options) -> dict:
    """Weights trained from random ones for `epochs` on `count` synthetic frames, or on the real frames of the
    folder `source`."""
    if source == "synthetic":
        first = replace(config, data="synthetic", synthetic_count=count, epochs=epochs, folds=1,
                        batch_size=max(config.batch_size, 16), init=None)
    else:
        first = replace(config, data=source, data_format="auto", mask_classes=None, epochs=epochs, folds=1,
                        init=None)
    model, result = fit(first, load_training_data(first)[0], device, None, **train_options)
    what = f"{count} synthetic frames" if source == "synthetic" else source
    print(f"  pretraining: {what}, {epochs} epochs, val Dice {result.best_val_dice:.4f}", flush=True)
    return copy.deepcopy(model.state_dict())


def predicted(model, spec: ModelSpec, device, pairs_by_name, names, tta: bool) -> tuple[list, list[np.ndarray]]:
    """These frames predicted at their original size, as `coroseg predict` would with this model and spec (same
    preprocessing and chosen post-processing), and their masks."""
    frames = [read_gray(pairs_by_name[n].image) for n in names]
    loaded = LoadedModel(model.to(device).eval(), spec, "in-memory")
    return (Predictor(loaded, batch_size=8, tta=tta).predict(frames),
            [load_mask(pairs_by_name[n].mask) for n in names])


def score_fold(model, spec: ModelSpec, device, pairs_by_name, val_names, tta: bool) -> list[dict]:
    """The fold's held-out frames predicted (`predicted`) and scored inside their field of view."""
    predictions, truths = predicted(model, spec, device, pairs_by_name, val_names, tta)
    return [image_metrics(p.mask, t, p.fov) for p, t in zip(predictions, truths)]


def cross_validate(config: TrainConfig, outer: int, device,
                   init: dict | None) -> tuple[dict[bool, list[dict]], float]:
    """Per-fold mean metrics over `outer` folds, scored without (False) and with (True) flip test-time
    augmentation."""
    t0 = time.perf_counter()
    pairs_by_name = {p.image.name: p for p in find_pairs(config.data)}
    folds: dict[bool, list[dict]] = {False: [], True: []}
    for i, data in enumerate(load_training_data(replace(config, folds=outer)), 1):
        trained = as_coroseg_trains(config, data, device, init)
        for tta in folds:
            folds[tta].append(mean_metrics(score_fold(trained.model, trained.spec, device, pairs_by_name,
                                                      data.val.names, tta)))
        print(f"  fold {i}: dice {folds[False][-1]['dice']:.4f} cldice {folds[False][-1]['cldice']:.4f} "
              f"(with TTA {folds[True][-1]['dice']:.4f} / {folds[True][-1]['cldice']:.4f}; "
              f"{trained.spec.members} network(s))", flush=True)
    return folds, time.perf_counter() - t0


def mean_sd(values: list[float], digits: int = 3) -> str:
    """`mean ± sd` over folds (the value alone for one fold, "-" for none): the benches' one format."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cimat40_train"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--folds", type=int, default=5, help="outer folds: each scores its held-out frames")
    parser.add_argument("--epochs", type=int, nargs="+", default=[None],
                        help="one recipe per value (default: the default recipe's, auto)")
    parser.add_argument("--image-size", type=int, default=TrainConfig().image_size)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--loss", default=TrainConfig().loss)
    parser.add_argument("--clahe", action="store_true", help="train and predict with CLAHE")
    parser.add_argument("--pretrain-count", type=int, default=400, help="synthetic frames for pretraining")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--no-pretrain-runs", action="store_true", help="only the recipes without pretraining")
    parser.add_argument("--init", choices=("auto", "none"), default="auto",
                        help="the recipes' start without synthetic pretraining (auto: the built-in one, as train)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; data {args.data}", flush=True)
    base = TrainConfig(data=str(args.data), image_size=args.image_size,
                       batch_size=args.batch_size, loss=args.loss, clahe=args.clahe, device=args.device,
                       tracking=False, init=args.init)
    leak_refused(base)
    init = None if args.no_pretrain_runs else pretrain(base, device, args.pretrain_count, args.pretrain_epochs)
    rows = []
    for epochs in args.epochs:
        for weights, label in ((None, "no"), (init, "yes")):
            if label == "yes" and init is None:
                continue
            config = replace(base, epochs=epochs)
            print(f"recipe: {epochs or 'auto'} epochs, {args.image_size} px, batch {args.batch_size}, pretrained: {label}",
                  flush=True)
            folds, seconds = cross_validate(config, args.folds, device, weights)
            for tta, scored in folds.items():
                rows.append((epochs or "auto", label, "flips" if tta else "no",
                             *(mean_sd([fold[m] for fold in scored]) for m in ("dice", "cldice", "hd95")),
                             f"{seconds:.0f}"))
    print(f"\n{args.folds}-fold cross-validation on {args.data.name}, {name}, image size {args.image_size}, "
          f"batch {args.batch_size}, loss {args.loss}, CLAHE {'on' if args.clahe else 'off'}")
    print("| epochs | synthetic pretraining | test-time augmentation | Dice | clDice | HD95 (px) | wall s |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
