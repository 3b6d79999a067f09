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
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from coroseg.config import TrainConfig, epoch_schedule
from coroseg.data.augment import BatchAugmentation
from coroseg.data.batches import frame_source
from coroseg.data.dataset import Frames, TrainingData
from coroseg.data.frame_store import as_inputs
from coroseg.errors import Stopped
from coroseg.models import SegmentationModel
from coroseg.training import distributed
from coroseg.training.distributed import SINGLE, World
from coroseg.training.epoch_metrics import EpochMetrics
from coroseg.training.losses import build_loss
from coroseg.training.postprocess import PostprocessingChoice, choose_postprocessing, dequantized, quantized
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
    best_val_probabilities: torch.Tensor | None = None    # (N,S,S) uint8 steps of 1/255, CPU, the best epoch's
    postprocessing: PostprocessingChoice | None = None    # threshold etc. chosen on them (postprocess.py)


class TrainingEvents(Protocol):
    def on_epoch_end(self, result: EpochResult, preview: Preview, history: list[EpochResult]) -> None: ...

    def on_best(self, result: EpochResult, model: SegmentationModel, optimizer: torch.optim.Optimizer) -> None: ...

    def on_checkpoint(self, state: TrainingState) -> None: ...


class NoEvents:
    """TrainingEvents that record nothing (a rank other than 0 under torchrun, which rank 0 records; benches;
    tests): subclasses override the events they watch."""

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

    fused = next(model.parameters()).is_cuda           # one kernel for the whole update on a GPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=fused or None)
    total = max(1, config.epochs * steps_per_epoch)
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=config.warmup_epochs * steps_per_epoch, t_total=total,
                                    end_lr=config.learning_rate * 0.01, warmup_multiplier=0.1)
    return optimizer, schedule


def _weight_average(config: TrainConfig, model: torch.nn.Module, steps_per_epoch: int):
    """An exponential moving average of the weights, updated after every step (`ema_epochs`: its time constant
    in epochs, so that it spans the same share of a training whatever the steps of an epoch); None when off.
    Validation, the best epoch and the saved model are then the average's."""
    if not config.ema_epochs:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = math.exp(-1.0 / (config.ema_epochs * steps_per_epoch))
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


# Logit given to pixels outside the field of view: its sigmoid is ~2e-9, so such a pixel (whose mask is 0)
# adds nothing to any loss, and masked_fill passes it no gradient.
OUTSIDE_FOV_LOGIT = -20.0

Logits = Callable[[torch.Tensor], torch.Tensor]
BatchLoss = Callable[[torch.Tensor], torch.Tensor]     # a batch's uint8 records -> its training loss


def compiled(config: TrainConfig, device: torch.device) -> bool:
    """torch.compile with channels_last: on a GPU it fuses the norm and activation passes that bound the step
    (bench/gpu.sh); on a CPU its minute of compilation costs more than it saves on a short training."""
    return config.compile == "yes" or (config.compile == "auto" and device.type == "cuda")


def _batch_loss(logits_of: Logits, augment: BatchAugmentation | None, loss_fn,
                compile_options: dict | None = None) -> BatchLoss:
    """A training batch's loss from its records: the network's float inputs, the augmentation, the logits
    (outside the field of view set to OUTSIDE_FOV_LOGIT) and the loss. With `compile_options`, all of that is
    compiled as one graph; the augmentation's random numbers are drawn ahead of it, eagerly (augment.draw)."""
    def loss_of(records: torch.Tensor, draws) -> torch.Tensor:
        images, masks, fov = as_inputs(records)
        if augment is not None:
            images, masks, fov = augment(images, masks, fov, draws)
        return loss_fn(_fov_logits(logits_of, images, fov), masks)

    step = loss_of if compile_options is None else torch.compile(loss_of, dynamic=False, options=compile_options)

    def batch_loss(records: torch.Tensor) -> torch.Tensor:
        # as_inputs' frames: one channel of the records' side
        draws = None if augment is None else augment.draw((len(records), 1, *records.shape[2:]), records.device)
        return step(records, draws)
    return batch_loss


