"""The training loop: a few short functions, and events for whoever records the run.

The loop knows nothing of MLflow or of files: it reports each epoch and each new best model to a
`TrainingEvents` object (training_record.py writes the record; tests may pass their own).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from coroseg.config import TrainConfig
from coroseg.data.augment import BatchAugmentation
from coroseg.data.dataset import Frames, TrainingData
from coroseg.errors import Stopped
from coroseg.models import SegmentationModel
from coroseg.training.losses import build_loss
from coroseg.training.postprocess import PostprocessingChoice, choose_postprocessing
from coroseg.training.state import TrainingState, restore_rng, rng_state

log = logging.getLogger("coroseg")


@dataclass
class EpochResult:
    epoch: int                      # 1-based
    train_loss: float
    val_loss: float
    val_dice: float
    learning_rate: float
    epoch_duration_seconds: float       # training and validation, not the recording of the epoch
    train_images_per_second: float
    # vessel metrics of the thresholded (0.5) validation masks, means over frames (NaNs left out)
    val_cldice: float = float("nan")
    val_hd95: float = float("nan")
    val_assd: float = float("nan")
    val_component_error: float = float("nan")
    val_sensitivity: float = float("nan")
    val_specificity: float = float("nan")
    val_precision: float = float("nan")
    val_iou: float = float("nan")
    is_best: bool = False

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k not in ("epoch", "is_best")}


@dataclass
class Preview:
    """A few validation frames with their masks and predicted probabilities, for overlays."""

    names: list[str]
    images: np.ndarray              # (K,H,W) float32
    masks: np.ndarray               # (K,H,W) bool
    probabilities: np.ndarray       # (K,H,W) float32


@dataclass
class TrainResult:
    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    best_val_dice: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    training_duration_seconds: float = 0.0
    stopped_early: bool = False
    best_val_probabilities: torch.Tensor | None = None    # (N,1,S,S) float32 on the CPU, the best epoch's
    postprocessing: PostprocessingChoice | None = None    # threshold etc. chosen on them (postprocess.py)


class TrainingEvents(Protocol):
    def on_epoch_end(self, result: EpochResult, preview: Preview, history: list[EpochResult]) -> None: ...

    def on_best(self, result: EpochResult, model: SegmentationModel, optimizer: torch.optim.Optimizer) -> None: ...

    def on_checkpoint(self, state: TrainingState) -> None: ...


class TrainingInterrupted(Stopped):
    """A stop was asked for (SIGTERM, Ctrl-C); the loop left at a batch boundary, the last finished epoch's
    state is already saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.record_dir = None       # set by the run that stopped, when it can be resumed
        self.run_id: str | None = None


StopCheck = Callable[[], "int | None"]      # the signal that asked to stop, or None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast(device: torch.device):
    """bf16 on CUDA: same range as fp32, so no loss scaling is needed."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer_and_schedule(config: TrainConfig, model: torch.nn.Module, steps_per_epoch: int):
    from monai.optimizers import WarmupCosineSchedule

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total = max(1, config.epochs * steps_per_epoch)
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=config.warmup_epochs * steps_per_epoch, t_total=total,
                                    end_lr=config.learning_rate * 0.01, warmup_multiplier=0.1)
    return optimizer, schedule


# Logit given to pixels outside the field of view: its sigmoid is ~2e-9, so such a pixel (whose mask is 0)
# adds nothing to any loss, and masked_fill passes it no gradient.
OUTSIDE_FOV_LOGIT = -20.0


def _fov_logits(model: SegmentationModel, images: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    with _autocast(images.device):
        logits = model.logits(images)
    return logits.float().masked_fill(fov < 0.5, OUTSIDE_FOV_LOGIT)


def _train_epoch(model, frames: Frames, config, optimizer, schedule, augment, loss_fn, device, epoch,
                 stop: StopCheck | None = None) -> float:
    model.train()
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    order = torch.randperm(len(frames), generator=generator)
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    total = 0.0
    progress = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                    file=sys.stderr, disable=not sys.stderr.isatty())
    for idx in progress:
        images = frames.images[idx].to(device, non_blocking=True)
        masks = frames.masks[idx].to(device, non_blocking=True)
        fov = frames.fov[idx].to(device, non_blocking=True)
        if augment is not None:
            images, masks, fov = augment(images, masks, fov)
        loss = loss_fn(_fov_logits(model, images, fov), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item() * len(idx)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if stop is not None and (signum := stop()) is not None:
            progress.close()
            raise TrainingInterrupted(signum)
    return total / len(frames)


VESSEL_METRICS = ("cldice", "hd95", "assd", "component_error", "sensitivity", "specificity", "precision", "iou")


def vessel_metrics(probabilities: torch.Tensor, frames: Frames) -> dict[str, float]:
    """`val_<name>` for each of VESSEL_METRICS: means over frames of the thresholded (0.5) predictions,
    inside each frame's field of view."""
    from coroseg.evaluation.metrics import image_metrics, mean_metrics

    predictions = probabilities[:, 0].numpy() > 0.5
    truths, fovs = frames.masks[:, 0].numpy() > 0.5, frames.fov[:, 0].numpy() > 0.5
    means = mean_metrics([image_metrics(p, t, f) for p, t, f in zip(predictions, truths, fovs)])
    return {f"val_{name}": means[name] for name in VESSEL_METRICS}


@torch.no_grad()
def _validate(model, frames: Frames, config, loss_fn, device) -> tuple[float, float, torch.Tensor]:
    from monai.metrics import DiceMetric

    model.eval()
    dice = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    total, probabilities = 0.0, []
    for start in range(0, len(frames), config.batch_size):
        images = frames.images[start : start + config.batch_size].to(device)
        masks = frames.masks[start : start + config.batch_size].to(device)
        logits = _fov_logits(model, images, frames.fov[start : start + config.batch_size].to(device))
        total += loss_fn(logits, masks).item() * len(images)
        probs = torch.sigmoid(logits)
        dice(y_pred=(probs > 0.5).float(), y=masks)
        probabilities.append(probs.cpu())
    return total / len(frames), float(dice.aggregate().item()), torch.cat(probabilities)


