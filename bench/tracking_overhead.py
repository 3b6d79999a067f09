"""What recording a run costs a user, measured on whole `coroseg train` processes (a benchmark, not a test).

For a small CPU training into a fresh SQLite store, with tracking and with `--no-tracking` (alternating, same
data and seed), it prints the median of each:
- wall time of the whole command, and the ratio tracking / no tracking;
- start-up: from the process start to its first epoch line, less the time `python -c "import ..."` of the
  same modules takes (what no code of ours can save);
- tear-down: from the last epoch line to the process exit.

    .venv/bin/python bench/tracking_overhead.py [--repeats 3] [--epochs 4] [--image-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = "synthetic_count: 24\nsynthetic_size: 128\nbatch_size: 4\nval_samples: 2\npatience: 10\n"
IMPORTS = "import coroseg.cli, coroseg.training.run, torch, monai, mlflow"


def import_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.perf_counter() - started


def one_training(workdir: Path, epochs: int, image_size: int, tracking: bool) -> dict[str, float]:
    """Times of one `coroseg train` process, read from when its lines arrive."""
    config = workdir / "config.yaml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "coroseg", "train", "--config", str(config), "--epochs", str(epochs),
               "--image-size", str(image_size), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    if not tracking:
        command.append("--no-tracking")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=workdir, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    first = last = None
    for line in process.stderr:
        if line.startswith("epoch "):
            last = time.perf_counter()
            first = first or last
    process.wait()
    ended = time.perf_counter()
    if process.returncode != 0 or first is None:
        raise SystemExit(f"training failed (exit {process.returncode})")
    return {"wall": ended - started, "to_first_epoch": first - started, "after_last_epoch": ended - last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    imports = statistics.median(import_seconds() for _ in range(args.repeats))
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.repeats):
        for tracking in (False, True):
            with tempfile.TemporaryDirectory() as folder:
                runs[tracking].append(one_training(Path(folder), args.epochs, args.image_size, tracking))
    median = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in runs.items()}
    print(f"small CPU training: {args.epochs} epochs, {args.image_size} px, 24 synthetic frames; "
          f"median of {args.repeats}; imports alone {imports:.1f} s\n")
    print("| measure | --no-tracking | tracking (sqlite) |")
    print("| --- | --- | --- |")
    print(f"| wall s | {median[False]['wall']:.1f} | {median[True]['wall']:.1f} |")
    print(f"| start to first epoch line, s (less imports) | {median[False]['to_first_epoch']:.1f} "
          f"({median[False]['to_first_epoch'] - imports:.1f}) | {median[True]['to_first_epoch']:.1f} "
          f"({median[True]['to_first_epoch'] - imports:.1f}) |")
    print(f"| last epoch line to exit, s | {median[False]['after_last_epoch']:.1f} | "
          f"{median[True]['after_last_epoch']:.1f} |")
    print(f"\nwall ratio tracking / no tracking: {median[True]['wall'] / median[False]['wall']:.2f}")


if __name__ == "__main__":
    main()
