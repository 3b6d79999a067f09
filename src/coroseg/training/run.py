"""`coroseg train`: check inputs, then train with the run recorded locally and in MLflow."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from coroseg.config import TrainConfig
from coroseg.data.dataset import load_training_data
from coroseg.models import build_model, family
from coroseg.tracking.base import make_tracker
from coroseg.tracking.environment import environment, resolve_device
from coroseg.tracking.layout import MODEL_NAME, WEIGHTS_FILE
from coroseg.tracking.record import RunRecord, new_record_dir
from coroseg.tracking.training_record import TrainingRecord
from coroseg.training.trainer import EpochResult, best_model, seed_everything, train

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


def _default_run_name(config: TrainConfig) -> str:
    return f"{config.model_family}-{time.strftime('%Y%m%d-%H%M%S')}"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def _save_local_model(best, example, record: TrainingRecord, folder: Path, weights: Path) -> None:
    """Without a tracked model, keep a loadable MLflow model in the local record instead."""
    import mlflow.pytorch

    from coroseg.tracking.mlflow_tracker import model_signature, pip_requirements

    mlflow.pytorch.save_model(best, str(folder), signature=model_signature(), input_example=example,
                              pip_requirements=pip_requirements(), metadata=record.model_metadata(),
                              extra_files=[str(weights)], serialization_format="pt2")


def run_training(config: TrainConfig) -> TrainingOutcome:
    started = time.perf_counter()
    family(config.model_family)                       # unknown family: error before anything else
    device = resolve_device(config.device)
    data = load_training_data(config)                 # bad input: error before any run is created
    record_dir = new_record_dir(config.output_dir, _safe_name(config.run_name or config.model_family))
    config.run_name = config.run_name or _default_run_name(config)
    seed_everything(config.seed)                      # the initial weights too depend on the seed
    model = build_model(config.model_family)
    tracker = make_tracker(config.tracking, config.tracking_uri, config.experiment, record_dir, config.system_metrics)
    session = TrainingRecord(RunRecord(record_dir, tracker), config, data, environment(device), model)
    status = "FAILED"
    try:
        session.begin()
        log.info("training %s on %s: %d train / %d val frames of %s px; local record %s",
                 config.model_family, device, len(data.train), len(data.val), config.image_size, record_dir)
        result = train(config, data, model, device, session)
        best = best_model(model, result)
        # A batch of 2: the pt2 export makes size-1 dimensions static, and the batch must stay dynamic.
        example = torch.cat([data.val.images, data.train.images])[:2].numpy()
        session.end(result, best, example)
        local_model = record_dir / MODEL_NAME
        if tracker.run_id is None or tracker.failed:
            _save_local_model(best, example, session, local_model,
                              session.record.path("final_weights", WEIGHTS_FILE))
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        session.close(status)
    tracked = tracker.run_id is not None and not tracker.failed
    return TrainingOutcome(
        run_id=tracker.run_id,
        record_dir=record_dir,
        model_uri=f"runs:/{tracker.run_id}/{MODEL_NAME}" if tracked else str(local_model),
        best_val_dice=result.best_val_dice,
        tracking_failed=tracker.failed,
        history=result.history,
        wall_seconds=time.perf_counter() - started,
    )