def _training_loss(model: SegmentationModel, compile_step: bool, augment: BatchAugmentation | None, loss_fn,
                   world: World = SINGLE) -> BatchLoss:
    """The training step's loss function, compiled (for one batch shape) or as it is. What is compiled is what
    measured fastest on each device (bench/gpu_profile.py):
    - on a GPU, the network, captured as CUDA graphs: one launch replays its hundreds of kernels, which the
      host otherwise queues one by one slower than an H200 runs them. Compiling the whole step with it (records'
      conversion, augmentation, masking, loss) was slower there: 1,062 img/s against 1,234 (H200, 512 px,
      batch 16);
    - on a CPU, the whole step as one graph, its ~100 small kernels around the network fused: 241 img/s
      against 185 for the network alone (2 cores, 64 px, width 8). The augmentation's random numbers are drawn
      ahead of it as eager training draws them, so the compiled training is the eager one within float
      rounding (tests/test_compiled_training.py);
    - under torchrun, the network inside DDP (which averages the gradients over the world), without CUDA
      graphs: DDP's all-reduce runs outside them."""
    device = next(model.parameters()).device
    if compile_step:
        model.to(memory_format=torch.channels_last)       # before DDP, which lays out its buckets by the weights
    network = distributed.data_parallel(model, device) if world.distributed else model.logits
    if not compile_step:
        return _batch_loss(network, augment, loss_fn)
    if device.type == "cpu" and not world.distributed:
        return _batch_loss(_channels_last(network), augment, loss_fn, compile_options={})
    graphs = device.type == "cuda" and not world.distributed
    network = torch.compile(network, dynamic=False, mode="reduce-overhead" if graphs else None)
    return _batch_loss(_channels_last(network), augment, loss_fn)


def _channels_last(forward: Logits) -> Logits:
    return lambda images: forward(images.contiguous(memory_format=torch.channels_last))


