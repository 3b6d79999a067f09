"""`coroseg reproduce RUN_ID`: train again from a run's own record in MLflow (its recorded configuration, data
source and data digest) into a new run tagged with the original's id, and say whether the result is the same.

Refused before anything is trained when the data no longer give the recorded digest; a warning names the code
and library versions that differ from the recorded ones (the training may then differ).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from coroseg.config import TrainConfig, resolve
from coroseg.data.dataset import TrainingData
from coroseg.errors import InputError
from coroseg.tracking import layout
from coroseg.tracking.environment import environment, environment_params, resolve_device
from coroseg.tracking.run_reader import RunReader, StoredRun
from coroseg.training.distributed import world_of_launcher
from coroseg.training.initial_weights import BUILTIN
from coroseg.training.resume import RECORDED_CONFIG, RECORDED_DATA
from coroseg.training.run import TrainingOutcome, run_training

log = logging.getLogger("coroseg")

REPRODUCES_TAG = "coroseg.reproduces"        # on the new run: the id of the run it reproduces
CV_RESULTS = "cv_best_val_dice_"            # a cross-validation run's results compared: mean and sd over folds
# What ran the original, as recorded in its params (tracking/environment.py): a difference may change the result.
VERSION_KEYS = ("coroseg_version", "git_commit", "python_version", "torch_version", "monai_version",
                "mlflow_version")


@dataclass(frozen=True)
class Overrides:
    """What may differ from the original: where the data now lie, where the run goes and runs; not the recipe."""
    data: str | None = None
    device: str | None = None
    output_dir: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None


@dataclass
class Original:
    run: StoredRun
    config: TrainConfig          # as recorded
    data_source: str             # the folder it read (absolute), or synthetic(...)
    data_digest: str
    results: dict[str, float]    # what the reproduction is compared with: per-epoch val_dice, or the fold summary


@dataclass
class Reproduction:
    outcome: TrainingOutcome
    original_run_id: str
    comparison: str              # `yes (...)`, `no (...)`, or `unknown (...)` when the original recorded none


def read_original(reader: RunReader, run_id: str) -> Original:
    """The run, checked to be a whole coroseg training run, with its recorded configuration and data."""
    run = reader.run(run_id)
    task = run.tags.get("task")
    if task != layout.TRAINING_TAGS["task"]:
        raise InputError(f"run {run_id}: not a coroseg training run (tag task={task or 'unset'}, "
                         f"{layout.TRAINING_TAGS['task']} expected)")
    if run.parent_run_id:
        raise InputError(f"run {run_id}: a fold of cross-validation run {run.parent_run_id}; reproduce that run "
                         "(its folds are trained again with it)")
    with tempfile.TemporaryDirectory(prefix="coroseg-reproduce-") as folder:
        config = _recorded_config(reader.download(run_id, RECORDED_CONFIG, Path(folder)), run_id)
        data_run = run
        if config.folds > 1:                          # the folds, not the parent, record the data they read
            folds = reader.children(run)
            if not folds:
                raise InputError(f"run {run_id}: no fold of this cross-validation run is recorded; nothing "
                                 "holds its data digest")
            data_run = folds[0]
        data = _recorded_data(reader.download(data_run.run_id, RECORDED_DATA, Path(folder)), data_run.run_id)
    if config.folds > 1:
        results = {k: v for k, v in run.metrics.items() if k.startswith(CV_RESULTS)}
    else:
        results = {f"epoch {step}": value for step, value in reader.metric_history(run_id, "val_dice")}
    return Original(run, config, data["source"], data["digest_sha256"], results)


def _recorded_config(path: Path, run_id: str) -> TrainConfig:
    try:
        return resolve(path)
    except InputError as exc:      # e.g. an option this version of coroseg no longer knows
        message = str(exc).replace(str(path), RECORDED_CONFIG)
        raise InputError(f"run {run_id}: its recorded configuration cannot be used ({message})") from exc


def _recorded_data(path: Path, run_id: str) -> dict:
    try:
        data = json.loads(path.read_text())
        if isinstance(data.get("source"), str) and isinstance(data.get("digest_sha256"), str):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    raise InputError(f"run {run_id}: its {RECORDED_DATA} does not name the data source and digest")


def reproduction_config(original: Original, overrides: Overrides) -> TrainConfig:
    """The recorded configuration, with only where the data lie and where and how the run is recorded changed.
    Never registered: a reproduction must not move a registered model's champion alias."""
    recorded = original.config
    return replace(
        recorded,
        data=_data_source(original, overrides.data),
        device=overrides.device or recorded.device,
        output_dir=overrides.output_dir or TrainConfig().output_dir,
        tracking=True,
        tracking_uri=overrides.tracking_uri,          # where the original was read; None: the same default
        experiment=overrides.experiment or original.run.experiment,
        run_name=overrides.run_name or f"{original.run.run_name}-reproduction",
        register=None,
    )


