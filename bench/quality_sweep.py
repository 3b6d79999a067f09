"""Quality sweep (not a test): K-fold cross-validation of many training-recipe levers on real angiograms at once.
Prints one table of out-of-fold Dice, clDice, HD95 (mean +- sd over folds), with and without flip TTA, per
(data set, lever), and the training+scoring seconds per fold.

A lever is the default recipe (TrainConfig's defaults) with a few overrides (LEVERS below). Every (data set,
lever, fold) is one job; the jobs run in parallel worker processes sharing the one device (small networks leave
most of a GPU idle), each fold trained by the loop directly as `coroseg train` trains on the fold's training
frames (one split of its own, or on a small set its own folds and their ensemble, as `--folds auto`; the best
epochs and the post-processing are chosen on those validation frames: quality_cv.py's as_coroseg_trains)
and scored on its held-out frames at their original size as `coroseg predict` does (quality_cv.py's
score_fold). Jobs start fold-major
(every lever's fold 1, then fold 2, ...; "default" first), so a --max-seconds limit still leaves comparable
partial results. Synthetic pretraining (quality_cv.py's pretrain) runs once per distinct recipe, as a job of its
own, before the folds that start from it. results.json (in --out) is rewritten after every job.

    CPU smoke: PYTHONPATH=src .venv/bin/python bench/quality_sweep.py --device cpu --workers 2 --folds 2 \\
                 --epochs-scale 0.02 --image-size-cap 64 --levers default cldice pretrain \\
                 --pretrain-count 8 --pretrain-epochs 1 --out /tmp/sweep_smoke
    GPU:       PYTHONPATH=/tmp/site:src python3 bench/quality_sweep.py --max-seconds 240 --out /tmp/sweep \\
                 [--data DIR ...] [--compile no]   (4 workers; MONAI and kornia from the wheels of bench/gpu.sh)

--max-seconds stops the starting of jobs, not the running ones: a long lever (combo) started late still finishes.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_cv import (as_coroseg_trains, as_trained, fit, mean_sd, pretrain, score_fold,  # noqa: E402 - the bench's own
                        seen_by_start)

from coroseg.config import NATIVE, PRESETS, TrainConfig, epoch_schedule, fold_count, native_side  # noqa: E402
from coroseg.data.dataset import load_training_data  # noqa: E402
from coroseg.data.imageio import read_gray  # noqa: E402
from coroseg.data.pairs import find_pairs  # noqa: E402
from coroseg.errors import first_line  # noqa: E402
from coroseg.evaluation.metrics import mean_metrics  # noqa: E402
from coroseg.models import family  # noqa: E402
from coroseg.training.initial_weights import resolved_init  # noqa: E402

# NATIVE: the data set's frame side rounded up to the network's divisor (config.native_side): 304 for CIMAT
# (300 px frames), 512 for ARCADE (512 px). A lever that changes nothing on a data set (e.g. "native" on 256 px
# frames) is left out there.
# One split as each network of the default fold ensemble trains (80 epochs, patience 25): the single_* levers
# change one thing on it, a screen before the 25 trainings of a fold-ensemble measure.
SINGLE = {"folds": 1, "epochs": 80, "patience": 25}
INIT_MODEL = "<--init-model>"             # stands for the --init-model argument
LEVERS: dict[str, dict] = {       # TrainConfig overrides; "pretrain": every fold starts from pretrained weights
    "default": {},
    "single": {"folds": 1},                   # one split where the default trains a fold ensemble (small sets)
    "single_epochs80": SINGLE,                # one split, the default before --folds auto
    "width32": {"width": 32},
    "epochs160": {"epochs": 160, "patience": 50},
    "native": {"image_size": NATIVE},
    "best": PRESETS["best"],                 # coroseg train --preset best's values (none now: the default)
    "native_epochs160": {"image_size": NATIVE, "epochs": 160, "patience": 50},   # the preset best before arcade-v2
    "cldice": {"loss": "dice_cldice"},
    "xray": {"xray_augment": True},           # X-ray physics intensity augmentation (data/augment.py)
    "pretrain": {"pretrain": True},
    "pretrain_real": {"pretrain": "real"},   # from --pretrain-data's real frames (another data set)
    "pretrain_real_epochs160": {"pretrain": "real", "epochs": 160, "patience": 50},
    "pretrain_real_lr1e-3": {"pretrain": "real", "learning_rate": 1e-3},
    "pretrain_fold": {"pretrain": "fold"},    # pretrained on the fold's own training frames (fold_job)
    "pretrain_fold_epochs160": {"pretrain": "fold", "epochs": 160, "patience": 50},
    # made as arcade-v2 was: the fold's own pretraining, then the recipe (one split) on the fold's frames from it
    "pretrain_fold_twice": {"pretrain": "fold_twice"},
    "scratch": {"init": None},                # random start (the default before the built-in starts)
    "lr1e-3": {"learning_rate": 1e-3},
    "nostop": {"patience": 10_000},           # no early stop: every epoch of the schedule, best one kept
    "combo": {"width": 32, "epochs": 160, "patience": 50, "image_size": NATIVE},
    "ema5": {"ema_epochs": 5.0},              # a moving average of the weights, time constant 5 epochs
    "single_ema2": {**SINGLE, "ema_epochs": 2.0},
    "single_ema5": {**SINGLE, "ema_epochs": 5.0},
    "single_dice": {**SINGLE, "loss": "dice"},
    "single_wd1e-2": {**SINGLE, "weight_decay": 1e-2},
    "single_batch8": {**SINGLE, "batch_size": 8},
    "single_batch2": {**SINGLE, "batch_size": 2},
    "batch2": {"batch_size": 2},
    # another start: the model --init-model names (e.g. a coroseg train run's pytorch_model folder)
    "single_init_model": {**SINGLE, "init": INIT_MODEL},
    "init_model": {"init": INIT_MODEL},
    "single_size384": {**SINGLE, "image_size": 384},
    # networks against each other, all from random weights (the built-in start exists for the default one only)
    "single_scratch": {**SINGLE, "init": None},
    "single_scratch_width32": {**SINGLE, "init": None, "width": 32},
    "single_scratch_unetpp": {**SINGLE, "init": None, "model_family": "unetpp"},
    "single_scratch_attention": {**SINGLE, "init": None, "model_family": "attention_unet"},
    "single_scratch_dynunet": {**SINGLE, "init": None, "model_family": "dynunet"},
    "single_scratch_dynunet_ds": {**SINGLE, "init": None, "model_family": "dynunet", "deep_supervision": True},
    # dynunet from its own ARCADE start (--pretrain-data, --pretrain-epochs 60: as arcade-v1 was made for unet)
    "single_dynunet_pretrain_real": {**SINGLE, "model_family": "dynunet", "pretrain": "real"},
    # dynunet from a start --init-model names (one made as arcade-v2 was, for dynunet), and its fold ensemble
    "single_dynunet_init_model": {**SINGLE, "model_family": "dynunet", "init": INIT_MODEL},
    "dynunet_init_model": {"model_family": "dynunet", "init": INIT_MODEL},
}
DATA_FIELDS = ("data", "data_format", "mask_classes", "synthetic_count", "synthetic_size", "val_fraction", "folds",
               "image_size", "field_of_view", "clahe", "seed")   # what load_training_data depends on
METRICS = ("dice", "cldice", "hd95")
# A fold's pretraining (pretrain_fold) is arcade-v1's recipe: the default of its time, 80 epochs (replaced by
# --pretrain-epochs) with patience 25.
PRETRAIN_SHARED = {"epochs": 80, "patience": 25, "learning_rate": TrainConfig().learning_rate}
_cache: dict = {}                  # per worker: folds per data config, pairs per folder, pretrained weights


def _cached(key, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    _die_with(parent)


def _die_with(parent: int) -> None:
    """A worker is sent SIGTERM when the sweep ends, even killed (Linux's parent-death signal): a training left
    running would take the CPU or GPU from whatever runs next. Elsewhere there is no such signal: nothing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)    # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                        # the sweep ended before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def _train_options() -> dict:
    import inspect

    from coroseg.training.trainer import train
    return {"epoch_vessel_metrics": False} if "epoch_vessel_metrics" in inspect.signature(train).parameters else {}


