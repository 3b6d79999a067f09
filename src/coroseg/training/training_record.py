"""Turns training events into the run's record: every folder of the training layout, params, metrics, tags."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from dataclasses import asdict
from typing import Any

import torch

from coroseg.config import TrainConfig, to_yaml
from coroseg.data.dataset import TrainingData
from coroseg.data.imageio import encode_png
from coroseg.model_spec import ModelSpec
from coroseg.models import SegmentationModel, parameter_count
from coroseg.training.checkpoint import sha256, weights_bytes
from coroseg.training.postprocess import PostprocessingChoice
from coroseg.training.state import TrainingState, save_state
from coroseg.training.trainer import EpochResult, Preview, TrainResult
from coroseg.tracking import layout
from coroseg.tracking.base import DatasetRef
from coroseg.tracking.environment import environment_params
from coroseg.tracking.record import RunRecord, markdown_rows, markdown_table, to_csv
from coroseg.tracking.redact import redact_uri
from coroseg.visualize import TrainingCurves, comparison

THRESHOLD = 0.5                      # of the per-epoch previews; the model's own is chosen on validation


def resolved_config(config: TrainConfig) -> dict[str, Any]:
    """Every config value, as recorded: secrets in the tracking URI removed."""
    values = config.to_dict()
    values["tracking_uri"] = redact_uri(values["tracking_uri"])
    return values


def registry_tags(config: TrainConfig, val_dice: float, data_digest: str) -> dict[str, str]:
    """A registered version's tags; `val_dice` decides whether it becomes the champion (tracking/registry.py)."""
    return {"val_dice": f"{val_dice:.6f}", "data_digest": data_digest, "model_family": config.model_family}


def run_params(config: TrainConfig, env: dict[str, Any]) -> dict[str, Any]:
    return {**resolved_config(config), **layout.TRAINING_PARAMS, **environment_params(env)}


