"""The command line (stable: scripts and checks call it). Every command that makes a run prints
`run_id: <id>` as its last line of standard output; progress and messages go to standard error."""

from __future__ import annotations

import gc
import logging
import sys
from functools import partial, wraps
from pathlib import Path

import click

from coroseg import mlflow_env
from coroseg.config import (AUTO_FOLDS, AUTO_FOLDS_MAX_FRAMES, NATIVE, ONE_SPLIT_SCHEDULE, PER_FOLD_SCHEDULE, PRESETS,
                            TrainConfig)
from coroseg.errors import InputError, first_line
from coroseg.data.pairs import FORMATS
from coroseg.export import FORMATS as EXPORT_FORMATS, export_model   # light: the model loads lazily
from coroseg.inference.predictor import DEFAULT_TTA
from coroseg.models import FAMILIES
from coroseg.tracking.redact import RedactingFilter, redact_text
from coroseg.training.initial_weights import BUILTIN
from coroseg.training.losses import LOSSES

mlflow_env.apply()   # before anything imports MLflow or reaches a server


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("coroseg")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.getLogger("alembic").setLevel(logging.WARNING)


_DEFAULTS = TrainConfig()


def _default(text: str, name: str) -> str:
    """Help text with the default taken from the config module, the one place defaults live."""
    return f"{text}  [default: {getattr(_DEFAULTS, name)}]".strip()


