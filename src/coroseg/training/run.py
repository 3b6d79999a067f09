"""`coroseg train`: check inputs, then train with the run recorded locally and in MLflow."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from coroseg.config import TrainConfig, epoch_schedule, to_yaml
from coroseg.data.dataset import TrainingData, load_training_data
from coroseg.model_spec import ModelSpec
from coroseg.models import Ensemble, architecture_of
from coroseg.tracking import layout
from coroseg.tracking.base import Tracker, make_tracker, run_status
from coroseg.tracking.environment import environment, resolve_device
from coroseg.tracking.model_store import run_model_uri
from coroseg.tracking.record import RunRecord, markdown_rows, markdown_table, new_record_dir, to_csv
from coroseg.training import distributed
from coroseg.training.checkpoint import weights_bytes
from coroseg.training.distributed import SINGLE, World
from coroseg.training.initial_weights import initial_weights, resolved_init, start_notes
from coroseg.training.postprocess import choose_postprocessing
from coroseg.training.resume import Resume, check_data, finished, run_id_of
from coroseg.training.state import TrainingState, load_state
from coroseg.training.signals import StopSignals
from coroseg.training.training_record import TrainingRecord, registry_tags, resolved_config, run_params
from coroseg.training.trainer import (EpochResult, NoEvents, TrainingInterrupted, best_model, result_of,
                                     seed_everything, train)

log = logging.getLogger("coroseg")


@dataclass
class TrainingOutcome:
    run_id: str | None
    record_dir: Path
    model_uri: str
    best_val_dice: float
    tracking_failed: bool
    history: list[EpochResult]
    wall_seconds: float                 # the whole call: data, run start, loop, record, model
    cross_validation: dict[str, float] | None = None   # mean and sd over folds, ensemble out of fold; folds > 1
    best: torch.nn.Module | None = None                # the best epoch's network (CPU): a fold's, for the ensemble
    val_probabilities: torch.Tensor | None = None      # its validation probabilities, (N,S,S) uint8 steps
    val_masks: np.ndarray | None = None                # (N,S,S) bool
    rank: int = 0                                      # under torchrun: only rank 0's outcome is a run's


def _default_run_name(config: TrainConfig) -> str:
    return f"{config.model_family}-{time.strftime('%Y%m%d-%H%M%S')}"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def _initial_model(config: TrainConfig, init: dict[str, torch.Tensor] | None):
    seed_everything(config.seed)                      # the initial weights too depend on the seed
    model = ModelSpec.of_training(config).build()
    if init is not None:
        model.load_state_dict(init)
    return model


def _train_beside(config: TrainConfig, data: TrainingData, device: torch.device, world: World,
                  init: dict[str, torch.Tensor] | None, resume: Resume | None) -> TrainingOutcome:
    """A rank other than 0 under torchrun: the same training, its share of the frames, no record."""
    started = time.perf_counter()
    logging.getLogger("coroseg").setLevel(logging.WARNING)      # rank 0 prints the epochs
    model = _initial_model(config, init)
    with StopSignals() as stop:
        result = train(config, data, model, device, NoEvents(), resume.state if resume else None, stop, world=world)
    return TrainingOutcome(None, Path(), "", result.best_val_dice, False, result.history,
                           time.perf_counter() - started, rank=world.rank)


def _train_split(config: TrainConfig, data: TrainingData, device: torch.device, env: dict, tracker: Tracker,
                 record_dir: Path, init: dict[str, torch.Tensor] | None = None,
                 resume: Resume | None = None, world: World = SINGLE,
                 tags: dict[str, str] | None = None) -> TrainingOutcome:
    """One training run (the whole job, or one cross-validation fold) with its complete record; with `resume`,
    the rest of a run that was stopped. Under torchrun, rank 0's part (the others: `_train_beside`)."""
    started = time.perf_counter()
    model = _initial_model(config, init)
    session = TrainingRecord(RunRecord(record_dir, tracker), config, data, env, model, resumed=resume is not None,
                             world_size=world.size, tags=tags)
    try:
        with run_status(session.close):
            session.begin(resume.run_id if resume else None)
            log.info("training %s on %s: %d train / %d val frames of %s px; local record %s",
                     config.model_family, device, len(data.train), len(data.val), config.image_size, record_dir)
            with StopSignals() as stop:
                result = train(config, data, model, device, session, resume.state if resume else None, stop,
                               world=world)
                if stop() is not None:                    # asked while the last epoch was recorded
                    raise TrainingInterrupted(stop())
            best = best_model(model, result)
            session.end(result, best)
    except TrainingInterrupted as stopped:
        stopped.record_dir, stopped.run_id = record_dir, tracker.run_id    # what the resume command needs
        raise
    return TrainingOutcome(
        run_id=tracker.run_id,
        record_dir=record_dir,
        model_uri=tracker.model_uri,
        best_val_dice=result.best_val_dice,
        tracking_failed=tracker.failed,
        history=result.history,
        wall_seconds=time.perf_counter() - started,
        best=best,
        val_probabilities=result.best_val_probabilities,
        val_masks=data.val.masks(),
    )