class LogCapture(logging.Handler):
    """Keeps the run's log lines: all of them, and those of the epoch in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.epoch_start = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def take_epoch(self) -> str:
        lines, self.epoch_start = self.lines[self.epoch_start :], len(self.lines)
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class TrainingRecord:
    """The `TrainingEvents` that write the record of one training run."""

    def __init__(self, record: RunRecord, config: TrainConfig, data: TrainingData, env: dict[str, Any],
                 model: SegmentationModel, resumed: bool = False, world_size: int = 1,
                 tags: dict[str, str] | None = None) -> None:
        self.record, self.tracker = record, record.tracker
        self.world_size = world_size         # processes training together (torchrun), each with a batch_size batch
        self.tags = {**layout.TRAINING_TAGS, **(tags or {})}
        self.config, self.data, self.env = config, data, env
        self.parameters = parameter_count(model)
        self.logs = LogCapture()
        self.started = time.time()
        self.choice: PostprocessingChoice | None = None     # set by `end`, recorded in the model's spec
        self.resumed = resumed               # carries on a run whose record this is (`train --resume`)
        self.earlier_log = ""                # that run's log so far
        self.curves: TrainingCurves | None = None

    # -- start ---------------------------------------------------------------------------------
    def resolved_config(self) -> dict[str, Any]:
        return resolved_config(self.config)

    def data_record(self) -> dict[str, Any]:
        return {
            "source": self.data.source,
            "digest_sha256": self.data.digest,
            "train_frames": len(self.data.train),
            "val_frames": len(self.data.val),
            "train_names": self.data.train.names,
            "val_names": self.data.val.names,
        }

    def begin(self, resume_run_id: str | None = None) -> str | None:
        """Start the run, or carry on `resume_run_id`: its params and configuration are recorded already,
        and its log goes on after the earlier processes' lines."""
        logging.getLogger("coroseg").addHandler(self.logs)
        if self.resumed:
            self.earlier_log = self._earlier_log()
        if resume_run_id is not None:
            return self.tracker.start(self.config.run_name, self.tags, resume_run_id=resume_run_id)
        run_id = self.tracker.start(self.config.run_name, self.tags)
        params = {
            **run_params(self.config, self.env),
            "parameter_count": self.parameters,
            "train_frames": len(self.data.train),
            "val_frames": len(self.data.val),
            "data_digest": self.data.digest,
            "world_size": self.world_size,
            "batch_size_per_rank": self.config.batch_size,
        }
        self.tracker.log_params(params)
        for context, frames in (("training", self.data.train), ("validation", self.data.val)):
            self.tracker.log_dataset(self.dataset(context), context, self.data.source,
                                     {"frames": len(frames), "names": frames.names, "data_digest_sha256": self.data.digest})
        self.record.write_text("config", "config.yaml", to_yaml(self.resolved_config()))
        self.record.write_json("config", "environment.json", self.env)
        self.record.write_json("config", "data.json", self.data_record())
        return run_id

    # -- events of the loop --------------------------------------------------------------------
    def on_best(self, result: EpochResult, model: SegmentationModel, optimizer: torch.optim.Optimizer) -> None:
        blob = weights_bytes(model.state_dict())
        self.record.write_bytes("best_weights", layout.WEIGHTS_FILE, blob, result.epoch)
        self.record.write_json("best_metadata", "best_model.json", {
            "epoch": result.epoch,
            "val_dice": result.val_dice,
            "val_loss": result.val_loss,
            "weights": f"{layout.artifact_dir('best_weights', result.epoch)}/{layout.WEIGHTS_FILE}",
            "sha256": sha256(blob),
            "parameter_count": self.parameters,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds_since_start": round(time.time() - self.started, 2),
        })
        self.record.write_json("best_context", "context.json", {
            "config": self.resolved_config(),
            "data": self.data_record(),
            "environment": self.env,
            "optimizer": _optimizer_summary(optimizer),
        })

    def on_epoch_end(self, result: EpochResult, preview: Preview, history: list[EpochResult]) -> None:
        e = result.epoch
        self.tracker.log_metrics(result.metrics(), step=e)
        metrics = {"epoch": e, **result.metrics(), "is_best": result.is_best}
        self.record.write_json("epoch_metrics", "metrics.json", metrics, e)
        self.record.write_text("epoch_config", "config.yaml",
                               to_yaml({**self.resolved_config(), "epoch": e, "current_learning_rate": result.learning_rate}), e)
        self.record.write_json("epoch_summary", "summary.json", metrics, e)
        self.record.write_text("epoch_summary", "summary.md", f"# Epoch {e}\n\n" + markdown_table(metrics), e)
        for name, image, mask, probs in zip(preview.names, preview.images, preview.masks, preview.probabilities):
            path = self.record.write_bytes("epoch_predictions", f"{name}.png",
                                           encode_png(comparison(image, probs > THRESHOLD, mask)), e)
            self.tracker.log_image(path, f"overlay_{name}", e)     # the UI's step slider shows the progress
        self.curves = self.curves or TrainingCurves()      # made at the first epoch: matplotlib loads only then
        self.record.write_bytes("curves", "training_curves.png", self.curves.png([asdict(h) for h in history]), e)
        self.record.write_text("epoch_log", "epoch.log", self.logs.take_epoch(), e)

    # -- end -----------------------------------------------------------------------------------
    def end(self, result: TrainResult, best: SegmentationModel) -> None:
        last = result.history[-1].epoch if result.history else 0
        self.choice = result.postprocessing                  # chosen by the trainer on the best epoch
        chosen = {}
        if self.choice is not None:
            chosen = {"chosen_threshold": self.choice.chosen.threshold,
                      "chosen_min_component_fraction": self.choice.chosen.min_component_fraction,
                      "val_dice_postprocessed": self.choice.val_dice_after}
        self.tracker.log_metrics({"training_duration_seconds": result.training_duration_seconds}, step=last)
        weights = self.record.write_bytes("final_weights", layout.WEIGHTS_FILE, weights_bytes(best.state_dict()))
        self.record.write_text("final_config", "config.yaml", to_yaml(self.model_config()))
        history = [asdict(h) for h in result.history]
        self.record.write_json("final_history", "history.json", history)
        self.record.write_text("final_history", "history.csv", to_csv(history))
        summary = self.summary(result)
        self.record.write_json("final_summary", "model_summary.json", {**summary, "architecture": repr(best.network)})
        self.record.write_text("final_summary", "model_summary.md", _model_markdown(summary, best))
        self.record.write_json("summary", "summary.json", summary)
        self.record.write_text("summary", "summary.md", _run_markdown(summary, history))
        # The validation figures go with the model: its page in the MLflow UI shows them.
        linked = {"best_val_dice": result.best_val_dice, **_best_epoch_vessel_metrics(result), **chosen}
        self.tracker.log_model(weights, self.model_spec().to_metadata(), self.data.example[None], metrics=linked,
                               step=last, dataset=self.dataset("validation"))
        if self.config.register:
            self.tracker.register_model(self.config.register, registry_tags(
                self.config, summary["val_dice_postprocessed"] or result.best_val_dice, self.data.digest))

    def dataset(self, context: str) -> DatasetRef:
        """The split as MLflow names a dataset: the data's name and a digest of it and the split's frames."""
        frames = self.data.train if context == "training" else self.data.val
        name = "synthetic" if self.data.source.startswith("synthetic") else Path(self.data.source).name
        digest = hashlib.sha256("\n".join([self.data.digest, *frames.names]).encode()).hexdigest()[:16]
        return DatasetRef(f"{name}-{'train' if context == 'training' else 'val'}", digest)

    def _earlier_log(self) -> str:
        """The log of the run's earlier processes: the whole log when one closed it, else (after SIGKILL) the
        lines of its epochs."""
        whole = self.record.path("log", "training.log")
        if whole.is_file():
            return whole.read_text()
        epochs = sorted(self.record.root.glob(layout.CATEGORIES["epoch_log"].format(epoch="epoch_*") + "/epoch.log"))
        return "".join(path.read_text() for path in epochs)

    def on_checkpoint(self, state: TrainingState) -> None:
        """The last finished epoch's full state, kept in the local record for `--resume` (not uploaded)."""
        save_state(self.record.root, state)

    def close(self, status: str) -> None:
        """The whole log is kept whatever happened, a crash included."""
        logging.getLogger("coroseg").removeHandler(self.logs)
        self.record.write_text("log", "training.log", self.earlier_log + self.logs.text())
        self.tracker.finish(status)

    def model_spec(self) -> ModelSpec:
        return ModelSpec.of_training(self.config, self.choice.chosen if self.choice else None)

    def model_config(self) -> dict[str, Any]:
        return {**self.resolved_config(), "model": self.model_spec().to_metadata(), "data": self.data_record()}

    def summary(self, result: TrainResult) -> dict[str, Any]:
        spec = self.model_spec()
        return {
            "model_family": self.config.model_family,
            "parameter_count": self.parameters,
            "epochs_run": len(result.history),
            "epochs_planned": self.config.epochs,
            "stopped_early": result.stopped_early,
            "best_epoch": result.best_epoch,
            "best_val_dice": result.best_val_dice,
            "final_val_dice": result.history[-1].val_dice if result.history else None,
            **_best_epoch_vessel_metrics(result),
            "chosen_threshold": spec.postprocessing.threshold,
            "chosen_min_component_fraction": spec.postprocessing.min_component_fraction,
            "val_dice_postprocessed": self.choice.val_dice_after if self.choice else None,
            "training_duration_seconds": round(result.training_duration_seconds, 2),
            "data_source": self.data.source,
            "data_digest": self.data.digest,
            "train_frames": len(self.data.train),
            "val_frames": len(self.data.val),
            "image_size": self.config.image_size,
            "device": self.env["device"],
            "device_name": self.env["device_name"],
            "run_id": self.tracker.run_id,
            "local_record": str(self.record.root),
            "model_uri": self.tracker.model_uri if self.tracker.run_id else None,
        }