def user_errors(func):
    """Bad input ends the command with one line on stderr and exit code 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            click.echo(f"coroseg: error: {redact_text(str(exc))}", err=True)
            sys.exit(2)

    return wrapper


def _print_run(run_id: str | None, tracking_failed: bool, lines: list[str]) -> None:
    """The outcome lines, then `run_id: ...` last; `none` when there is no complete MLflow run to open."""
    for line in lines:
        click.echo(line)
    if tracking_failed:
        partial = f"; MLflow holds an incomplete run {run_id}" if run_id else ""
        click.echo(f"run_id: none (tracking failed{partial})")
    else:
        click.echo(f"run_id: {run_id or 'none (not tracked)'}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="coroseg")
def main() -> None:
    """Coronary-artery segmentation for X-ray angiograms, with every run recorded in MLflow.

    Runs go to an embedded SQLite store (./mlflow.db) unless --tracking-uri or MLFLOW_TRACKING_URI
    names another; `coroseg ui` shows them.
    """
    _setup_logging()
    _check_settings()


def _check_settings() -> None:
    """COROSEG_* settings are read where used; a bad one is an error here, before any work or run."""
    from coroseg.data.imageio import max_pixels
    from coroseg.tracking.uploader import drain_seconds

    try:
        max_pixels()
        drain_seconds()
    except InputError as exc:
        click.echo(f"coroseg: error: {exc}", err=True)
        sys.exit(2)


@main.result_callback()
def _quick_exit(*_args, **_kwargs) -> None:
    """Freeze the objects left for the interpreter's exit: its last garbage collection over torch, MONAI and
    MLflow objects otherwise costs 3-4 s after the work is done."""
    gc.freeze()


@main.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to write N.png + N_gt.png into.")
@click.option("--count", default=20, show_default=True, type=click.IntRange(min=1), help="Number of frames.")
@click.option("--size", default=300, show_default=True, type=click.IntRange(min=64, max=2048), help="Side in pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same frames.")
@user_errors
def synth(out: str, count: int, size: int, seed: int) -> None:
    """Write synthetic X-ray angiograms with exact vessel masks (never overwrites a file)."""
    from coroseg.data.synthetic import write_synthetic_set

    try:
        paths = write_synthetic_set(out, count=count, size=size, seed=seed)
    except FileExistsError as exc:
        raise InputError(f"{exc.filename or exc}: already exists; choose an empty --out folder") from exc
    click.echo(f"wrote {len(paths)} frames with masks to {out}")


MODEL_HELP = ("runs:/<run_id>/pytorch_model, models:/<name>/<version>, models:/<name>@champion, or a local MLflow "
              "model folder.")


def _tracking_options(func, experiment_help: str = _default("MLflow experiment name.", "experiment")):
    func = click.option("--experiment", default=None, help=experiment_help)(func)
    func = click.option("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")(func)
    return func


class _WordOrNumber(click.ParamType):
    """A word (auto, native), or a whole number of at least `least` (--folds, --epochs, --patience, --image-size)."""

    def __init__(self, word: str, least: int, number: str = "N") -> None:
        self.word, self.least, self.name = word, least, f"{word}|{number}"

    def convert(self, value, param, ctx):
        if value == self.word or (isinstance(value, int) and value >= self.least):
            return value
        try:
            number = int(value)
        except ValueError:
            number = self.least - 1
        if number < self.least:
            self.fail(f"{value!r} is neither {self.word} nor a whole number of at least {self.least}", param, ctx)
        return number


_AUTO_COUNT = _WordOrNumber("auto", 1)
_SIDE = _WordOrNumber(NATIVE, 32, "SIDE")
_FOLDS_HELP = ("K > 1: K-fold cross-validation: a parent run whose model is the folds' ensemble (the mean of their "
               "networks), one nested run per fold; 1: one train/validation split.  [default: auto: "
               f"{AUTO_FOLDS} for a real data set of {2 * AUTO_FOLDS} to {AUTO_FOLDS_MAX_FRAMES} frames, else 1]")
_PRESET_HELP = ("Named values for options not given (a --config file and flags override them); best: the best "
                "recipe measured (README, Quality): " + (", ".join(f"{k} {v}" for k, v in PRESETS["best"].items())
                                                         .replace("_", "-") or "the default's own values") + ".")
_SCHEDULE_HELP = ("  [default: auto: {} for one split, {} for each fold of a fold ensemble]")
_MASK_CLASSES_HELP = ("YOLO labels: class ids or data.yaml names (comma-separated, or 'all') that form the vessel "
                      "mask.  [default: every class but one named stenosis]")


@main.command()
@click.option("--preset", default=None, type=click.Choice(list(PRESETS)), help=_PRESET_HELP)
@click.option("--data", default=None, help=_default("'synthetic', or a folder of N.png + N_gt.png (or images/ + masks/).", "data"))
@click.option("--data-format", default=None, type=click.Choice(FORMATS), help=_default("Layout of the --data folder.", "data_format"))
@click.option("--mask-classes", default=None, metavar="IDS|NAMES", help=_MASK_CLASSES_HELP)
@click.option("--model-family", default=None, help=_default(", ".join(FAMILIES) + ".", "model_family"))
@click.option("--width", default=None, type=click.IntRange(4, 128), help=_default("Channels of the network's first level; deeper levels scale with it.", "width"))
@click.option("--deep-supervision/--no-deep-supervision", "deep_supervision", default=None, help=_default("dynunet: train its two next-coarser decoder levels' outputs too, the loss weighing them 1/2 and 1/4 (measured on CIMAT: README, Quality).", "deep_supervision"))
@click.option("--compile", "compile", default=None, type=click.Choice(["auto", "yes", "no"]), help=_default("torch.compile and channels_last for training; auto: on CUDA.", "compile"))
@click.option("--init", default=None, metavar="auto|none|" + "|".join(BUILTIN) + "|MODEL_URI", help=_default("The weights training starts from: auto: coroseg's built-in arcade-v2 (the default network trained on 200 real ARCADE frames) for real frames and that network, else random; none: random; arcade-v1 or arcade-v2 by name; or a model URI to fine-tune (e.g. synthetic pretraining).", "init"))
@click.option("--folds", default=None, metavar="auto|K", type=_AUTO_COUNT, help=_FOLDS_HELP)
@click.option("--field-of-view/--no-field-of-view", "field_of_view", default=None, help=_default("Detect each frame's circular field of view; outside it: no loss, no metric, always background.", "field_of_view"))
@click.option("--clahe/--no-clahe", default=None, help=_default("Contrast-limited adaptive histogram equalisation of every frame (predict does the same).", "clahe"))
@click.option("--xray-augment/--no-xray-augment", "xray_augment", default=None, help=_default("Add training augmentation modelled on X-ray physics: contrast-agent strength, overlying anatomy, scatter and quantum noise, in the attenuation domain (measured on CIMAT: no gain; README, Quality).", "xray_augment"))
@click.option("--loss", default=None, type=click.Choice(list(LOSSES)), help=_default("Training loss.", "loss"))
@click.option("--epochs", default=None, metavar="auto|N", type=_AUTO_COUNT, help="Maximum epochs." + _SCHEDULE_HELP.format(ONE_SPLIT_SCHEDULE[0], PER_FOLD_SCHEDULE[0]))
@click.option("--image-size", default=None, metavar=_SIDE.name, type=_SIDE, help=_default("Frames are resized to this side; native: the first frame's own side, rounded up to the network's divisor.", "image_size"))
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help=_default("", "batch_size"))
@click.option("--learning-rate", default=None, type=click.FloatRange(min=0, min_open=True), help=_default("AdamW learning rate.", "learning_rate"))
@click.option("--ema-epochs", default=None, type=click.FloatRange(min=0), help=_default("Validate, keep and save a moving average of the weights with this time constant in epochs (0: the weights as trained).", "ema_epochs"))
@click.option("--patience", default=None, metavar="auto|N", type=_AUTO_COUNT, help="Early stop after this many epochs without a better val Dice." + _SCHEDULE_HELP.format(ONE_SPLIT_SCHEDULE[1], PER_FOLD_SCHEDULE[1]))
@click.option("--seed", default=None, type=int, help=_default("Same seed, same split and initial weights.", "seed"))
@click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]), help=_default("", "device"))
@click.option("--loader-workers", default=None, type=click.IntRange(min=0), help="Processes reading batches from the frame cache ahead of the loop (0: the loop reads).  [default: up to 4 on a GPU machine, 1 on a CPU, 0 on 2 cores; none when the frames fit in GPU memory]")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="YAML file of options; flags override it.")
@click.option("--output-dir", default=None, help=_default("Where the local record of each run is kept.", "output_dir"))
@_tracking_options
@click.option("--run-name", default=None, help="MLflow run name.  [default: FAMILY-DATE-TIME]")
@click.option("--register", default=None, metavar="NAME",
              help="Register the model as a new version of NAME; alias 'champion' when its val Dice beats the "
                   "champion's, else 'challenger'.")
@click.option("--no-tracking", is_flag=True, help="Record nothing in MLflow (the local record is still written).")
@click.option("--resume", default=None, metavar="RUN_ID|RECORD_DIR",
              help="Carry on a stopped run (killed, preempted, Ctrl-C) from its last finished epoch, in the same "
                   "MLflow run, with its recorded configuration.")
@user_errors
def train(config_file, no_tracking, resume, **flags) -> None:
    """Train a vessel segmentation model; the run is recorded in MLflow in the hierarchical layout.

    SIGTERM or Ctrl-C stops at the next batch, closes the run as KILLED and prints the --resume command
    (exit code 128 + the signal number); a second Ctrl-C quits at once.
    """
    outcome = _training(lambda: _train_or_resume(config_file, resume,
                                                 {**flags, "tracking": False if no_tracking else None}))
    if outcome.rank != 0:           # under torchrun rank 0 prints the run; the others trained beside it
        return
    lines = [f"best_val_dice: {outcome.best_val_dice:.4f}", f"local_record: {outcome.record_dir}",
             f"model_uri: {outcome.model_uri}"]
    if outcome.cross_validation:   # model_uri is then the folds' ensemble, best_val_dice the best fold's
        lines = [f"{k}: {v:.4f}" for k, v in outcome.cross_validation.items()] + lines
    _print_run(outcome.run_id, outcome.tracking_failed, lines)


def _training(start):
    """`start()`'s outcome; a stop by signal prints how to resume and exits 128 + the signal. Under torchrun
    only rank 0 prints, and every rank leaves the process group."""
    from coroseg.training.distributed import leave, world_of_launcher
    from coroseg.training.trainer import TrainingInterrupted

    try:
        return start()
    except TrainingInterrupted as stopped:
        if world_of_launcher().main:
            _print_stopped(stopped)
        sys.exit(128 + stopped.signum)
    finally:
        leave()


def _train_or_resume(config_file, resume: str | None, flags: dict):
    from coroseg.config import TrainConfig, resolve
    from coroseg.training.resume import find_record, load_resume, resume_config
    from coroseg.training.run import resume_training, run_training

    if resume is None:
        return run_training(resolve(config_file, **flags))
    record = find_record(resume, flags.get("output_dir") or TrainConfig().output_dir)
    config = resume_config(record, config_file, flags)
    return resume_training(config, load_resume(record, config.folds))


def _print_stopped(stopped) -> None:
    """A stopped run: how to carry it on (stdout, for scripts), then its run id last."""
    command = f"coroseg train --resume {stopped.record_dir}"
    click.echo(f"stopped: resume with `{command}`", err=True)
    click.echo(f"resume: {command}")
    click.echo(f"run_id: {stopped.run_id or 'none (not tracked)'}")


_FORMAT_HELP = "Layout of the data folder; auto detects it and says what it found."


@main.command("check-data")
@click.argument("folder", type=click.Path())
@click.option("--data-format", default="auto", show_default=True, type=click.Choice(FORMATS), help=_FORMAT_HELP)
@click.option("--mask-classes", default=None, metavar="IDS|NAMES", help=_MASK_CLASSES_HELP)
@user_errors
def check_data_command(folder: str, data_format: str, mask_classes: str | None) -> None:
    """Count pairs, sizes and vessel fraction of a data folder and list every problem (exit 1 if any)."""
    from coroseg.data.check import check_data

    report = check_data(folder, data_format, mask_classes)
    for line in report.lines():
        click.echo(line)
    sys.exit(1 if report.problems else 0)


def _inference_options(func):
    func = click.option("--tta/--no-tta", default=DEFAULT_TTA, show_default=True, help="Test-time augmentation: average over the frame and its 3 mirror images (4x the network time).")(func)
    func = click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))(func)
    func = click.option("--resolution", default=None, type=click.IntRange(min=16),
                        help="Side frames are resized to before inference.  [default: the model's training size]")(func)
    return click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))(func)


@main.command()
@click.option("--model", "model_uri", required=True, help=MODEL_HELP)
@click.option("--input", "input_path", required=True, type=click.Path(), help="An image file or a folder of images (*_gt masks beside them are not inputs).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Folder for masks, overlays and per-file JSON.")
@_inference_options
@click.option("--overwrite", is_flag=True, help="Allow writing into an --output that already holds predictions.")
@_tracking_options
@click.option("--no-tracking", is_flag=True, help="Write the outputs only; record no MLflow run.")
@user_errors
def predict(model_uri, input_path, output, batch_size, resolution, device, tta, overwrite, tracking_uri, experiment,
            no_tracking) -> None:
    """Segment vessels in new frames; the run is recorded with the inference layout."""
    from coroseg.inference.predict import InferenceOptions, run_prediction

    options = InferenceOptions(model_uri, output, batch_size, resolution, device, overwrite, tracking_uri,
                               experiment or _DEFAULTS.experiment, not no_tracking, tta)
    outcome = run_prediction(options, input_path)
    _print_run(outcome.run_id, outcome.tracking_failed, [f"files_processed: {outcome.files}", f"output: {output}"])


@main.command()
@click.option("--model", "model_uri", required=True, help=MODEL_HELP)
@click.option("--data", required=True, type=click.Path(), help="Folder of N.png + N_gt.png (or images/ + masks/, DCA1, ARCADE).")
@click.option("--data-format", default="auto", show_default=True, type=click.Choice(FORMATS), help=_FORMAT_HELP)
@click.option("--mask-classes", default=None, metavar="IDS|NAMES", help=_MASK_CLASSES_HELP)
@click.option("--output", default=None, type=click.Path(file_okay=False), help="Folder for predictions and per-image metrics.  [default: coroseg_runs/DATE-evaluate]")
@_inference_options
@_tracking_options
@click.option("--no-tracking", is_flag=True, help="Write the outputs only; record no MLflow run.")
@user_errors
def evaluate(model_uri, data, data_format, mask_classes, output, batch_size, resolution, device, tta, tracking_uri, experiment,
             no_tracking) -> None:
    """Predict on labelled frames and record Dice, IoU, precision and recall per image and on average."""
    from coroseg.evaluation.evaluate import run_evaluation
    from coroseg.inference.predict import InferenceOptions

    options = InferenceOptions(model_uri, output, batch_size, resolution, device, False, tracking_uri,
                               experiment or _DEFAULTS.experiment, not no_tracking, tta)
    outcome = run_evaluation(options, data, data_format, mask_classes)
    lines = [f"{k}: {v:.4f}" for k, v in outcome.means.items()] + [f"output: {outcome.output}"]
    _print_run(outcome.run_id, outcome.tracking_failed, lines)


@main.command()
@click.argument("record_dirs", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@click.option("--tracking-uri", default=None,
              help="Where to send (default: MLFLOW_TRACKING_URI, else the URI the record was made with).")
@user_errors
def sync(record_dirs: tuple[Path, ...], tracking_uri: str | None) -> None:
    """Send what local records hold and MLflow lacks (default: every record under coroseg_runs/ with pending
    entries, fold records included), into the same run, or a new one where the server has no such run."""
    from coroseg.tracking.sync import find_records, sync_record

    records = find_records(list(record_dirs), Path(_DEFAULTS.output_dir))
    if not records:
        click.echo(f"nothing to sync under {_DEFAULTS.output_dir}/")
    failed, last_run = 0, None
    for record in records:
        try:
            result = sync_record(record, tracking_uri)
        except Exception as exc:  # noqa: BLE001 - one record's server failing must not stop the others
            failed += 1
            click.echo(f"{record}: not synced ({type(exc).__name__}: {redact_text(first_line(exc))})", err=True)
            continue
        click.echo(result.line())
        if result.run_id and (last_run is None or len(record.parts) <= len(last_run[0].parts)):
            last_run = (record, result.run_id)       # the outermost record's run (a parent over its folds)
    click.echo(f"run_id: {last_run[1] if last_run else 'none (nothing synced)'}")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--backend-store-uri", default=None, help="Store to show.  [default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db]")
def ui(port: int, backend_store_uri: str | None) -> None:
    """Open the MLflow UI for this folder's runs, on 127.0.0.1 only."""
    from coroseg.ui import serve

    sys.exit(serve(port, backend_store_uri))




