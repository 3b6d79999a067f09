"""Loading a logged model by URI (runs:/, models:/, or a local MLflow model folder).

The logged model is a torch.export graph (no pickle). Its weights are loaded into a freshly built
MONAI network of the recorded family, so inference can run on any device and in bf16 on CUDA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coroseg.config import TrainConfig
from coroseg.data.dataset import preprocessing_of
from coroseg.errors import InputError
from coroseg.tracking.layout import WEIGHTS_FILE
from coroseg.tracking.redact import redact_text
from coroseg.training.postprocess import DEFAULT_MIN_COMPONENT_FRACTION, DEFAULT_THRESHOLD

log = logging.getLogger("coroseg")


@dataclass
class LoadedModel:
    module: torch.nn.Module
    metadata: dict[str, Any]
    uri: str

    @property
    def image_size(self) -> int:
        return int(self.metadata.get("image_size", TrainConfig().image_size))

    @property
    def threshold(self) -> float:
        return float(self.metadata.get("threshold", DEFAULT_THRESHOLD))

    @property
    def min_component_fraction(self) -> float:
        """Vessel pieces smaller than this fraction of the frame area are dropped (0: older models)."""
        return float(self.metadata.get("min_component_fraction", DEFAULT_MIN_COMPONENT_FRACTION))


def model_metadata(config: TrainConfig, postprocessing: dict[str, Any] | None) -> dict[str, Any]:
    """What `predict` needs to use the model as it was trained."""
    from coroseg.models import family

    chosen = postprocessing or {}
    return {
        "model_family": config.model_family,
        "image_size": config.image_size,
        "divisor": family(config.model_family).divisor,
        "threshold": float(chosen.get("threshold", DEFAULT_THRESHOLD)),
        "min_component_fraction": float(chosen.get("min_component_fraction", DEFAULT_MIN_COMPONENT_FRACTION)),
        "preprocessing": preprocessing_of(config).to_metadata(),
        "input": "float32 (N,1,H,W) grayscale frames prepared by coroseg.data.preprocess.prepare",
        "output": "float32 (N,1,H,W) vessel probabilities",
    }


def _local_copy(uri: str, tracking_uri: str | None) -> Path:
    import mlflow

    if Path(uri).is_dir():
        if not (Path(uri) / "MLmodel").is_file():
            raise InputError(f"{uri}: not an MLflow model folder (no MLmodel file)")
        return Path(uri)
    if "://" not in uri and ":/" not in uri:
        raise InputError(f"{uri}: no such model folder, and not a runs:/ or models:/ URI")
    try:
        # This runs before any run exists, so the store must be set here. Set globally: MLflow resolves a
        # logged model's runs:/ path and a models:/ registry entry through the global URIs, whatever
        # download_artifacts(tracking_uri=...) is given.
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; all mean 'cannot load this'
        raise InputError(f"{uri}: cannot load model ({redact_text(str(exc).splitlines()[0])})") from exc


def load_model(uri: str, device: torch.device, tracking_uri: str | None = None) -> LoadedModel:
    import mlflow.pytorch
    from mlflow.models import Model

    from coroseg.models import build_model
    from coroseg.training.checkpoint import load_weights

    folder = _local_copy(uri, tracking_uri)
    metadata = Model.load(str(folder)).metadata or {}
    family = metadata.get("model_family")
    weights = folder / "extra_files" / WEIGHTS_FILE
    if family is not None and weights.is_file():
        # safetensors beside the graph: seconds faster than loading the exported program
        return LoadedModel(load_weights(weights, build_model(family)).to(device).eval(), metadata, uri)
    exported = mlflow.pytorch.load_model(str(folder))
    if family is None:
        log.warning("%s: model has no coroseg metadata; running the exported graph on the CPU", uri)
        return LoadedModel(exported, metadata, uri)
    model = build_model(family)
    model.load_state_dict(exported.state_dict())
    return LoadedModel(model.to(device).eval(), metadata, uri)
