"""Where a GPU training step's time goes (not a test): the training phase of coroseg's loop, one piece at a
time, on real frames (resident on the device as uint8 when they fit, as `coroseg train` does), against the reference's step on the same network.

Rows, each img/s over whole epochs after a warm-up (CUDA-synchronised):
- reference step: the compiled network (CUDA graphs), bf16, DiceCE and fused AdamW on one fixed batch (what
  ../shared/bench/monai_reference_unet.py times), with our model;
- loop (coroseg train): coroseg's `_train_epoch` (batch indexing, input conversion, batch augmentation,
  field-of-view masking, loss, schedule, loss sum) around its compiled step: on a GPU the network compiled and
  captured as CUDA graphs, on a CPU the whole step compiled (trainer._training_loss);
- loop, no augmentation: the same without the augmentation;
- loop, network compiled without CUDA graphs (the host queues every kernel);
- loop, whole step compiled: conversion, augmentation, masking and loss compiled with the network as one graph,
  captured as CUDA graphs on a GPU (slower there than the network alone: 1,062 against 1,234 img/s, H200);
- augmentation alone (eager); validation of the held-out frames; the best-state copy to the host.

    bench/gpu.sh runs it on the device. CPU smoke:
    PYTHONPATH=src .venv/bin/python bench/gpu_profile.py --device cpu --data ../shared/data/cimat40_train \
        --image-size 64 --width 8 --batch-size 4 --epochs 1 --variants noaug loop
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from coroseg.config import TrainConfig
from coroseg.data.augment import BatchAugmentation
from coroseg.data.batches import frame_source
from coroseg.data.dataset import load_training_data
from coroseg.data.frame_store import as_inputs
from coroseg.model_spec import ModelSpec
from coroseg.training import trainer
from coroseg.training.losses import build_loss

VARIANTS = ("reference", "loop", "noaug", "nographs", "wholestep", "parts")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


class Setup:
    def __init__(self, args) -> None:
        self.device = torch.device(args.device)
        self.config = TrainConfig(data=str(args.data), folds=1, image_size=args.image_size, width=args.width,
                                  batch_size=args.batch_size, epochs=1000, device=args.device, tracking=False)
        data = load_training_data(self.config)[0]
        torch.backends.cudnn.benchmark = self.device.type == "cuda"
        self.train, self.val = data.train, data.val
        self.source = frame_source(data.train.file, self.device, None)
        self.model = ModelSpec.of_training(self.config).build().to(self.device)
        self.compiled = trainer.compiled(self.config, self.device)
        self.augment = BatchAugmentation().to(self.device)
        self.loss = build_loss(self.config.loss)
        self.step = trainer._training_loss(self.model, self.compiled, self.augment, self.loss)   # channels_last
        self.graphs = "reduce-overhead" if self.device.type == "cuda" else None
        network = torch.compile(self.model.logits, dynamic=False, mode=self.graphs) if self.compiled else self.model.logits
        self.logits = trainer._channels_last(network)          # the reference's step: the network alone
        steps = len(trainer._batches(len(self.train), self.config, 1, self.compiled))
        self.optimizer, self.schedule = trainer._optimizer_and_schedule(self.config, self.model, steps)
        self.epoch = 0

    def variant(self, name: str):
        """The batch loss of a variant of coroseg's step."""
        if name == "loop":
            return self.step
        if name == "noaug":
            return trainer._training_loss(self.model, self.compiled, None, self.loss)
        if name == "nographs":
            return trainer._batch_loss(trainer._channels_last(torch.compile(self.model.logits, dynamic=False)),
                                       self.augment, self.loss)
        return trainer._batch_loss(trainer._channels_last(self.model.logits), self.augment, self.loss,  # wholestep
                                   compile_options={"triton.cudagraphs": self.device.type == "cuda"})

    def epoch_of(self, loss_of):
        def run():
            self.epoch += 1
            trainer._train_epoch(loss_of, self.compiled, self.model, self.source, self.train, self.config,
                                 self.optimizer, self.schedule, self.device, self.epoch)
        return run

    def first_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        records = torch.from_numpy(self.train.records(range(self.config.batch_size))).to(self.device)
        return as_inputs(records)

    def reference_step(self):
        images, masks, _ = self.first_batch()
        batches = len(trainer._batches(len(self.train), self.config, 1, self.compiled))

        def run():
            for _ in range(batches):
                self.optimizer.zero_grad(set_to_none=True)
                with trainer._autocast(self.device):
                    loss = self.loss(self.logits(images).float(), masks)
                loss.backward()
                self.optimizer.step()
        return run, batches * self.config.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per row")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    s = Setup(args)
    frames = len(trainer._batches(len(s.train), s.config, 1, s.compiled)) * s.config.batch_size
    name = torch.cuda.get_device_name(0) if s.device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}; {len(s.train)} train / {len(s.val)} val frames, {args.image_size} px, "
          f"width {args.width}, batch {args.batch_size}, compiled {s.compiled}", flush=True)
    print("\n| piece | img/s | ms per batch |\n| --- | --- | --- |", flush=True)

    def row(label: str, seconds: float, count: int) -> None:
        print(f"| {label} | {count / seconds:.0f} | {1e3 * seconds * args.batch_size / count:.1f} |", flush=True)

    labels = {"loop": "loop (coroseg train)", "noaug": "loop, no augmentation",
              "nographs": "loop, network compiled, no CUDA graphs", "wholestep": "loop, whole step compiled"}
    for variant in args.variants:
        try:
            if variant == "reference":
                run, count = s.reference_step()
                row("reference step (fixed batch, no augmentation)", timed(run, s.device, args.epochs), count)
            elif variant == "parts":
                parts(s, s.augment, row, args)
            else:
                row(labels[variant], timed(s.epoch_of(s.variant(variant)), s.device, args.epochs), frames)
        except Exception as exc:        # report and go on: one failing variant must not hide the others
            print(f"| {variant} | failed: {repr(exc)[:160]} | |", flush=True)


def parts(s: Setup, augment, row, args) -> None:
    b = s.config.batch_size
    images, masks, fov = s.first_batch()
    row("augmentation alone", timed(lambda: augment(images, masks, fov), s.device, 20), b)
    row("validation of the held-out frames", timed(lambda: trainer._validate(s.model, s.source, s.val, s.config, s.loss),
                                                   s.device, 3), len(s.val))
    copy = lambda: {k: v.detach().to("cpu", copy=True) for k, v in s.model.state_dict().items()}  # noqa: E731
    print(f"| best-state copy to the host | | {1e3 * timed(copy, s.device, 3):.1f} ms |", flush=True)


if __name__ == "__main__":
    main()
