"""GPU check (not a test): bf16 training throughput, batch augmentation throughput, prediction rate, and the
Dice on real angiograms of a model trained on synthetic frames only.

It drives the training loop and the predictor directly, without MLflow, so the device machine needs only
torch, MONAI and kornia. Run it with `bash bench/gpu.sh` on the device, or on a CPU for a smoke test:
    .venv/bin/python bench/gpu_check.py --device cpu --epochs 1 --synthetic-count 8 --image-size 64
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from coroseg.config import TrainConfig
from coroseg.data.augment import BatchAugmentation
from coroseg.data.dataset import load_training_data
from coroseg.data.imageio import read_gray
from coroseg.data.pairs import find_pairs, load_mask
from coroseg.evaluation.metrics import image_metrics, mean_metrics
from coroseg.inference.model_loading import LoadedModel
from coroseg.inference.predictor import Predictor
from coroseg.model_spec import ModelSpec
from coroseg.training.trainer import NoEvents, best_model, train


class NoRecord(NoEvents):
    """Training events that record nothing: only the loop is timed."""

    def on_epoch_end(self, result, preview, history):
        print(f"  epoch {result.epoch}: val_dice {result.val_dice:.4f}  {result.epoch_duration_seconds:.2f}s", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def augmentation_rate(device: torch.device, size: int, batch: int, repeats: int) -> float:
    augment = BatchAugmentation().to(device)
    images = torch.rand(batch, 1, size, size, device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.95).float()
    fov = torch.ones_like(masks)
    augment(images, masks, fov)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        augment(images, masks, fov)
    sync(device)
    return batch * repeats / (time.perf_counter() - t0)


def real_dice(model, device, data_dir: Path, image_size: int) -> tuple[dict[str, float], float]:
    pairs = find_pairs(data_dir)
    frames = [read_gray(p.image) for p in pairs]
    truths = [load_mask(p.mask) for p in pairs]
    spec = ModelSpec.of_training(replace(TrainConfig(), image_size=image_size))
    predictor = Predictor(LoadedModel(model.to(device).eval(), spec, "in-memory"), batch_size=8)
    predictor.predict(frames[:8])                           # warm-up
    sync(device)
    t0 = time.perf_counter()
    predictions = []
    for i in range(0, len(frames), 8):
        predictions += predictor.predict(frames[i : i + 8])
    sync(device)
    rate = len(frames) / (time.perf_counter() - t0)
    rows = [image_metrics(p.mask, t, p.fov) for p, t in zip(predictions, truths)]
    return mean_metrics(rows), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--synthetic-count", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--real-data", type=Path, default=Path("shared/data/cimat40_train"))
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}", flush=True)

    config = TrainConfig(synthetic_count=args.synthetic_count, image_size=args.image_size, batch_size=args.batch_size,
                         epochs=args.epochs, patience=args.epochs, device=args.device, tracking=False)
    t0 = time.perf_counter()
    data = load_training_data(config)[0]
    synth_seconds = time.perf_counter() - t0
    model = ModelSpec.of_training(config).build()
    result = train(config, data, model, device, NoRecord())
    steady = result.history[1:] or result.history
    epoch_s = sum(h.epoch_duration_seconds for h in steady) / len(steady)
    train_rate = len(data.train) / epoch_s
    aug_size = 512
    aug_gpu = augmentation_rate(device, aug_size, 64, 20)
    aug_cpu = augmentation_rate(torch.device("cpu"), aug_size, 16, 3)
    rows = [
        ("device", name),
        ("synthesis of training frames (s)", f"{synth_seconds:.1f} for {config.synthetic_count}"),
        (f"training img/s (unet, {args.image_size}px, batch {args.batch_size}, bf16 on CUDA, incl. val)", f"{train_rate:.0f}"),
        ("best val Dice (synthetic)", f"{result.best_val_dice:.4f} at epoch {result.best_epoch}"),
        (f"batch augmentation img/s at {aug_size}px on {args.device}", f"{aug_gpu:.0f}"),
        (f"batch augmentation img/s at {aug_size}px on cpu", f"{aug_cpu:.0f}"),
    ]
    if args.real_data.is_dir():
        means, rate = real_dice(best_model(model, result), device, args.real_data, args.image_size)
        rows += [("prediction files/s (real 300px frames, model only)", f"{rate:.0f}")]
        rows += [(f"synthetic-only model on real frames: {k}", f"{v:.4f}") for k, v in means.items()]
    print("\n| measure | value |\n| --- | --- |")
    for key, value in rows:
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