def _fov_logits(logits_of: Logits, images: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    with _autocast(images.device):
        logits = logits_of(images)
    outside = fov < 0.5
    if logits.dim() == 5:                     # deep supervision: (N, levels, 1, H, W), each level full size
        outside = outside.unsqueeze(1)
    return logits.float().masked_fill(outside, OUTSIDE_FOV_LOGIT)


def _deep_supervised(loss_fn):
    """The loss of a deeply supervised network's levels (trained as a (N, levels, 1, H, W) stack), weighed 1,
    1/2, 1/4 from the full-size output down by MONAI's wrapper; validation's single output passes through."""
    from monai.losses import DeepSupervisionLoss

    wrapped = DeepSupervisionLoss(loss_fn, weight_mode="exp")
    return lambda logits, masks: wrapped(list(logits.unbind(1)) if logits.dim() == 5 else logits, masks)


def _batches(count: int, config: TrainConfig, epoch: int, whole_only: bool, world: World = SINGLE,
             device: torch.device | None = None) -> list[torch.Tensor]:
    """The epoch's shuffled batches (of this rank's share, under torchrun); with `whole_only` (a compiled step
    has one batch shape) the remainder is left out, a different one each epoch. With `device`, views of one
    copy of the order there: a copy per batch from pageable memory would wait for the device each time, and
    the host could not queue the next step while the GPU runs this one."""
    if world.distributed:
        order = _shard(count, config, epoch, world)
        count = len(order)
    else:
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(count, generator=generator)
    if device is not None:
        order = order.to(device)
    size = config.batch_size
    end = count - count % size if whole_only and count >= size else count
    return [order[i : i + size] for i in range(0, end, size)]


def _shard(count: int, config: TrainConfig, epoch: int, world: World) -> torch.Tensor:
    """This rank's frames of the epoch: the same shuffle on every rank, dealt out in turn; padded by repeats
    so that every rank takes the same number of steps (DDP's all-reduce needs all of them)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(count), num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=config.seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def _train_epoch(loss_of: BatchLoss, whole_only: bool, model, source, frames: Frames, config, optimizer, schedule,
                 device, epoch, stop: StopCheck | None = None, world: World = SINGLE,
                 average=None) -> tuple[float, int]:
    """The mean training loss and the number of frames trained on (over the world). The loss stays on the
    device until the epoch ends: a per-step `.item()` would make the host wait for every step."""
    model.train()
    batches = _batches(len(frames), config, epoch, whole_only, world, source.order_device)
    total, seen = torch.zeros((), device=device), 0
    progress = tqdm(zip(batches, source.read(frames, batches)), total=len(batches), unit="batch", leave=False,
                    desc=f"epoch {epoch}/{config.epochs}", file=sys.stderr, disable=not sys.stderr.isatty())
    for idx, records in progress:
        loss = loss_of(records)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if average is not None:
            average.update_parameters(model)
        total += loss.detach() * len(idx)
        seen += len(idx)
        if stop is not None and (signum := stop()) is not None:
            progress.close()
            raise TrainingInterrupted(signum)
    total = float(total)
    if world.distributed:
        total, seen = distributed.summed([total, seen], device)
    return total / max(seen, 1), int(seen)


@torch.no_grad()
def _validate(model, source, frames: Frames, config, loss_fn) -> tuple[float, float, torch.Tensor]:
    """Validation loss, Dice and probabilities, streamed batch by batch, with one wait for the device at the
    end. The probabilities come back as (N,S,S) uint8 steps of 1/255 on the CPU: a quarter of float32's bytes,
    all that the vessel metrics and the post-processing choice need."""
    from monai.metrics import DiceMetric

    model.eval()
    dice = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    total, probabilities = 0.0, []
    positions = [np.arange(start, min(start + config.batch_size, len(frames)))
                 for start in range(0, len(frames), config.batch_size)]
    for records in source.read(frames, positions):
        images, masks, fov = as_inputs(records)
        logits = _fov_logits(model.logits, images, fov)
        total = total + loss_fn(logits, masks) * len(masks)
        probs = torch.sigmoid(logits)
        dice(y_pred=(probs > 0.5).float(), y=masks)
        probabilities.append(quantized(probs))
    return float(total) / len(frames), float(dice.aggregate().item()), torch.cat(probabilities).cpu()


def _validate_world(model, source, frames: Frames, config, loss_fn,
                    world: World) -> tuple[float, float, torch.Tensor]:
    """`_validate` under torchrun: each rank validates every world.size-th frame; the loss and Dice are the
    world's means (MONAI's DiceMetric gathers its per-frame values from every rank by itself once a process
    group exists), and every rank gets all the probabilities, in frame order."""
    if not world.distributed:
        return _validate(model, source, frames, config, loss_fn)
    mine = np.arange(world.rank, len(frames), world.size)
    loss, dice, probabilities = _validate(model, source, frames.subset(mine), config, loss_fn)
    loss_sum, count = distributed.summed([loss * len(mine), len(mine)], next(model.parameters()).device)
    everything = torch.empty((len(frames), *probabilities.shape[1:]), dtype=probabilities.dtype)
    for index, part in distributed.gathered((mine, probabilities)):
        everything[torch.as_tensor(index)] = part
    return loss_sum / count, dice, everything


class _EpochEnds:
    """Hands each finished epoch, with its vessel metrics (epoch_metrics.py), to the events, in order.

    On a GPU the metrics of an epoch are computed while the next ones train, and the epoch is handed over once
    they are known: the loop waits for them only when more than MAX_PENDING epochs are waiting. On a CPU at
    once. A stop by signal hands the pending epochs over first; a process killed outright (SIGKILL) on a GPU
    loses the record entries of the epochs still pending, though its saved state is complete and `--resume`
    goes on from it."""

    MAX_PENDING = 2

    def __init__(self, events: TrainingEvents, val: Frames, config: TrainConfig, background: bool,
                 enabled: bool) -> None:
        self.events, self.val, self.config = events, val, config
        self.metrics = EpochMetrics(val.masks(), val.fovs(), background) if enabled else None
        self.pending: deque[tuple[EpochResult, torch.Tensor, list[EpochResult], Future | None]] = deque()

    def add(self, result: EpochResult, probabilities: torch.Tensor, history: list[EpochResult]) -> None:
        metrics = self.metrics.submit(probabilities) if self.metrics is not None else None
        self.pending.append((result, probabilities, list(history), metrics))
        self.flush(keep=self.MAX_PENDING)

    def flush(self, keep: int = 0) -> None:
        """Hands over the pending epochs whose metrics are known, in order, and waits for the others until at
        most `keep` are left."""
        while self.pending and (len(self.pending) > keep or self._ready(self.pending[0][3])):
            self._hand_over(*self.pending.popleft())

    @staticmethod
    def _ready(metrics) -> bool:
        return metrics is None or metrics.done()

    def _hand_over(self, result: EpochResult, probabilities: torch.Tensor, history: list[EpochResult],
                   metrics) -> None:
        for name, value in (metrics.result() if metrics is not None else {}).items():
            setattr(result, name, value)
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_dice %.4f  val_cldice %.4f  val_hd95 %.1f  lr %.2e  "
            "%.1fs (%.0f img/s)%s", result.epoch, self.config.epochs, result.train_loss, result.val_loss, result.val_dice,
            result.val_cldice, result.val_hd95, result.learning_rate, result.epoch_duration_seconds,
            result.train_images_per_second, "  (best)" if result.is_best else "")
        self.events.on_epoch_end(result, _preview(self.val, probabilities, self.config.val_samples), history)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def _preview(frames: Frames, probabilities: torch.Tensor, count: int) -> Preview:
    k = min(count, len(frames))
    images, masks, _ = as_inputs(torch.from_numpy(frames.records(range(k))))
    return Preview(
        names=frames.names[:k],
        images=images[:, 0].numpy(),
        masks=masks[:, 0].numpy() > 0.5,
        probabilities=dequantized(probabilities[:k].numpy()),
    )


def _checkpoint(epoch: int, since_best: int, model, optimizer, schedule, result: TrainResult,
                average=None) -> TrainingState:
    return TrainingState(
        epoch=epoch, since_best=since_best, best_epoch=result.best_epoch, best_val_dice=result.best_val_dice,
        history=[asdict(h) for h in result.history], model=model.state_dict(), optimizer=optimizer.state_dict(),
        schedule=schedule.state_dict(), rng=rng_state(), best_model=result.best_state,
        best_val_probabilities=result.best_val_probabilities, stopped_early=result.stopped_early,
        training_duration_seconds=result.training_duration_seconds,
        average=None if average is None else average.state_dict())


def result_of(state: TrainingState) -> TrainResult:
    """The results a saved state holds: those so far, or a finished run's final ones (post-processing is
    chosen at the end of `train`, not saved)."""
    probabilities = state.best_val_probabilities
    return TrainResult(history=[EpochResult(**h) for h in state.history], best_epoch=state.best_epoch,
                       best_val_dice=state.best_val_dice, best_state=state.best_model,
                       training_duration_seconds=state.training_duration_seconds, stopped_early=state.stopped_early,
                       # float32 in the states of earlier versions
                       best_val_probabilities=None if probabilities is None else quantized(probabilities))


def _restore(state: TrainingState, model, optimizer, schedule, average=None) -> None:
    """Put model, optimizer, schedule, weight average and RNGs back as they were after `state.epoch`."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    schedule.load_state_dict(state.schedule)
    if average is not None and state.average is not None:     # the state of a run with ema_epochs holds it
        average.load_state_dict(state.average)
    restore_rng(state.rng)
    log.info("resuming after epoch %d (best val_dice %.4f at epoch %d)", state.epoch, state.best_val_dice,
             state.best_epoch)