def _data_source(original: Original, moved: str | None) -> str:
    run_id = original.run.run_id
    if original.config.data == "synthetic":
        if moved not in (None, "synthetic"):
            raise InputError(f"--data {moved}: run {run_id} trained on synthetic frames, generated again from its "
                             "seed; there is no data folder to give")
        return "synthetic"
    folder = moved or original.data_source
    if not Path(folder).is_dir():
        if moved:
            raise InputError(f"--data {moved}: no such folder")
        raise InputError(f"{folder}: the data folder of run {run_id} no longer exists; give --data with a copy "
                         "of the same frames")
    return folder


def warn_differences(original: StoredRun, env: dict, device: str) -> None:
    """Warnings of what may make the result differ: one line naming every version of the code and its libraries
    that is not the recorded one; another device or number of processes; an original that did not finish."""
    now = environment_params({k: env[k] for k in VERSION_KEYS})
    differing = [f"{key[len('env_'):]} {original.params.get(key, 'unrecorded')} recorded, {value} now"
                 for key, value in now.items() if original.params.get(key) != str(value)]
    if differing:
        log.warning("reproduce %s: other versions than the run's (%s); the result may differ",
                    original.run_id, "; ".join(differing))
    recorded_device = original.params.get("env_device")
    if recorded_device is not None and recorded_device != device:
        log.warning("reproduce %s: the run trained on %s, this one on %s; the result will differ slightly",
                    original.run_id, recorded_device, device)
    processes, now_processes = original.params.get("world_size", "1"), str(world_of_launcher().size)
    if processes != now_processes:
        log.warning("reproduce %s: the run trained in %s processes (torchrun), this one in %s; the result will "
                    "differ", original.run_id, processes, now_processes)
    if original.status != "FINISHED":
        log.warning("reproduce %s: that run is %s, not FINISHED; it may hold fewer epochs than this one trains",
                    original.run_id, original.status)


def check_digest(original: Original, digest: str, config: TrainConfig) -> None:
    if digest != original.data_digest:
        frames = "the synthetic frames made now" if config.data == "synthetic" else f"the frames in {config.data}"
        raise InputError(f"reproduce {original.run.run_id}: {frames} differ from the run's (data digest "
                         f"{original.data_digest[:12]}… recorded, {digest[:12]}… now); nothing was trained")


def compare(original: Original, outcome: TrainingOutcome) -> str:
    """`yes` when every recorded result is exactly the reproduction's, else `no` with where they part."""
    if outcome.cross_validation is not None:
        now = {k: v for k, v in outcome.cross_validation.items() if k.startswith(CV_RESULTS)}
        what = "the fold summary"
    else:
        now, what = {f"epoch {e.epoch}": e.val_dice for e in outcome.history}, "val_dice"
    recorded = original.results
    if not recorded:
        return f"unknown (run {original.run.run_id} recorded no {what})"
    if set(now) != set(recorded):
        return f"no ({what}: {len(recorded)} values recorded, {len(now)} now)"
    differing = [k for k in recorded if recorded[k] != now[k]]
    if not differing:
        return f"yes ({what}: all {len(recorded)} values identical)"
    largest = max(abs(recorded[k] - now[k]) for k in differing)
    return f"no ({what} differs at {', '.join(differing)}; largest difference {largest:.3g})"


def reproduce(run_id: str, overrides: Overrides) -> Reproduction:
    """Check everything (run, configuration, data digest) before the new run is created, then train it."""
    original = read_original(RunReader(overrides.tracking_uri), run_id)
    config = reproduction_config(original, overrides)
    device = resolve_device(config.device)
    env = environment(device)
    warn_differences(original.run, env, str(device))
    if config.init is not None and not config.init.startswith("runs:/") and config.init not in BUILTIN:
        log.warning("reproduce %s: its initial weights are read again from %s, which may no longer hold the "
                    "model the run started from", run_id, config.init)
    def same_data(data: TrainingData) -> None:
        check_digest(original, data.digest, config)
        log.info("reproducing run %s (%s): data digest %s… as recorded", run_id, original.run.run_name,
                 original.data_digest[:12])

    outcome = run_training(config, tags={REPRODUCES_TAG: run_id}, check=same_data)
    return Reproduction(outcome, run_id, compare(original, outcome))