def _fold_row(fold: int, outcome: TrainingOutcome) -> dict:
    best = max(outcome.history, key=lambda e: e.val_dice)
    return {"fold": fold, "run_id": outcome.run_id, "best_epoch": best.epoch, "best_val_dice": best.val_dice,
            "val_loss_at_best": best.val_loss, "epochs": len(outcome.history), "model_uri": outcome.model_uri}


def _cv_summary(rows: list[dict]) -> dict[str, float]:
    """Mean and sample sd over folds of every validation metric (taken at each fold's best epoch)."""
    summary = {}
    for name in ("best_val_dice", "val_loss_at_best"):
        values = np.array([r[name] for r in rows], dtype=float)
        summary[f"cv_{name}_mean"] = float(values.mean())
        summary[f"cv_{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def _cross_validate(config: TrainConfig, folds: list[TrainingData], device: torch.device, env: dict,
                    tracker: Tracker, record_dir: Path, init: dict[str, torch.Tensor] | None,
                    tags: dict[str, str] | None = None, resume: Resume | None = None) -> TrainingOutcome:
    """A parent run holding the mean and sd over folds and the folds' ensemble; each fold is a complete nested
    training run. With `resume`, the rest of a stopped one: finished folds are taken as they are, a stopped
    fold carries on from its last epoch, the others train."""
    started = time.perf_counter()
    record = RunRecord(record_dir, tracker)
    run_id = resume.run_id if resume else None
    tracker.start(config.run_name, {**layout.TRAINING_TAGS, "cross_validation": f"{len(folds)}-fold", **(tags or {})},
                  resume_run_id=run_id)
    try:
        with run_status(tracker.finish):
            if run_id is None:
                tracker.log_params(run_params(config, env))
                record.write_text("config", "config.yaml", to_yaml(resolved_config(config)))
                record.write_json("config", "data.json", {"source": folds[0].source, "digest_sha256": folds[0].digest,
                                                          "folds": len(folds)})
            outcomes = [_fold(config, i, len(folds), data, device, env, tracker.child(), record_dir, init,
                              resume is not None)
                        for i, data in enumerate(folds, 1)]
            rows = [_fold_row(i, o) for i, o in enumerate(outcomes, 1)]
            summary = _cv_summary(rows)
            tracker.log_metrics(summary)
            summary.update(_log_ensemble(config, folds, outcomes, record, tracker))
            record.write_text("summary", "cross_validation.csv", to_csv(rows))
            record.write_json("summary", "cross_validation.json", {**summary, "folds": rows})
            record.write_text("summary", "cross_validation.md", _cv_markdown(summary, rows))
    except TrainingInterrupted as stopped:
        stopped.record_dir, stopped.run_id = record_dir, tracker.run_id   # the parent resumes, its folds with it
        raise
    best = max(outcomes, key=lambda o: o.best_val_dice)
    log.info("cross-validation: best_val_dice %.4f +- %.4f over %d folds", summary["cv_best_val_dice_mean"],
             summary["cv_best_val_dice_std"], len(folds))
    return replace(best, run_id=tracker.run_id, record_dir=record_dir, tracking_failed=tracker.failed,
                   wall_seconds=time.perf_counter() - started, cross_validation=summary,
                   model_uri=tracker.model_uri)