def train(
    config: TrainConfig, data: TrainingData, model: SegmentationModel, device: torch.device, events: TrainingEvents,
    resume: TrainingState | None = None, stop: StopCheck | None = None, epoch_vessel_metrics: bool = True,
    world: World = SINGLE,
) -> TrainResult:
    """Train from scratch, or carry on after `resume`'s epoch exactly as if never stopped; `stop` is asked
    after every batch (TrainingInterrupted when it answers a signal). `epoch_vessel_metrics=False` leaves out the
    per-epoch clDice, HD95... (benchmarks that score the model otherwise). Under torchrun (`world`) every rank
    calls it with its own device; only rank 0's events should record (the others' events may do nothing), and a
    stop is asked after every epoch, of the whole world, so that no rank waits alone in an all-reduce."""
    if config.epochs is None or config.patience is None:    # called directly (benchmarks): one model's schedule
        epochs, patience = epoch_schedule(config, 1)
        config = replace(config, epochs=epochs, patience=patience)
    seed_everything(config.seed)
    if world.distributed:
        torch.manual_seed(config.seed * 1000 + world.rank)    # each rank its own augmentation draws
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # every batch has one shape: time cuDNN's algorithms once, keep the best
    model.to(device)
    compile_step = compiled(config, device)
    augment = BatchAugmentation(config.xray_augment).to(device) if config.augment else None
    loss_fn = build_loss(config.loss)
    if config.deep_supervision:
        loss_fn = _deep_supervised(loss_fn)
    loss_of = _training_loss(model, compile_step, augment, loss_fn, world)
    steps = len(_batches(len(data.train), config, 1, compile_step, world))
    optimizer, schedule = _optimizer_and_schedule(config, model, steps)
    average = _weight_average(config, model, steps)
    evaluated = model if average is None else average.module      # what is validated, kept as best and saved
    source = frame_source(data.train.file, device, config.loader_workers)     # val's frames are in the same file
    # Under torchrun the vessel metrics too run in a process of their own: there MONAI's metrics, which gather
    # from every rank once a process group exists, see rank 0's frames only, as meant.
    ends = _EpochEnds(events, data.val, config, background=device.type == "cuda" or world.distributed,
                      enabled=epoch_vessel_metrics and world.main)
    result, since_best, started = TrainResult(), 0, time.perf_counter()
    if resume is not None:
        _restore(resume, model, optimizer, schedule, average)
        result, since_best = result_of(resume), resume.since_best
    previous_seconds = result.training_duration_seconds     # of the run's earlier processes, when resumed
    try:
        for epoch in range(len(result.history) + 1, config.epochs + 1):
            if result.stopped_early:
                break
            t0 = time.perf_counter()
            train_loss, seen = _train_epoch(loss_of, compile_step, model, source, data.train, config, optimizer,
                                            schedule, device, epoch, None if world.distributed else stop, world,
                                            average)
            t_train = time.perf_counter() - t0
            val_loss, val_dice, probabilities = _validate_world(evaluated, source, data.val, config, loss_fn, world)
            epoch_result = EpochResult(epoch, train_loss, val_loss, val_dice, optimizer.param_groups[0]["lr"],
                                       time.perf_counter() - t0, seen / t_train)
            epoch_result.is_best = val_dice > result.best_val_dice
            result.history.append(epoch_result)
            ends.flush(keep=len(ends.pending))      # earlier epochs whose metrics were computed meanwhile
            if epoch_result.is_best:
                result.best_epoch, result.best_val_dice, since_best = epoch, val_dice, 0
                result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in evaluated.state_dict().items()}
                result.best_val_probabilities = probabilities
                events.on_best(epoch_result, evaluated, optimizer)
            else:
                since_best += 1
            ends.add(epoch_result, probabilities, result.history)
            result.stopped_early = since_best >= config.patience and epoch < config.epochs
            result.training_duration_seconds = previous_seconds + time.perf_counter() - started
            if world.main:
                events.on_checkpoint(_checkpoint(epoch, since_best, model, optimizer, schedule, result, average))
            if world.distributed and stop is not None and distributed.any_rank(stop() is not None, device):
                raise TrainingInterrupted(stop() or int(signal.SIGTERM))
            if result.stopped_early:
                log.info("early stop: no better val_dice for %d epochs (best %.4f at epoch %d)",
                         since_best, result.best_val_dice, result.best_epoch)
        ends.flush()
    except TrainingInterrupted:
        ends.flush()                        # the last finished epoch is recorded before the stop goes on
        raise
    finally:
        ends.close()
    result.training_duration_seconds = previous_seconds + time.perf_counter() - started
    if result.best_val_probabilities is not None and world.main:
        choice = result.postprocessing = choose_postprocessing(result.best_val_probabilities, data.val.masks())
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