def _best_epoch_vessel_metrics(result: TrainResult) -> dict[str, float]:
    """`best_val_cldice` etc.: the vessel metrics of the best epoch."""
    best = next((h for h in result.history if h.epoch == result.best_epoch), None)
    if best is None:
        return {}
    return {f"best_{k}": v for k, v in best.metrics().items()
            if k.startswith("val_") and k not in ("val_loss", "val_dice")}


def _optimizer_summary(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    group = optimizer.param_groups[0]
    steps = [int(s["step"]) for s in optimizer.state.values() if "step" in s]
    return {
        "type": type(optimizer).__name__,
        "learning_rate": group["lr"],
        "weight_decay": group.get("weight_decay"),
        "betas": list(group.get("betas", ())),
        "parameter_groups": len(optimizer.param_groups),
        "state_tensors": len(optimizer.state),
        "steps": max(steps, default=0),
    }


def _model_markdown(summary: dict[str, Any], model: SegmentationModel) -> str:
    return (
        f"# Model summary\n\n{markdown_table(summary)}\n## Architecture\n\n```\n{model.network!r}\n```\n"
    )


def _run_markdown(summary: dict[str, Any], history: list[dict[str, Any]]) -> str:
    cols = ["epoch", "train_loss", "val_loss", "val_dice", "val_cldice", "val_hd95", "learning_rate",
            "epoch_duration_seconds"]
    table = markdown_rows(history, cols, {"learning_rate": "{:.2e}"})
    return f"# Training run\n\n{markdown_table(summary)}\n## Epochs\n\n{table}"