def _fold(config: TrainConfig, fold: int, count: int, data: TrainingData, device: torch.device, env: dict,
          tracker: Tracker, parent_dir: Path, init: dict[str, torch.Tensor] | None,
          resuming: bool) -> TrainingOutcome:
    """Fold `fold` (1-based) as a nested run; when resuming, a finished fold is read back, a stopped one goes on."""
    config = replace(config, run_name=f"{config.run_name}-fold{fold}", register=None)   # the ensemble is registered
    record_dir = layout.fold_record_dir(parent_dir, fold)
    state = load_state(record_dir) if resuming else None
    if state is not None and finished(record_dir):
        log.info("fold %d/%d: finished before (best val_dice %.4f at epoch %d)", fold, count, state.best_val_dice,
                 state.best_epoch)
        return _finished_fold(config, data, record_dir, state)
    log.info("fold %d/%d", fold, count)
    carry_on = None if state is None else Resume(record_dir, state, data.digest, run_id_of(record_dir))
    return _train_split(config, data, device, env, tracker, record_dir, init, resume=carry_on)


def _finished_fold(config: TrainConfig, data: TrainingData, record_dir: Path, state: TrainingState) -> TrainingOutcome:
    """A fold that ended before its cross-validation run was stopped: its best network and validation
    probabilities, from its saved final state."""
    result = result_of(state)
    best = ModelSpec.of_training(config).build()
    best.load_state_dict(result.best_state)
    run_id = run_id_of(record_dir)
    return TrainingOutcome(run_id=run_id, record_dir=record_dir,
                           model_uri=run_model_uri(run_id) if run_id else str(record_dir / layout.MODEL_NAME),
                           best_val_dice=result.best_val_dice, tracking_failed=False,
                           history=result.history, wall_seconds=0.0, best=best.eval(),
                           val_probabilities=result.best_val_probabilities, val_masks=data.val.masks())


def _log_ensemble(config: TrainConfig, folds: list[TrainingData], outcomes: list[TrainingOutcome],
                  record: RunRecord, tracker: Tracker) -> dict[str, float]:
    """The parent run's model: the mean of the folds' networks, post-processed as chosen on the out-of-fold
    predictions (every frame predicted by the fold model that did not train on it); their Dice is returned."""
    choice = choose_postprocessing(torch.cat([o.val_probabilities for o in outcomes]),
                                   np.concatenate([o.val_masks for o in outcomes]))
    log.info("ensemble of %d folds: post-processing chosen on out-of-fold predictions: threshold %.2f, min "
             "component %.4f; out-of-fold val_dice %.4f -> %.4f", len(outcomes), choice.chosen.threshold,
             choice.chosen.min_component_fraction, choice.val_dice_before, choice.val_dice_after)
    ensemble = Ensemble([o.best for o in outcomes])
    weights = record.write_bytes("final_weights", layout.WEIGHTS_FILE, weights_bytes(ensemble.state_dict()))
    spec = ModelSpec.of_training(config, choice.chosen, members=len(outcomes))
    out_of_fold = {"cv_oof_val_dice": choice.val_dice_before, "cv_oof_val_dice_postprocessed": choice.val_dice_after}
    tracker.log_model(weights, spec.to_metadata(), folds[0].example[None],
                      metrics={**out_of_fold, "chosen_threshold": choice.chosen.threshold,
                               "chosen_min_component_fraction": choice.chosen.min_component_fraction})
    if config.register:           # judged by its out-of-fold Dice: every frame scored by a model that never saw it
        tracker.register_model(config.register, registry_tags(config, choice.val_dice_after, folds[0].digest))
    return out_of_fold