def _preview(frames: Frames, probabilities: torch.Tensor, count: int) -> Preview:
    k = min(count, len(frames))
    return Preview(
        names=frames.names[:k],
        images=frames.images[:k, 0].numpy(),
        masks=frames.masks[:k, 0].numpy() > 0.5,
        probabilities=probabilities[:k, 0].numpy(),
    )


def _checkpoint(epoch: int, since_best: int, model, optimizer, schedule, result: TrainResult) -> TrainingState:
    return TrainingState(
        epoch=epoch, since_best=since_best, best_epoch=result.best_epoch, best_val_dice=result.best_val_dice,
        history=[asdict(h) for h in result.history], model=model.state_dict(), optimizer=optimizer.state_dict(),
        schedule=schedule.state_dict(), rng=rng_state(), best_model=result.best_state,
        best_val_probabilities=result.best_val_probabilities, stopped_early=result.stopped_early,
        training_duration_seconds=result.training_duration_seconds)


def _restore(state: TrainingState, model, optimizer, schedule, result: TrainResult) -> int:
    """Put model, optimizer, schedule, RNGs and the results so far back as they were after `state.epoch`;
    the early-stopping counter is returned."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    schedule.load_state_dict(state.schedule)
    restore_rng(state.rng)
    result.history = [EpochResult(**h) for h in state.history]
    result.best_epoch, result.best_val_dice = state.best_epoch, state.best_val_dice
    result.best_state, result.best_val_probabilities = state.best_model, state.best_val_probabilities
    result.stopped_early, result.training_duration_seconds = state.stopped_early, state.training_duration_seconds
    log.info("resuming after epoch %d (best val_dice %.4f at epoch %d)", state.epoch, state.best_val_dice,
             state.best_epoch)
    return state.since_best


def train(
    config: TrainConfig, data: TrainingData, model: SegmentationModel, device: torch.device, events: TrainingEvents,
    resume: TrainingState | None = None, stop: StopCheck | None = None,
) -> TrainResult:
    """Train from scratch, or carry on after `resume`'s epoch exactly as if never stopped; `stop` is asked
    after every batch (TrainingInterrupted when it answers a signal)."""
    seed_everything(config.seed)
    model.to(device)
    steps = math.ceil(len(data.train) / config.batch_size)
    optimizer, schedule = _optimizer_and_schedule(config, model, steps)
    augment = BatchAugmentation().to(device) if config.augment else None
    loss_fn = build_loss(config.loss)
    result, since_best, started = TrainResult(), 0, time.perf_counter()
    if resume is not None:
        since_best = _restore(resume, model, optimizer, schedule, result)
    previous_seconds = result.training_duration_seconds     # of the run's earlier processes, when resumed
    for epoch in range(len(result.history) + 1, config.epochs + 1):
        if result.stopped_early:
            break
        t0 = time.perf_counter()
        train_loss = _train_epoch(model, data.train, config, optimizer, schedule, augment, loss_fn, device, epoch,
                                  stop)
        t_train = time.perf_counter() - t0
        val_loss, val_dice, probabilities = _validate(model, data.val, config, loss_fn, device)
        vessel = vessel_metrics(probabilities, data.val)
        epoch_result = EpochResult(epoch, train_loss, val_loss, val_dice, optimizer.param_groups[0]["lr"],
                                   time.perf_counter() - t0, len(data.train) / t_train, **vessel)
        epoch_result.is_best = val_dice > result.best_val_dice
        result.history.append(epoch_result)
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_dice %.4f  val_cldice %.4f  val_hd95 %.1f  lr %.2e  %.1fs%s",
            epoch, config.epochs, train_loss, val_loss, val_dice, epoch_result.val_cldice, epoch_result.val_hd95,
            epoch_result.learning_rate,
            epoch_result.epoch_duration_seconds, "  (best)" if epoch_result.is_best else "",
        )
        if epoch_result.is_best:
            result.best_epoch, result.best_val_dice, since_best = epoch, val_dice, 0
            result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            result.best_val_probabilities = probabilities
            events.on_best(epoch_result, model, optimizer)
        else:
            since_best += 1
        events.on_epoch_end(epoch_result, _preview(data.val, probabilities, config.val_samples), result.history)
        result.stopped_early = since_best >= config.patience and epoch < config.epochs
        result.training_duration_seconds = previous_seconds + time.perf_counter() - started
        events.on_checkpoint(_checkpoint(epoch, since_best, model, optimizer, schedule, result))
        if result.stopped_early:
            log.info("early stop: no better val_dice for %d epochs (best %.4f at epoch %d)",
                     since_best, result.best_val_dice, result.best_epoch)
    result.training_duration_seconds = previous_seconds + time.perf_counter() - started
    if result.best_val_probabilities is not None:
        choice = result.postprocessing = choose_postprocessing(result.best_val_probabilities, data.val.masks)
        log.info("post-processing chosen on validation: threshold %.2f, min component %.4f of the frame; "
                 "val_dice %.4f -> %.4f", choice.chosen.threshold, choice.chosen.min_component_fraction,
                 choice.val_dice_before, choice.val_dice_after)
    return result


def best_model(model: SegmentationModel, result: TrainResult) -> SegmentationModel:
    """A CPU copy of the model with the best epoch's weights."""
    best = copy.deepcopy(model).to("cpu").eval()
    if result.best_state is not None:
        best.load_state_dict(result.best_state)
    return best
