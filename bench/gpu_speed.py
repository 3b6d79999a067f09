"""GPU speed benchmark (not a test): `coroseg train` and `coroseg predict` as a user runs them, with MLflow
tracking on and real frames read from disk, against the tuned MONAI reference loop measured in the same call
on the same card (`../shared/bench/monai_reference_unet.py`, JSON in --reference).

Same network, size and batch as the reference: MONAI UNet 32..512 with 2 residual units (`--width 32`),
512 px frames (ARCADE is 512 px, so nothing is resized), batch 16. Prints one markdown table:
- training img/s: frames trained per second of each epoch's training phase (the logged
  `train_images_per_second`), median over the epochs after the first (which compiles);
- end-to-end img/s: every frame trained, over the whole training (validation, per-epoch vessel metrics and
  the record included);
- prediction files/s: `coroseg predict` over the frames (decode, field of view, network, files written), as
  it logs `processing_rate_files_per_second`.

Run by bench/gpu.sh on the device machine; a CPU smoke run:
    .venv/bin/python bench/gpu_speed.py --data ../shared/data/arcade_syntax_val200 --device cpu --epochs 2 \
        --image-size 64 --width 8 --batch-size 4 --work /tmp/gpu_speed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(args: list[str], env: dict, profile: Path | None = None) -> tuple[str, float]:
    """A coroseg command's stdout and wall seconds (under cProfile into `profile`); its progress goes to our
    stderr."""
    t0 = time.perf_counter()
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    done = subprocess.run([sys.executable, *profiler, "-m", "coroseg", *args], env=env, stdout=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"coroseg {args[0]} failed with exit {done.returncode}:\n{done.stdout[-2000:]}")
    return done.stdout, time.perf_counter() - t0


def run_id(stdout: str) -> str:
    line = [ln for ln in stdout.splitlines() if ln.startswith("run_id:")][-1]
    return line.split()[1]


def metric_history(client, run: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run, key), key=lambda m: m.step)]


def reference_best(path: Path) -> tuple[dict, dict]:
    """The reference's fastest training mode and its row, and the whole JSON."""
    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if "train_img_s" in r]
    return max(rows, key=lambda r: r["train_img_s"]), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="an empty folder for the store and outputs")
    parser.add_argument("--reference", type=Path, default=None, help="anchor_unet.json of the reference run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--predict-count", type=int, default=0, help="predict only the first N frames (0: all)")
    parser.add_argument("--no-predict", action="store_true", help="train only")
    parser.add_argument("--profile", action="store_true",
                        help="train under cProfile and print the host's costliest calls (main thread)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.work.resolve()}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    common = ["--device", args.device, "--tracking-uri", uri]
    out, train_wall = run(["train", "--data", str(args.data), "--folds", "1", "--image-size", str(args.image_size),
                           "--width", str(args.width), "--batch-size", str(args.batch_size), "--epochs",
                           str(args.epochs), "--patience", str(args.epochs), "--compile", args.compile,
                           "--output-dir", str(args.work / "runs"), "--experiment", "gpu-speed", *common], env,
                          args.work / "train.prof" if args.profile else None)
    trained = run_id(out)
    import mlflow
    import torch

    client = mlflow.MlflowClient(uri)
    best = reference_best(args.reference) if args.reference is not None and args.reference.is_file() else None
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print_rows(training_rows(client, trained, train_wall, best, args) + [("device", f"{name}, torch {torch.__version__}")])
    if args.profile:
        import pstats

        print("\nhost time of the training process (cProfile, main thread), costliest first:", flush=True)
        stats = pstats.Stats(str(args.work / "train.prof"), stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats("coroseg/", 45)
        stats.sort_stats("tottime").print_stats(20)
    if args.no_predict:
        return
    out, predict_wall = run(["predict", "--model", f"runs:/{trained}/pytorch_model", "--input",
                             str(predict_input(args)), "--output", str(args.work / "predictions"),
                             "--batch-size", str(args.batch_size), *common], env)
    predict_rate = client.get_run(run_id(out)).data.metrics["processing_rate_files_per_second"]
    rows = [("coroseg predict files/s", f"{predict_rate:.1f} ({predict_wall:.1f} s process)")]
    if best is not None:
        rows += [(f"reference inference img/s ({best[0]['mode']}, bare model)", f"{best[0]['infer_img_s']:.0f}"),
                 ("coroseg predict files/s / reference inference", f"{predict_rate / best[0]['infer_img_s']:.3f}")]
    print_rows(rows)


def training_rows(client, trained: str, train_wall: float, best, args) -> list[tuple[str, str]]:
    """Printed before predict starts, so a run cut short still shows them."""
    rates = metric_history(client, trained, "train_images_per_second")
    run_data = client.get_run(trained).data
    frames = int(run_data.params["train_frames"])
    duration = run_data.metrics["training_duration_seconds"]
    steady = statistics.median(rates[1:] or rates)
    rows = [("setup", f"unet width {args.width}, {args.image_size} px, batch {args.batch_size}, {args.epochs} "
                      f"epochs of {frames} frames, compile {args.compile}, tracking on (sqlite), run {trained}"),
            ("coroseg training img/s (median of epochs 2..N; first epoch)", f"{steady:.0f}; {rates[0]:.0f}"),
            ("coroseg end-to-end img/s (all epochs, incl. validation and record)",
             f"{frames * len(rates) / duration:.0f} ({duration:.1f} s training, {train_wall:.1f} s process)"),
            ("per-epoch training img/s", " ".join(f"{r:.0f}" for r in rates))]
    if best is not None:
        top, data = best
        rows += [(f"reference best training mode ({top['mode']}) img/s", f"{top['train_img_s']:.0f}"),
                 ("coroseg training / reference best", f"{steady / top['train_img_s']:.2f}")]
        rows += [(f"reference {r['net']} {r['mode']} train / infer img/s",
                  f"{r['train_img_s']:.0f} / {r['infer_img_s']:.0f}") for r in data["rows"] if "train_img_s" in r]
    return rows


def predict_input(args) -> Path:
    """The frames to predict: all, or a copy of the first --predict-count."""
    if not args.predict_count:
        return args.data / "images"
    folder = args.work / "predict_input"
    folder.mkdir(exist_ok=True)
    for path in sorted((args.data / "images").iterdir())[: args.predict_count]:
        shutil.copy(path, folder / path.name)
    return folder


def print_rows(rows: list[tuple[str, str]]) -> None:
    print("\n| measure | value |\n| --- | --- |")
    for key, value in rows:
        print(f"| {key} | {value} |", flush=True)


if __name__ == "__main__":
    main()
