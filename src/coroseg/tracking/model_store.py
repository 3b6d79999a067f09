"""The MLflow side of models: save a model folder, fetch one by URI, load its exported graph, name its URI.

The only module outside the trackers that imports MLflow for models; what may be loaded at all is decided
by inference/model_loading.py before anything here runs code from a folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coroseg.errors import InputError, first_line
from coroseg.mlflow_env import PICKLE_SWITCH
from coroseg.tracking.layout import MODEL_NAME
from coroseg.tracking.redact import redact_text
from coroseg.tracking.store import prepare_store, resolved_tracking_uri, sqlite_path


def run_model_uri(run_id: str) -> str:
    """How anyone loads the model a run logged."""
    return f"runs:/{run_id}/{MODEL_NAME}"


def model_signature():
    """Raw grey frames in, masks (or probabilities) out, of any dtype, batch and size: MLflow's schema has no
    type for "uint8, uint16 or float, any shape", so the tensors are declared as objects and the model
    checks them itself (serving.py). `output` chooses masks or probabilities."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    frames = Schema([TensorSpec(np.dtype(object), (-1,), name=None)])
    return ModelSignature(inputs=frames, outputs=frames,
                          params=ParamSchema([ParamSpec("output", "string", "mask")]))


def pip_requirements() -> list[str]:
    """Given explicitly: MLflow's own inference of them costs seconds and guesses. The serving environment
    also needs coroseg itself (serving.py is the model's loader): `pip install` this repository there."""
    import mlflow
    import monai
    import numpy
    import torch

    # Module versions, not distribution metadata: an install of `mlflow-skinny` has no `mlflow` distribution.
    return [f"{module.__name__}=={module.__version__.split('+')[0]}" for module in (torch, mlflow, numpy, monai)]


def save_model_folder(folder: Path, weights: Path, metadata: dict[str, Any], input_example: Any) -> None:
    """The MLflow model, saved once into the local record (the uploader logs this folder as the run's model): a
    pyfunc whose loader is coroseg.serving, holding the safetensors weights and the model spec as metadata.
    Nothing to export or trace, and nothing pickled."""
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(str(folder), loader_module="coroseg.serving", data_path=str(weights),
                             signature=model_signature(), input_example=input_example,
                             pip_requirements=pip_requirements(), metadata=metadata)


def local_copy(uri: str, tracking_uri: str | None) -> Path:
    """The model folder of `uri` (a folder, runs:/ or models:/) on this disk."""
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


def read_model_file(folder: Path) -> tuple[Any, dict[str, Any] | None, str | None]:
    """The MLmodel file's metadata, its pytorch flavour's configuration (None: no such flavour) and the id of
    the LoggedModel it was logged as (None: saved, not logged)."""
    from mlflow.models import Model

    try:
        mlmodel = Model.load(str(folder))
    except Exception as exc:  # noqa: BLE001 - a broken YAML or schema: either way not a model we can use
        raise InputError(f"{folder / 'MLmodel'}: not a readable MLflow model file ({first_line(exc)})") from exc
    return mlmodel.metadata, mlmodel.flavors.get("pytorch"), mlmodel.model_id


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


def load_exported(folder: Path):
    """The torch.export graph of a model folder, with MLflow's pickle check on (raises what MLflow raises)."""
    import mlflow.pytorch

    with _pickle_refused():
        return mlflow.pytorch.load_model(str(folder))