def _cv_markdown(summary: dict[str, float], rows: list[dict]) -> str:
    table = markdown_rows(rows, ["fold", "best_epoch", "best_val_dice", "val_loss_at_best", "run_id"])
    return "# Cross-validation\n\n" + markdown_table(summary) + "\n## Folds\n\n" + table


def _world(config: TrainConfig) -> tuple[World, torch.device]:
    """The launcher's world (one process without torchrun) and this process's device, after checks."""
    world = distributed.world_of_launcher()
    device = resolve_device(config.device)
    if not world.distributed:
        return world, device
    from coroseg.errors import InputError

    if config.folds is None:
        config.folds = 1              # auto under torchrun: one split (cross-validation runs in one process)
    if config.folds > 1:
        raise InputError(f"--folds {config.folds} under torchrun: cross-validation runs in one process; "
                         "train each recipe with torchrun without --folds")
    return world, distributed.join(world, device)


def _check_world(data: TrainingData, world: World) -> None:
    if world.distributed and min(len(data.train), len(data.val)) < world.size:
        from coroseg.errors import InputError

        raise InputError(f"{data.source}: {len(data.train)} training and {len(data.val)} validation frames cannot "
                         f"be shared by {world.size} processes (each needs one of both)")


def resume_training(config: TrainConfig, resume: Resume) -> TrainingOutcome:
    """The rest of a stopped run, into its own record and MLflow run (a cross-validation run: into its parent
    run and its folds' runs). Under torchrun every rank reads the record (it must be on a file system they all
    see)."""
    world, device = _world(config)
    splits = distributed.main_first(world, lambda: load_training_data(config))
    check_data(resume, splits[0].digest)
    if resume.state is None:
        tracker = make_tracker(config.tracking, config.tracking_uri, config.experiment, resume.record_dir,
                               config.system_metrics)
        return _cross_validate(config, splits, device, environment(device), tracker, resume.record_dir,
                               initial_weights(config, []), resume=resume)
    _check_world(splits[0], world)
    if not world.main:
        return _train_beside(config, splits[0], device, world, None, resume)
    tracker = make_tracker(config.tracking, config.tracking_uri, config.experiment, resume.record_dir,
                           config.system_metrics)
    return _train_split(config, splits[0], device, environment(device), tracker, resume.record_dir,
                        resume=resume, world=world)


def run_training(config: TrainConfig, tags: dict[str, str] | None = None,
                 check: Callable[[TrainingData], None] | None = None) -> TrainingOutcome:
    """Train (one run, or cross-validation with --folds), under torchrun too. `tags` go on the new run beside
    the training tags; `check` may refuse the data once read, before any run is created."""
    # an unknown family, or deep supervision asked of one without it: the error before anything else
    architecture_of(config.model_family, deep_supervision=config.deep_supervision)
    world, device = _world(config)
    asked, config.init = config.init, resolved_init(config)   # recorded as taken: a built-in name, a URI or None
    notes: list[tuple[int, str]] = []                 # said once the data is known good: errors stay one line
    init = initial_weights(config, notes)             # bad input: error before any run is created
    notes = notes + start_notes(config, asked) if world.main else []
    splits = distributed.main_first(world, lambda: load_training_data(config))
    config.folds = len(splits)                        # recorded as taken (auto: config.fold_count), and so
    config.epochs, config.patience = epoch_schedule(config, config.folds)   # is the schedule
    if check is not None:
        check(splits[0])
    _check_world(splits[0], world)
    if not world.main:
        return _train_beside(config, splits[0], device, world, init, None)
    for level, note in notes:
        log.log(level, "%s", note)
    record_dir = new_record_dir(config.output_dir, _safe_name(config.run_name or config.model_family))
    config.run_name = config.run_name or _default_run_name(config)
    env = environment(device)
    tracker = make_tracker(config.tracking, config.tracking_uri, config.experiment, record_dir, config.system_metrics)
    if len(splits) == 1:
        return _train_split(config, splits[0], device, env, tracker, record_dir, init, world=world, tags=tags)
    return _cross_validate(config, splits, device, env, tracker, record_dir, init, tags)