def pretrain_job(config: TrainConfig, count: int, epochs: int, source: str, path: str) -> dict:
    t0 = time.perf_counter()
    torch.save(pretrain(config, torch.device(config.device), count, epochs, source, **_train_options()), path)
    return {"path": path, "seconds": time.perf_counter() - t0}


def fold_job(config: TrainConfig, outer: int, fold: int, init_path: str | None, fold_pretrain_epochs: int = 0,
             fold_pretrain_path: str | None = None, twice: bool = False, train_frames: int | None = None) -> dict:
    """One fold trained and scored; `fold_pretrain_epochs` > 0 first trains the default recipe that long on the
    fold's own training frames and starts from its weights (the out-of-fold measure of starting a data set's
    training from weights pretrained on that same set), kept in `fold_pretrain_path` for later sweeps. `twice`:
    then the recipe on one split of those frames from them, as arcade-v2 was made from arcade-v1 (kept too).
    `train_frames`: only that many of the fold's training frames (a seeded draw; its held-out frames unchanged),
    a point of a learning curve."""
    device = torch.device(config.device)
    split = replace(config, folds=outer)            # the outer folds; config.folds is the recipe's own (auto)
    data = _cached(tuple(getattr(split, f) for f in DATA_FIELDS), lambda: load_training_data(split))[fold]
    if train_frames is not None and train_frames < len(data.train):
        kept = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(config.seed))[:train_frames]
        data = replace(data, train=data.train.subset(np.sort(kept.numpy())))
    pairs = _cached(config.data, lambda: {p.image.name: p for p in find_pairs(config.data)})
    init = None if init_path is None else _cached(init_path, lambda: torch.load(init_path, map_location="cpu"))
    t0 = time.perf_counter()
    if fold_pretrain_epochs:
        first = _pretraining(config, fold_pretrain_epochs)
        init = _kept_fit(first, as_trained(data, first), device, None, fold_pretrain_path)
        if twice:                                   # one network of the recipe's schedule, as for ARCADE's 200
            then = fold_pretrain_path and f"{fold_pretrain_path.removesuffix('.pt')}_then_{_digest(config)}.pt"
            init = _kept_fit(config, as_trained(data, config), device, init, then)
    trained = as_coroseg_trains(config, data, device, init, **_train_options())   # data.val: held out, scored
    scores = {tta: mean_metrics(score_fold(trained.model, trained.spec, device, pairs, data.val.names, tta == "yes"))
              for tta in ("no", "yes")}
    return {"scores": {tta: {m: s[m] for m in METRICS} for tta, s in scores.items()},
            "seconds": time.perf_counter() - t0, "best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run,
            "networks": trained.spec.members}


