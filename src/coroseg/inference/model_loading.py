"""Loading a logged model by URI (runs:/, models:/, or a local MLflow model folder), safely.

A model folder can come from anyone (a shared server, a colleague's disk), so loading it must never run
code. Only two forms are accepted:
- coroseg's own: metadata naming a known family + safetensors weights, loaded into a freshly built MONAI
  network (any device, bf16 on CUDA, and seconds faster than the graph);
- a torch.export (pt2) archive, which MLflow checks to be free of pickle records first (the CLI sets
  MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false, see mlflow_env.py).
Pickled models (`data/model.pth`) and folders that bundle code are refused with one line saying why.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coroseg.config import TrainConfig
from coroseg.mlflow_env import PICKLE_SWITCH
from coroseg.data.dataset import preprocessing_of
from coroseg.errors import InputError, first_line
from coroseg.tracking.layout import WEIGHTS_FILE
from coroseg.tracking.redact import redact_text
from coroseg.tracking.store import prepare_store, resolved_tracking_uri, sqlite_path
from coroseg.training.postprocess import DEFAULT_MIN_COMPONENT_FRACTION, DEFAULT_THRESHOLD

log = logging.getLogger("coroseg")

EXPORTED_FILE = "model.pt2"        # where mlflow.pytorch keeps a torch.export archive, in its model_data folder
PICKLED_FILE = "model.pth"         # ... and a pickled model, which we never load
MAX_IMAGE_SIZE = 8192              # a recorded working size above this is not a model of ours


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
    database = sqlite_path(resolved_tracking_uri(tracking_uri))
    if database is not None and not database.is_file():   # MLflow would create an empty store and say 'not found'
        raise InputError(f"{redact_text(uri)}: cannot load model (no store at {database}; "
                         "name the store that holds it with --tracking-uri)")
    try:
        # This runs before any run exists, so the store must be set here. Set globally: MLflow resolves a
        # logged model's runs:/ path and a models:/ registry entry through the global URIs, whatever
        # download_artifacts(tracking_uri=...) is given.
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        prepare_store(tracking_uri)          # a new sqlite file is created under its lock, as by train
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; all mean 'cannot load this'
        raise InputError(f"{redact_text(uri)}: cannot load model ({redact_text(first_line(exc))})") from exc


def _read_mlmodel(folder: Path):
    from mlflow.models import Model

    try:
        return Model.load(str(folder))
    except Exception as exc:  # noqa: BLE001 - a broken YAML or schema: either way not a model we can use
        raise InputError(f"{folder / 'MLmodel'}: not a readable MLflow model file ({first_line(exc)})") from exc


def _number(metadata: dict, key: str, low: float, high: float, where: Path) -> None:
    if key not in metadata:
        return
    value = metadata[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InputError(f"{where}: metadata {key} must be a number in [{low}, {high}], got {value!r}")


def checked_metadata(metadata: dict[str, Any] | None, where: Path) -> dict[str, Any]:
    """coroseg's metadata as recorded, each value checked before anything is built from it."""
    from coroseg.models import FAMILIES

    if not isinstance(metadata or {}, dict):
        raise InputError(f"{where}: metadata must be a mapping, got {str(metadata)[:60]!r}")
    metadata = dict(metadata or {})
    family = metadata.get("model_family")
    if family is not None and family not in FAMILIES:
        raise InputError(f"{where}: metadata names unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    _number(metadata, "image_size", 16, MAX_IMAGE_SIZE, where)
    if "image_size" in metadata and metadata["image_size"] != int(metadata["image_size"]):
        raise InputError(f"{where}: metadata image_size must be a whole number, got {metadata['image_size']!r}")
    _number(metadata, "threshold", 0.0, 1.0, where)
    _number(metadata, "min_component_fraction", 0.0, 1.0, where)
    if not isinstance(metadata.get("preprocessing", {}) or {}, dict):
        raise InputError(f"{where}: metadata preprocessing must be a mapping, got {metadata['preprocessing']!r}")
    return metadata


@contextmanager
def _pickle_refused() -> Iterator[None]:
    """MLflow then checks the pt2 archive for pickle records before torch.export.load unpickles them. The
    CLI sets this for the whole process; library callers (notebooks, bench/) get it here."""
    before = os.environ.get(PICKLE_SWITCH)
    os.environ[PICKLE_SWITCH] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PICKLE_SWITCH, None)
        else:
            os.environ[PICKLE_SWITCH] = before


def _exported_graph(folder: Path, mlmodel) -> torch.nn.Module:
    """The torch.export graph of an MLflow pytorch model; a pickled model or bundled code is refused."""
    import mlflow.pytorch

    conf = mlmodel.flavors.get("pytorch")
    where = folder / "MLmodel"
    if conf is None:
        raise InputError(f"{where}: no pytorch flavour; coroseg loads only its own PyTorch models")
    if conf.get("code"):
        raise InputError(f"{where}: the model bundles Python code ({conf['code']}); refused, it would run on load")
    data = (folder / str(conf.get("model_data", "data"))).resolve()
    if not data.is_relative_to(folder.resolve()):
        raise InputError(f"{where}: model_data {conf.get('model_data')!r} points outside the model folder; refused")
    if not (data / EXPORTED_FILE).is_file():
        found = f" ({(data / PICKLED_FILE).relative_to(folder.resolve())})" if (data / PICKLED_FILE).exists() else ""
        raise InputError(f"{folder}: a pickled PyTorch model{found} or no model file; refused: coroseg loads "
                         f"safetensors weights with coroseg metadata, or a torch.export (pt2) archive, never a pickle")
    if not zipfile.is_zipfile(data / EXPORTED_FILE):
        raise InputError(f"{data / EXPORTED_FILE}: cannot load the exported model (not a pt2 zip archive)")
    try:
        with _pickle_refused():
            return mlflow.pytorch.load_model(str(folder))
    except Exception as exc:  # noqa: BLE001 - MLflow's pickle check, a corrupt zip, a bad graph: all 'unusable'
        record = re.search(r"record '([^']+)'.*not a pickle-free payload", str(exc))
        if record:   # MLflow's own advice (allow pickle) would be wrong here
            raise InputError(f"{data / EXPORTED_FILE}: record {record.group(1)!r} of the archive is a pickle, "
                             "not tensors; refused: coroseg never unpickles") from exc
        raise InputError(f"{data / EXPORTED_FILE}: cannot load the exported model ({first_line(exc)})") from exc


def load_model(uri: str, device: torch.device, tracking_uri: str | None = None) -> LoadedModel:
    from coroseg.models import build_model
    from coroseg.training.checkpoint import fit_weights, load_weights

    folder = _local_copy(uri, tracking_uri)
    mlmodel = _read_mlmodel(folder)
    metadata = checked_metadata(mlmodel.metadata, folder / "MLmodel")
    family = metadata.get("model_family")
    weights = folder / "extra_files" / WEIGHTS_FILE
    if family is not None and weights.is_file():   # the fast path: seconds faster than the exported graph
        return LoadedModel(load_weights(weights, build_model(family), family).to(device).eval(), metadata, uri)
    exported = _exported_graph(folder, mlmodel)
    if family is None:
        log.warning("%s: model has no coroseg metadata; running the exported graph on the CPU", redact_text(uri))
        return LoadedModel(exported, metadata, uri)
    model = fit_weights(build_model(family), exported.state_dict(), folder / "MLmodel", family)
    return LoadedModel(model.to(device).eval(), metadata, uri)
