"""CPU benchmark: training throughput, the cost of tracking, and the prediction rate.

Run it with ``make bench`` or ``.venv/bin/python bench/bench_cpu.py`` (``--quick`` for a smoke run
under a minute). Everything is written to a fresh temporary folder (MLflow SQLite store, artifacts,
local records, synthetic frames) that is removed at the end; nothing is written into the repository.

What the numbers mean (family ``unet``, batch size 8, the same 300 px synthetic pairs, seed 0):

- **train img/s**: the ``train_images_per_second`` metric of the epochs (augmentation, forward,
  backward, optimizer step; no validation, no recording), epoch 1 left out as warm-up when there are
  several epochs. Measured in a ``run_training`` call with tracking off.
- **tracking on / off**: the same ``run_training`` call made both ways in this process.
  ``epoch_duration_seconds`` is the metric the trainer records (train + validation, measured before
  the epoch is recorded); ``between epochs`` is the rest of an epoch's share of the loop's time (the run's
  ``training_duration_seconds`` less the epochs' durations, per epoch): its vessel metrics and its record;
  ``run_training wall`` is the whole call: data loading, run start, the loop with the recording of every
  epoch (metrics, overlays, curves, checkpoints), and the model (logged to MLflow when on, saved in the
  local record when off).
- **predict files/s**: ``run_prediction`` on a folder of 300 px synthetic frames with a model trained
  above, tracking on and off. ``whole call`` = files / wall time of the call (model loading, run start
  and closing included); ``metric`` = the ``processing_rate_files_per_second`` the command records
  (from after the model is loaded and the run started, to the end of the summary). Model loading is
  timed once on its own. Prediction runs alternate off/on ``--repeat`` times; the best rate is kept.

The line above the table says how much CPU other processes took during the run: on a shared
2-core machine, torch's threads then wait on each other and every number here can be many times
worse (``--threads 1`` is steadier under load). A fresh MLflow store is created (and ``mlflow``
imported) before any timing, so neither one-off cost is counted as tracking overhead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coroseg.config import resolve
from coroseg.data.synthetic import write_synthetic_set
from coroseg.inference.model_loading import load_model
from coroseg.inference.predict import InferenceOptions, run_prediction
from coroseg.tracking import layout
from coroseg.training.run import run_training

BATCH_SIZE = 8
FAMILY = "unet"


@dataclass
class TrainTiming:
    """One run_training call: the loop's own history and the wall time of the whole call."""

    image_size: int
    history: list = field(default_factory=list)
    wall: float = 0.0
    model_uri: str = ""
    training_seconds: float = 0.0      # the loop, its recording included (the run's training_duration_seconds)

    def images_per_second(self) -> float:
        rates = [e.train_images_per_second for e in self.history[1:] or self.history]  # epoch 1 is warm-up
        return statistics.mean(rates)

    def durations(self) -> list[float]:
        return [e.epoch_duration_seconds for e in self.history]

    def between_epochs(self) -> float:
        """Seconds an epoch outside its training and validation: recording it (metrics, overlays, curves,
        the resume state) and its vessel metrics."""
        return (self.training_seconds - sum(self.durations())) / len(self.history)


def time_training(tmp: Path, data: Path, image_size: int, epochs: int, tracking: bool) -> TrainTiming:
    config = resolve(None, data=str(data), folds=1, model_family=FAMILY, image_size=image_size, epochs=epochs,
                     batch_size=BATCH_SIZE, patience=epochs, device="cpu", tracking=tracking,
                     tracking_uri=store_uri(tmp), output_dir=str(tmp / "records"),
                     run_name=f"bench-{image_size}-{'on' if tracking else 'off'}")
    outcome = run_training(config)
    summary = json.loads((outcome.record_dir / layout.artifact_dir("summary") / "summary.json").read_text())
    return TrainTiming(image_size, outcome.history, outcome.wall_seconds, outcome.model_uri,
                       summary["training_duration_seconds"])


def time_prediction(tmp: Path, frames: Path, model_uri: str, tracking: bool, attempt: int) -> tuple[float, float]:
    """(files/s over the whole call, the processing_rate_files_per_second metric)."""
    output = tmp / f"predict-{'on' if tracking else 'off'}-{attempt}"
    options = InferenceOptions(model_uri=model_uri, output=str(output), device="cpu", tracking=tracking,
                               tracking_uri=store_uri(tmp))
    t0 = time.perf_counter()
    outcome = run_prediction(options, str(frames))
    wall = time.perf_counter() - t0
    summary = json.loads((output / "inference" / "summary" / "summary.json").read_text())
    return outcome.files / wall, summary["processing_rate_files_per_second"]


def store_uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


def prepare_store(tmp: Path) -> None:
    """Create the SQLite store and the experiment (artifacts in tmp) before anything is timed."""
    import mlflow
    import mlflow.pytorch  # noqa: F401 - imported here so its import time is not counted later

    client = mlflow.MlflowClient(store_uri(tmp))
    client.create_experiment("coroseg", artifact_location=(tmp / "artifacts").as_uri())


