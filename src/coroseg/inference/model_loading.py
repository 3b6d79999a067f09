"""Loading a logged model by URI (runs:/, models:/, or a local MLflow model folder), safely.

A model folder can come from anyone (a shared server, a colleague's disk), so loading it must never run
code. Only two forms are accepted:
- coroseg's own: metadata naming a known family + safetensors weights, loaded into a freshly built MONAI
  network (any device, bf16 on CUDA, and seconds faster than the graph);
- a torch.export (pt2) archive, which MLflow checks to be free of pickle records first (the CLI sets
  MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false, see mlflow_env.py; tracking/model_store.py sets it around
  the load too).
The metadata is read into a checked `ModelSpec` (model_spec.py) before anything is built from it.
Pickled models (`data/model.pth`) and folders that bundle code are refused with one line saying why.
"""

from __future__ import annotations

import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coroseg.errors import InputError, first_line
from coroseg.model_spec import ModelSpec
from coroseg.tracking import model_store
from coroseg.tracking.layout import WEIGHTS_FILE
from coroseg.tracking.redact import redact_text

log = logging.getLogger("coroseg")

EXPORTED_FILE = "model.pt2"        # where mlflow.pytorch keeps a torch.export archive, in its model_data folder
PICKLED_FILE = "model.pth"         # ... and a pickled model, which we never load


@dataclass
class LoadedModel:
    module: torch.nn.Module
    spec: ModelSpec
    uri: str
    model_id: str | None = None      # the MLflow LoggedModel it was logged as: evaluations link their metrics to it


def _exported_graph(folder: Path, conf: dict[str, Any] | None) -> torch.nn.Module:
    """The torch.export graph of an MLflow pytorch model; a pickled model or bundled code is refused."""
    where = folder / "MLmodel"
    if conf is None:
        raise InputError(f"{where}: neither coroseg weights (data/{WEIGHTS_FILE}) nor a PyTorch flavour; coroseg "
                         "loads only its own models and PyTorch models")
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
        return model_store.load_exported(folder)
    except Exception as exc:  # noqa: BLE001 - MLflow's pickle check, a corrupt zip, a bad graph: all 'unusable'
        record = re.search(r"record '([^']+)'.*not a pickle-free payload", str(exc))
        if record:   # MLflow's own advice (allow pickle) would be wrong here
            raise InputError(f"{data / EXPORTED_FILE}: record {record.group(1)!r} of the archive is a pickle, "
                             "not tensors; refused: coroseg never unpickles") from exc
        raise InputError(f"{data / EXPORTED_FILE}: cannot load the exported model ({first_line(exc)})") from exc


def _built(spec: ModelSpec, where: Path) -> torch.nn.Module:
    try:
        return spec.build()
    except Exception as exc:  # noqa: BLE001 - recorded arguments MONAI does not accept
        raise InputError(f"{where}: cannot build the recorded {spec.family} architecture ({first_line(exc)})") from exc


def load_model(uri: str, device: torch.device, tracking_uri: str | None = None) -> LoadedModel:
    from coroseg.training.checkpoint import fit_weights, load_weights

    folder = model_store.local_copy(uri, tracking_uri)
    metadata, conf, model_id = model_store.read_model_file(folder)
    where = folder / "MLmodel"
    spec = ModelSpec.from_metadata(metadata, where)
    weights = next((w for w in (folder / "data" / WEIGHTS_FILE, folder / "extra_files" / WEIGHTS_FILE)
                    if w.is_file()), None)     # in data/ since models are pipelines, in extra_files/ before
    if spec.family is not None and weights is not None:   # the fast path: seconds faster than the exported graph
        return LoadedModel(load_weights(weights, _built(spec, where), spec.family).to(device).eval(), spec, uri,
                           model_id)
    exported = _exported_graph(folder, conf)
    if spec.family is None:
        log.warning("%s: model has no coroseg metadata; running the exported graph on the CPU", redact_text(uri))
        return LoadedModel(exported, spec, uri, model_id)
    model = fit_weights(_built(spec, where), exported.state_dict(), where, spec.family)
    return LoadedModel(model.to(device).eval(), spec, uri, model_id)