@main.command()
@click.option("--model", "model_uri", required=True, help=MODEL_HELP)
@click.option("--format", "fmt", required=True, type=click.Choice(list(EXPORT_FORMATS)), help="onnx (onnxruntime, TensorRT...) or torchscript (torch.jit.load, LibTorch in C++).")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="File to write; the model spec goes beside it as OUTPUT.spec.json.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file and its spec.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI for runs:/ and models:/ (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@user_errors
def export(model_uri: str, fmt: str, output: str, overwrite: bool, tracking_uri: str | None) -> None:
    """Export a model's network for use outside Python: prepared (N,1,H,W) float32 frames in, vessel
    probabilities out, any batch and size; checked against the model before it is written."""
    outcome = export_model(model_uri, fmt, output, overwrite, tracking_uri)
    click.echo(f"max_abs_difference: {outcome.max_abs_difference:.3g}")
    click.echo(f"export_seconds: {outcome.seconds:.1f}")
    click.echo(f"output: {outcome.output}")
    click.echo(f"spec: {outcome.spec}")


@main.command()
@click.argument("run_id")
@click.option("--data", default=None, type=click.Path(file_okay=False),
              help="A copy of the run's data folder elsewhere; its frames must give the recorded data digest.  "
                   "[default: the folder the run read]")
