"""`coroseg train --resume RUN_ID|RECORD_DIR`: find the run's local record, take its recorded configuration, and
refuse when what was asked for, or the data, is no longer what the run was trained with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coroseg.config import TrainConfig, resolve
from coroseg.errors import InputError
from coroseg.tracking import layout
from coroseg.training.state import TrainingState, load_state

# May differ from the recorded run: where and how it is recorded or run, not what is trained. `data` may name
# another folder (a moved copy): the data digest decides whether it holds the same frames.
FREE_KEYS = frozenset({"data", "tracking", "tracking_uri", "experiment", "device", "compile", "loader_workers",
                       "output_dir", "system_metrics", "register"})
RECORDED_CONFIG = f"{layout.artifact_dir('config')}/config.yaml"
RECORDED_DATA = f"{layout.artifact_dir('config')}/data.json"
CROSS_VALIDATION_SUMMARY = f"{layout.artifact_dir('summary')}/cross_validation.json"


@dataclass
class Resume:
    record_dir: Path
    state: TrainingState | None  # None: a cross-validation run's parent (its folds hold their own states)
    data_digest: str
    run_id: str | None          # the MLflow run to carry on; None when none was created (it is created now)


def run_id_of(record: Path) -> str | None:
    """The run id the uploader recorded once it created the run (the record's one source of it)."""
    info = record / layout.RECORD_FILE
    try:
        return json.loads(info.read_text()).get("run_id") if info.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def find_record(target: str, output_dir: str) -> Path:
    """A record folder as given, or the record under `output_dir` of the run with that id."""
    path = Path(target)
    if path.is_dir():
        if not (path / RECORDED_CONFIG).is_file():
            raise InputError(f"{path}: not the local record of a training run (no {RECORDED_CONFIG})")
        return path
    candidates = [p for p in Path(output_dir).glob("*") if p.is_dir() and run_id_of(p) == target]
    if not candidates:
        raise InputError(f"--resume {target}: no such record folder, and no record of that run id under "
                         f"{output_dir}/ (give the record folder, or --output-dir where it is)")
    return max(candidates)


def _recorded(record: Path) -> tuple[dict[str, Any], str]:
    try:
        config = yaml.safe_load((record / RECORDED_CONFIG).read_text())
        digest = json.loads((record / RECORDED_DATA).read_text())["digest_sha256"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise InputError(f"{record}: cannot read the recorded configuration ({exc})") from exc
    return config, digest


def resume_config(record: Path, config_file: str | None, flags: dict[str, Any]) -> TrainConfig:
    """The recorded configuration with the flags given; a flag that changes what is trained is refused, with
    the keys named."""
    if config_file is not None:
        raise InputError("--resume takes the run's recorded configuration; --config cannot be combined with it")
    config = resolve(record / RECORDED_CONFIG, **flags)
    recorded = resolve(record / RECORDED_CONFIG)
    differing = sorted(k for k, v in config.to_dict().items()
                       if k not in FREE_KEYS and v != getattr(recorded, k))
    if differing:
        shown = ", ".join(f"{k} ({getattr(recorded, k)!r} recorded, {getattr(config, k)!r} asked)" for k in differing)
        raise InputError(f"--resume {record}: the run was trained with other settings: {shown}")
    if config.tracking_uri and "***" in config.tracking_uri and flags.get("tracking_uri") is None:
        config.tracking_uri = None      # recorded without its secret: MLFLOW_TRACKING_URI or the default then
    return config


def finished(record: Path) -> bool:
    """The run of this record (one training, or a fold) ended with its summary written."""
    return (record / layout.artifact_dir("summary") / "summary.json").is_file()


def load_resume(record: Path, folds: int = 1) -> Resume:
    _, digest = _recorded(record)
    if finished(record) or (record / CROSS_VALIDATION_SUMMARY).is_file():
        raise InputError(f"--resume {record}: this run finished; there is nothing to resume")
    if folds > 1:
        return Resume(record, None, digest, run_id_of(record))
    state = load_state(record)
    if state is None:
        raise InputError(f"--resume {record}: no epoch of this run finished; there is nothing to resume, start again")
    return Resume(record, state, digest, run_id_of(record))


def check_data(resume: Resume, digest: str) -> None:
    if digest != resume.data_digest:
        raise InputError(f"--resume {resume.record_dir}: the data differ from the run's (data digest "
                         f"{resume.data_digest[:12]}… recorded, {digest[:12]}… now)")