def busy_seconds() -> tuple[float, float] | None:
    """(CPU seconds used by the whole machine, by this process) so far; None where /proc/stat is missing."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
    mine = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), mine.user + mine.system + mine.children_user + mine.children_system


def contention(start: tuple[float, float] | None, wall: float) -> str:
    """How much of the machine other processes used while the benchmark ran: timings are noisy when high."""
    end = busy_seconds()
    if start is None or end is None:
        return "other processes: unknown (no /proc/stat)"
    others = max(0.0, (end[0] - start[0]) - (end[1] - start[1]))
    return (f"other processes used {others:.0f} CPU-s during the {wall:.0f} s run "
            f"({100 * others / (wall * (os.cpu_count() or 1)):.0f}% of the machine; above ~10% the numbers are noisy)")


def versus(off: list[float], on: list[float]) -> str:
    """Mean seconds off / on and their ratio."""
    a, b = statistics.mean(off), statistics.mean(on)
    return f"{a:.2f} s / {b:.2f} s = {b / a:.2f}x"


def machine() -> str:
    return (f"machine: {platform.machine()} {platform.processor() or ''}".rstrip()
            + f", {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            + f"Python {platform.python_version()}")


def report(args, sizes: list[TrainTiming], off: TrainTiming, on: TrainTiming, load_s: float,
           predict: dict[bool, tuple[float, float]], n_frames: int) -> str:
    rows = [("measure", "value")]
    for t in sizes:
        rows.append((f"train img/s, {FAMILY} {t.image_size} px, batch {BATCH_SIZE}, {args.epochs} epochs",
                     f"{t.images_per_second():.1f}"))
    size = f"{off.image_size} px"
    rows += [
        (f"epoch_duration_seconds, {size}, tracking off / on", versus(off.durations(), on.durations())),
        (f"between epochs (recording, vessel metrics), {size}, off / on",
         versus([off.between_epochs()], [on.between_epochs()])),
        (f"run_training wall, {size}, {args.epochs} epochs, off / on", versus([off.wall], [on.wall])),
        ("model loading (load_model, once)", f"{load_s:.2f} s"),
    ]
    for tracking in (False, True):
        whole, metric = predict[tracking]
        way = "on" if tracking else "off"
        rows.append((f"predict files/s, {n_frames} x 300 px, tracking {way}, best of {args.repeat}",
                     f"{whole:.2f} whole call, {metric:.2f} metric"))
    wa, wb = (max(len(r[i]) for r in rows) for i in (0, 1))
    lines = [f"| {a:<{wa}} | {b:<{wb}} |" for a, b in rows]
    lines.insert(1, f"|{'-' * (wa + 2)}|{'-' * (wb + 2)}|")
    return "\n".join(lines)


def quiet() -> None:
    """No per-epoch log lines, MLflow chatter or library warnings in the benchmark's output."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - MLflow sets its logger's level on import; set ours after it

    for name in ("coroseg", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def predict_rates(tmp: Path, model_uri: str, repeat: int) -> dict[bool, tuple[float, float]]:
    """Best (whole call, metric) files/s with tracking off (False) and on (True)."""
    run_prediction(InferenceOptions(model_uri, str(tmp / "warm-up"), device="cpu", tracking=False),
                   str(tmp / "frames" / "1.png"))  # first-call costs are not the tracking's
    rates: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for attempt in range(repeat):  # alternated, so a burst of load hits both ways alike
        for tracking in rates:
            rates[tracking].append(time_prediction(tmp, tmp / "frames", model_uri, tracking, attempt))
    return {t: (max(r[0] for r in rs), max(r[1] for r in rs)) for t, rs in rates.items()}


def measure(tmp: Path, args, sizes: list[int], n_train: int, n_frames: int) -> str:
    """Run every measurement in tmp and return the table."""
    print(f"preparing {n_train} training pairs and {n_frames} frames in {tmp} ...", file=sys.stderr)
    write_synthetic_set(tmp / "train", count=n_train, size=300, seed=0)
    write_synthetic_set(tmp / "frames", count=n_frames, size=300, seed=1)
    prepare_store(tmp)
    timings = []
    for size in sizes:
        print(f"training {size} px, tracking off ...", file=sys.stderr)
        timings.append(time_training(tmp, tmp / "train", size, args.epochs, tracking=False))
    off = timings[-1]
    print(f"training {off.image_size} px, tracking on ...", file=sys.stderr)
    on = time_training(tmp, tmp / "train", off.image_size, args.epochs, tracking=True)
    t0 = time.perf_counter()
    load_model(off.model_uri, torch.device("cpu"))
    load_s = time.perf_counter() - t0
    print("predicting, tracking off and on ...", file=sys.stderr)
    predict = predict_rates(tmp, off.model_uri, args.repeat)
    return report(args, timings, off, on, load_s, predict, n_frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring (bench/bench_cpu.py) for what each number means.")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer frames and epochs (< 1 min)")
    parser.add_argument("--epochs", type=int, help="epochs per training call (default 3, --quick 2)")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="image sizes for throughput; the last one is used for tracking on/off "
                             "(default 128 256, --quick 64 128)")
    parser.add_argument("--repeat", type=int, help="prediction runs each way, best kept (default 2, --quick 1)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.epochs = args.epochs or (2 if args.quick else 3)
    args.repeat = args.repeat or (1 if args.quick else 2)
    sizes = args.sizes or ([64, 128] if args.quick else [128, 256])
    n_train, n_frames = (16, 8) if args.quick else (48, 24)

    quiet()
    print(machine(), flush=True)
    cwd, started, t_start = os.getcwd(), busy_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="coroseg-bench-") as name:
        os.chdir(name)  # MLflow writes anything relative (./mlruns) here, never in the repository
        try:
            table = measure(Path(name), args, sizes, n_train, n_frames)
        finally:
            os.chdir(cwd)
    print(contention(started, time.perf_counter() - t_start))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