@click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]),
              help="[default: the run's]  On another kind of device the result differs slightly.")
@click.option("--output-dir", default=None, help=_default("Where the local record of the new run is kept.", "output_dir"))
@partial(_tracking_options, experiment_help="MLflow experiment of the new run.  [default: the original run's]")
@click.option("--run-name", default=None, help="MLflow name of the new run.  [default: ORIGINAL-reproduction]")
@user_errors
def reproduce(run_id: str, **overrides) -> None:
    """Train run RUN_ID again from its own record in MLflow: its recorded configuration (seed included), data
    source and data digest, into a new run tagged coroseg.reproduces=RUN_ID (in the store of --tracking-uri,
    where RUN_ID is read).

    Refused before any training when the data no longer give the recorded digest; a warning names the code and
    library versions that differ from the recorded ones. `matches_original` says whether every epoch's
    val_dice (of a cross-validation run: the fold summary) is exactly the original's; on a CPU with the
    recorded versions it is.
    """
    from coroseg.training.reproduce import Overrides, reproduce as reproduce_run

    reproduction = _training(lambda: reproduce_run(run_id, Overrides(**overrides)))
    outcome = reproduction.outcome
    if outcome.rank != 0:
        return
    lines = [f"{k}: {v:.4f}" for k, v in (outcome.cross_validation or {}).items()]
    lines += [f"best_val_dice: {outcome.best_val_dice:.4f}", f"local_record: {outcome.record_dir}",
              f"model_uri: {outcome.model_uri}", f"reproduces: {reproduction.original_run_id}",
              f"matches_original: {reproduction.comparison}"]
    _print_run(outcome.run_id, outcome.tracking_failed, lines)
