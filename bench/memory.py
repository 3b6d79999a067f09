"""Peak memory of a training against the size of its data set, and the training's CPU speed (not a test).

For each `--copies` K, a folder holding K copies of `--data` (hard links or copies, renamed c1_..., c2_...) is trained
on by `coroseg train` in a fresh process with a fresh frame cache and MLflow store, so the peak covers reading
and preparing the frames as well as the epochs. Printed per K: the peak resident memory of the training process
and of its largest child (loader worker; on a GPU also the vessel-metrics process), their ratio to the first K's,
the training img/s of each epoch and the wall time.

    PYTHONPATH=src .venv/bin/python bench/memory.py --data ../shared/data/arcade_syntax_val200 --copies 1 10
    (before/after a change: run it once with PYTHONPATH pointing at each version's src)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff", ".bmp", ".dcm"}

# Runs the CLI, then reports the peaks of this process and of its largest (waited-for) child.
RUNNER = """
import resource, sys
from coroseg.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"PEAK_KB {me.ru_maxrss} {kids.ru_maxrss}", file=sys.stderr, flush=True)
sys.exit(code)
"""


def replicate(data: Path, copies: int, into: Path) -> Path:
    """`copies` renamed copies of every frame and its label or mask; other top-level files once. Hard links
    where the file system allows (symbolic ones would point outside the folder, which coroseg refuses)."""
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        relative = path.relative_to(data)
        per_frame = len(relative.parts) > 1 or path.suffix.lower() in IMAGE_SUFFIXES
        names = [f"c{k}_{path.name}" for k in range(1, copies + 1)] if per_frame else [path.name]
        for name in names:
            target = into / relative.parent / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    return into


def train(folder: Path, work: Path, args) -> dict:
    env = {**os.environ, "COROSEG_CACHE_DIR": str(work / "cache"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-c", RUNNER, "train", "--data", str(folder), "--folds", "1",
               "--epochs", str(args.epochs), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}",
               "--output-dir", str(work / "runs"), *args.extra]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"training on {folder} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    me, kid = map(int, re.search(r"PEAK_KB (\d+) (\d+)", done.stderr).groups())
    rates = [float(r) for r in re.findall(r"\((\d+) img/s\)", done.stderr)]
    prepared = re.search(r"frame cache: (\d+) frames prepared in ([\d.]+) s", done.stderr)
    return {"self_mb": me / 1024, "child_mb": kid / 1024, "rates": rates, "wall": wall,
            "prepare_s": float(prepared.group(2)) if prepared else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/arcade_syntax_val200"))
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="more `coroseg train` options, after --")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="coroseg_memory_") as tmp:
        for copies in args.copies:
            work = Path(tmp) / f"x{copies}"
            folder = replicate(args.data, copies, work / "data")
            frames = sum(1 for p in (folder / "images" if (folder / "images").is_dir() else folder).iterdir()
                         if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_gt"))
            print(f"{copies} copies: {frames} frames ...", flush=True)
            rows.append({"copies": copies, "frames": frames, **train(folder, work, args)})
    first = rows[0]["self_mb"]
    command = " ".join(["coroseg train --epochs", str(args.epochs), *args.extra])
    print(f"\n`{command}` on {args.data.name}, {os.cpu_count()} cores\n")
    print("| frames | peak RSS, training process (MB) | ratio | largest child (MB) | preparing (s) | img/s per epoch "
          "| wall (s) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rates = ", ".join(f"{x:.0f}" for x in r["rates"])
        print(f"| {r['frames']} | {r['self_mb']:.0f} | {r['self_mb'] / first:.2f} | {r['child_mb']:.0f} | "
              f"{r['prepare_s']:.1f} | {rates} | {r['wall']:.0f} |")


if __name__ == "__main__":
    main()