def _kept_fit(config: TrainConfig, trained, device: torch.device, init: dict | None, path: str | None) -> dict:
    """The best weights of `config` fitted from `init`: read from `path` when an earlier sweep made them, else
    trained (and kept)."""
    if path and Path(path).is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    state = copy.deepcopy(fit(config, trained, device, init, **_train_options())[0].state_dict())
    if path:
        torch.save(state, path + ".tmp")
        Path(path + ".tmp").replace(path)
    return state


def _digest(config: TrainConfig) -> str:
    """Names a fold's kept weights by what they depend on: the data, the recipe's fit, its epochs."""
    keep = {f: getattr(config, f) for f in (*DATA_FIELDS, *PRETRAIN_SHARED, "width", "model_family", "loss",
                                             "batch_size", "weight_decay", "device")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pretraining(config: TrainConfig, epochs: int) -> TrainConfig:
    """A fold's pretraining: the shared pretraining recipe, `epochs` long, from random weights."""
    return replace(config, **{**PRETRAIN_SHARED, "epochs": epochs, "init": None})


def fold_pretrain_path(weights_dir: Path, config: TrainConfig, epochs: int, fold: int) -> str:
    """Named by what the fold's pretraining depends on: the data, the default recipe's fit, its epochs."""
    return str(weights_dir / f"fold_pretrained_{_digest(_pretraining(config, epochs))}_{fold + 1}.pt")


def folder_side(folder: Path) -> int:
    return native_side(read_gray(find_pairs(folder)[0].image).shape, family(TrainConfig().model_family).divisor)


def plan(args) -> tuple[list[dict], list[dict], list[str]]:
    """The pretraining jobs, the fold jobs in start order, and notes on levers left out."""
    known = {f.name for f in fields(TrainConfig)}
    extra = {} if args.compile is None else {"compile": args.compile}
    weights_dir = args.out or Path(tempfile.mkdtemp(prefix="sweep_"))
    pretrains: dict[str, dict] = {}
    folds, notes = [], []
    for folder in args.data:
        native = folder_side(folder)
        base = TrainConfig(data=str(folder), device=args.device, tracking=False, **extra)

        count = len(find_pairs(folder))
        trained_on = count - -(-count // args.folds)    # the fewest training frames of an outer fold

        def sized(config: TrainConfig) -> TrainConfig:   # the schedule as coroseg train takes it for those frames
            epochs, patience = epoch_schedule(config, fold_count(config, trained_on))
            return replace(config, epochs=max(1, round(epochs * args.epochs_scale)), patience=patience,
                           image_size=min(config.image_size, args.image_size_cap or config.image_size))
        given = {NATIVE: native, INIT_MODEL: args.init_model}      # the levers' placeholders, resolved
        for lever in args.levers:
            resolved = {k: given.get(v, v) if isinstance(v, str) else v for k, v in LEVERS[lever].items()}
            if LEVERS[lever].get("init") == INIT_MODEL and args.init_model is None:
                notes.append(f"{folder.name} {lever}: left out, it needs --init-model")
                continue
            overrides = dict(resolved)
            wants_pretrain = overrides.pop("pretrain", False)
            if unknown := sorted(set(overrides) - known):
                notes.append(f"{folder.name} {lever}: left out, TrainConfig has no {', '.join(unknown)}")
                continue
            config = sized(replace(base, **overrides))
            if lever != "default" and not wants_pretrain and config == sized(base):
                notes.append(f"{folder.name} {lever}: left out, the same as the default here")
                continue
            if not wants_pretrain and _cached(("seen", config.data, config.init), lambda: seen_by_start(config)):
                notes.append(f"{folder.name} {lever}: left out, its start ({config.init}: {resolved_init(config)}) "
                             "was trained on these frames (its folds leak); pretrain_fold measures it honestly")
                continue
            init = None
            in_fold = wants_pretrain in ("fold", "fold_twice")
            if wants_pretrain and not in_fold:
                source = "synthetic" if wants_pretrain is True else str(args.pretrain_data)
                if source != "synthetic" and args.pretrain_data.resolve() == folder.resolve():
                    notes.append(f"{folder.name} {lever}: left out, --pretrain-data is this data set (its folds leak)")
                    continue
                # Pretraining follows the default recipe: levers that change only fine-tuning share its weights.
                first = replace(config, **PRETRAIN_SHARED, init=None)
                key = json.dumps(asdict(replace(first, data=source, folds=1)), sort_keys=True)
                key += f" {args.pretrain_count} {args.pretrain_epochs}"
                if key not in pretrains:           # named by the key: a later sweep into --out reuses the weights
                    name = hashlib.sha256(key.encode()).hexdigest()[:16]
                    pretrains[key] = {"config": first, "lever": lever, "dataset": folder.name, "source": source,
                                      "path": str(weights_dir / f"pretrained_{name}.pt")}
                init = pretrains[key]["path"]
            text = ", ".join(f"{k}={v}" for k, v in resolved.items())
            for fold in args.only_folds or range(args.folds):
                fold_pretrain = args.pretrain_epochs if in_fold else 0
                folds.append({"dataset": folder.name, "lever": lever, "overrides": text or "-", "fold": fold,
                              "config": config, "init": init, "fold_pretrain": fold_pretrain,
                              "twice": wants_pretrain == "fold_twice",
                              "fold_pretrain_path": fold_pretrain_path(weights_dir, replace(config, folds=args.folds),
                                                                       fold_pretrain, fold)
                              if fold_pretrain else None})
    rank = {lever: i for i, lever in enumerate(args.levers)}
    folds.sort(key=lambda j: (j["fold"], j["lever"] != "default", rank[j["lever"]]))
    return list(pretrains.values()), folds, notes


def table(header: str, jobs: list[dict], records: list[dict], folds: int) -> str:
    lines = [header, "", "| data | lever | overrides | TTA | folds | Dice | clDice | HD95 (px) | s/fold |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = list(dict.fromkeys((j["dataset"], j["lever"], j["overrides"]) for j in jobs))
    datasets = list(dict.fromkeys(row[0] for row in rows))
    for dataset, lever, overrides in sorted(rows, key=lambda row: datasets.index(row[0])):
        mine = [r for r in records if (r["dataset"], r["lever"]) == (dataset, lever)]
        done, failed = [r for r in mine if "scores" in r], len([r for r in mine if "error" in r])
        for tta in ("no", "yes"):
            cells = [mean_sd([r["scores"][tta][m] for r in done], 4 if m != "hd95" else 1) for m in METRICS]
            cells.append(f"{statistics.mean(r['seconds'] for r in done):.0f}" if done else "-")
            count = f"{len(done)}/{folds}" + (f" ({failed} failed)" if failed else "")
            lines.append(f"| {dataset} | {lever} | {overrides} | {tta} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+",
                        default=[Path("../shared/data/cimat40_train"), Path("../shared/data/arcade_syntax_val200")])
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=lambda v: int(v) - 1, nargs="+", metavar="K",
                        help="run only these folds (1-based) of the --folds: a long sweep in parts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, help="parallel trainings (default: 4 on CUDA, 1 on a CPU)")
    parser.add_argument("--max-seconds", type=float, default=float("inf"), help="start no job after this")
    parser.add_argument("--out", type=Path, help="folder for results.json (after every job) and table.md")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every lever's epochs (min 1)")
    parser.add_argument("--image-size-cap", type=int, help="cap every lever's image size (smoke runs)")
    parser.add_argument("--compile", choices=("auto", "yes", "no"), help="override the recipe's torch.compile")
    parser.add_argument("--pretrain-count", type=int, default=400, help="synthetic frames for pretraining")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--pretrain-data", type=Path, default=Path("../shared/data/arcade_syntax_val200"),
                        help="real frames of another data set for the pretrain_real lever")
    parser.add_argument("--train-frames", type=int, help="train on only this many of each outer fold's training "
                        "frames (a seeded draw; the held-out frames unchanged): a learning curve")
    parser.add_argument("--init-model", help="the start of the init_model levers: a model URI or folder")
    args = parser.parse_args()
    started = time.perf_counter()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")          # the workers' prints too
    # 12 workers on one H200 made a CIMAT fold take ~75 s (the processes share the GPU without MPS; 4 untried).
    workers = args.workers or (4 if args.device.startswith("cuda") else 1)
    threads = max(1, (os.cpu_count() or 1) // workers)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    header = (f"{args.folds}-fold cross-validation; device: {name}; torch {torch.__version__}; {workers} workers x "
              f"{threads} threads; epochs x {args.epochs_scale}, image size cap {args.image_size_cap}"
              + (f"; {args.train_frames} training frames per outer fold" if args.train_frames else ""))
    print(header, flush=True)
    pretrains, jobs, notes = plan(args)
    for note in notes:
        print(f"  {note}", flush=True)
    records: list[dict] = []
    made: dict[str, bool] = {}                        # pretrained weights file -> made (False: failed)
    made.update({p["path"]: True for p in pretrains if Path(p["path"]).is_file()})
    queue = [{**p, "fold": None, "init": None} for p in pretrains if p["path"] not in made] + jobs

    def finish(job: dict, outcome: dict | None, error: BaseException | None) -> None:
        label = f"[{time.perf_counter() - started:5.0f}s] {job['dataset']} {job['lever']} " + (
            "pretraining" if job["fold"] is None else f"fold {job['fold'] + 1}/{args.folds}")
        error_text = error and f"FAILED {type(error).__name__}: {first_line(error)}"
        if job["fold"] is None:
            made[job["path"]] = error is None
            print(f"{label}: " + (error_text or f"{outcome['seconds']:.0f} s"), flush=True)
            return
        record = {k: job[k] for k in ("dataset", "lever", "overrides", "fold")}
        records.append(record | (outcome or {"error": error_text}))
        if outcome:
            no, yes = outcome["scores"]["no"], outcome["scores"]["yes"]
            error_text = (f"Dice {no['dice']:.4f} clDice {no['cldice']:.4f} HD95 {no['hd95']:.1f} | TTA "
                          f"{yes['dice']:.4f} {yes['cldice']:.4f} {yes['hd95']:.1f} | {outcome['networks']} "
                          f"network(s), best epoch {outcome['best_epoch']} (mean), {outcome['epochs_run']} epochs "
                          f"run, {outcome['seconds']:.0f} s "
                          f"({len(records)}/{len(jobs)})")
        print(f"{label}: {error_text}", flush=True)
        if args.out:                                  # the results so far, replaced at once
            state = {"header": header, "notes": notes, "records": records, "planned": len(jobs)}
            (args.out / "results.json.tmp").write_text(json.dumps(state, indent=1))
            (args.out / "results.json.tmp").replace(args.out / "results.json")

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads, os.getpid()))

    pool, running = new_pool(), {}
    while queue or running:
        for job in [j for j in queue if made.get(j["init"]) is False]:
            queue.remove(job)
            finish(job, None, RuntimeError("its pretraining failed"))
        while len(running) < workers and time.perf_counter() - started < args.max_seconds:
            job = next((j for j in queue if j["init"] is None or made.get(j["init"])), None)
            if job is None:
                break
            queue.remove(job)
            running[pool.submit(pretrain_job, job["config"], args.pretrain_count, args.pretrain_epochs,
                                job["source"], job["path"])
                    if job["fold"] is None else pool.submit(fold_job, job["config"], args.folds, job["fold"],
                                                           job["init"], job["fold_pretrain"],
                                                           job["fold_pretrain_path"], job["twice"],
                                                           args.train_frames)] = job
        if not running:
            break
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            finish(running.pop(future), None if future.exception() else future.result(), future.exception())
        if any(isinstance(f.exception(), BrokenProcessPool) for f in done):   # a worker died (killed, out of memory)
            pool.shutdown(wait=False, cancel_futures=True)
            for job in running.values():
                finish(job, None, RuntimeError("worker pool broken"))
            pool, running = new_pool(), {}
    pool.shutdown(wait=True, cancel_futures=True)
    if queue:
        print(f"time limit: {len(queue)} jobs not started", flush=True)
    text = "\n".join([table(header, jobs, records, args.folds), *(f"- {note}" for note in notes)])
    print("\n" + text, flush=True)
    if args.out:
        (args.out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
