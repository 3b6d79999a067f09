"""The compiled training step (what `--compile auto` chooses on a GPU) trains as the eager one does.

CI has no GPU, so the compiled path is checked on the CPU with `compile="yes"`: same seed, same batches, same
losses within float tolerance, and a model that saves and predicts like any other."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from coroseg.config import TrainConfig
from coroseg.data.dataset import load_training_data
from coroseg.model_spec import ModelSpec
from coroseg.training.checkpoint import weights_bytes
from coroseg.training.trainer import NoEvents, best_model, seed_everything, train



class Kept(NoEvents):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, result, preview, history):
        assert [h.epoch for h in history] == list(range(1, result.epoch + 1))
        self.epochs.append(result.epoch)


def _trained(config: TrainConfig):
    data = load_training_data(config)[0]          # 15 frames: 12 train (3 whole batches), 3 val
    seed_everything(config.seed)                  # the same initial weights
    model = ModelSpec.of_training(config).build()
    events = Kept()
    return model, train(config, data, model, torch.device("cpu"), events), events


def test_eager_training_uses_every_frame_and_a_compiled_one_whole_batches_only(monkeypatch):
    """11 training frames in batches of 4: eager training keeps the remainder of 3, a compiled step (one batch
    shape) leaves it out."""
    import coroseg.training.trainer as trainer

    sizes: list[int] = []
    monkeypatch.setattr(trainer, "_training_loss",                                       # no compiling
                        lambda model, compile_step, augment, loss_fn, world: trainer._batch_loss(model.logits, augment,
                                                                                                 loss_fn))
    config = TrainConfig(synthetic_count=14, image_size=32, epochs=1, batch_size=4, width=4, tracking=False,
                         compile="no", augment=False)
    data = load_training_data(config)[0]
    assert len(data.train) == 11
    model = ModelSpec.of_training(config).build()
    original = model.logits
    monkeypatch.setattr(model, "logits", lambda x: sizes.append(len(x)) or original(x))
    train(config, data, model, torch.device("cpu"), Kept(), epoch_vessel_metrics=False)
    assert sizes[:3] == [4, 4, 3]                                    # then validation's batches
    sizes.clear()
    train(replace(config, compile="yes"), data, model, torch.device("cpu"), Kept(), epoch_vessel_metrics=False)
    assert sizes[:2] == [4, 4] and sum(sizes) == 8 + len(data.val)


@pytest.mark.integration            # inductor compiles C++ for the CPU: about a minute on 2 cores
def test_compiled_training_matches_eager_training():
    eager_config = TrainConfig(synthetic_count=15, image_size=64, epochs=2, batch_size=4, width=8, tracking=False,
                               compile="no")
    eager, eager_result, _ = _trained(eager_config)
    fast, fast_result, events = _trained(replace(eager_config, compile="yes"))
    assert events.epochs == [1, 2]
    for a, b in zip(eager_result.history, fast_result.history):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3)     # channels_last, fused kernels
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-3)
        assert b.val_dice == pytest.approx(a.val_dice, abs=1e-2)
        assert b.val_cldice == b.val_cldice                          # vessel metrics were computed
    best = best_model(fast, fast_result)
    assert weights_bytes(best.state_dict())                          # channels_last weights save as safetensors
    frame = torch.rand(1, 1, 50, 70)
    # Not equal to 1e-3: a conv bias ahead of an instance norm has a true gradient of 0, and Adam scales
    # the float noise standing in for it up to full-size steps, differently in the two kernels' noise.
    assert (best(frame) - best_model(eager, eager_result)(frame)).abs().mean() < 0.02


def test_epoch_metrics_in_their_own_process_equal_those_computed_at_once():
    from coroseg.training.epoch_metrics import EpochMetrics

    torch.manual_seed(0)
    masks = (torch.rand(3, 1, 32, 32) > 0.8).float()
    fov = torch.ones_like(masks)
    fov[..., :4] = 0
    probabilities = (masks * 0.5 + torch.rand_like(masks) * 0.6).clamp(0, 1)   # some errors
    truths, fovs = masks[:, 0].numpy() > 0.5, fov[:, 0].numpy() > 0.5
    inline = EpochMetrics(truths, fovs, background=False)
    background = EpochMetrics(truths, fovs, background=True, workers=2)         # frames shared out: 2 and 1
    try:
        here, there = inline.submit(probabilities).result(), background.submit(probabilities).result(timeout=120)
    finally:
        background.close()
    assert set(here) >= {"val_cldice", "val_hd95", "val_iou"} and here == there
    assert 0 < here["val_iou"] < 1


def test_epochs_are_handed_over_in_order_without_waiting_for_metrics_still_computed():
    """On a GPU the loop goes on while earlier epochs' vessel metrics are computed; it waits only when more
    than MAX_PENDING epochs are pending, and hands epochs over in order, each with its own metrics."""
    from concurrent.futures import Future

    import numpy as np

    from coroseg.training.trainer import EpochResult, _EpochEnds

    class Frames:
        names = ["a"]

        def __len__(self):
            return 1

        def masks(self):
            return np.zeros((1, 4, 4), bool)

        fovs = masks

        def records(self, rows):
            return np.zeros((1, 3, 4, 4), np.uint8)

    futures: list[Future] = []

    class Metrics:
        in_background = True

        def submit(self, probabilities):
            futures.append(Future())
            return futures[-1]

        def close(self):
            pass

    handed: list[tuple[int, float]] = []

    class Events:
        def on_epoch_end(self, result, preview, history):
            handed.append((result.epoch, result.val_cldice))

    ends = _EpochEnds(Events(), Frames(), TrainConfig(synthetic_count=4, epochs=9), background=True, enabled=False)
    ends.metrics = Metrics()
    probabilities = torch.zeros(1, 4, 4, dtype=torch.uint8)
    for epoch in (1, 2):
        ends.add(EpochResult(epoch, 1, 1, 0.5, 1e-3, 1, 1), probabilities, [])
    assert handed == [] and len(ends.pending) == 2           # nothing known, nothing waited for
    futures[1].set_result({"val_cldice": 0.2})
    ends.flush(keep=len(ends.pending))
    assert handed == []                                       # epoch 2 is known, but epoch 1 goes first
    futures[0].set_result({"val_cldice": 0.1})
    ends.flush(keep=len(ends.pending))
    assert handed == [(1, 0.1), (2, 0.2)]
    for epoch in (3, 4, 5):
        ends.add(EpochResult(epoch, 1, 1, 0.5, 1e-3, 1, 1), probabilities, [])
        if epoch == 4:
            futures[2].set_result({"val_cldice": 0.3})       # a third pending epoch would make the loop wait
    assert handed[-1] == (3, 0.3) and len(ends.pending) == 2
    futures[3].set_result({"val_cldice": 0.4})
    futures[4].set_result({"val_cldice": 0.5})
    ends.flush()
    assert handed == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.5)]
