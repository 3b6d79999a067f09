"""`ema_epochs`: a moving average of the weights is what is validated, kept as the best model and saved, and it
resumes with the rest of the training state."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from coroseg.config import InputError, TrainConfig, resolve
from coroseg.data.dataset import load_training_data
from coroseg.model_spec import ModelSpec
from coroseg.training.state import load_state, save_state
from coroseg.training.trainer import NoEvents, seed_everything, train

CONFIG = TrainConfig(synthetic_count=14, image_size=32, epochs=3, patience=10, batch_size=4, width=4,
                     tracking=False, compile="no")


class Kept(NoEvents):
    def __init__(self, folder=None) -> None:
        self.states, self.folder = [], folder

    def on_checkpoint(self, state):
        self.states.append(state)                  # its tensors are the live ones: saved now or read at the end
        if self.folder is not None and state.epoch == 1:
            save_state(self.folder, state)           # as if stopped after epoch 1


@pytest.fixture(scope="module")
def data():
    return load_training_data(CONFIG)[0]


def _trained(config: TrainConfig, data, resume=None, folder=None):
    seed_everything(config.seed)
    model = ModelSpec.of_training(config).build()
    events = Kept(folder)
    return train(config, data, model, torch.device("cpu"), events, resume=resume, epoch_vessel_metrics=False), events


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_short_average_trains_as_the_weights_do_and_a_long_one_keeps_the_first_step(data):
    plain, plain_events = _trained(CONFIG, data)
    short, _ = _trained(replace(CONFIG, ema_epochs=1e-9), data)       # decay 0: the average is the weights
    assert [h.val_dice for h in short.history] == [h.val_dice for h in plain.history]
    assert _same(short.best_state, plain.best_state)
    long, events = _trained(replace(CONFIG, ema_epochs=1e9), data)      # decay 1: the weights after step one
    trained = events.states[-1].model
    assert [h.train_loss for h in long.history] == [h.train_loss for h in plain.history]   # training unchanged
    assert _same(trained, plain_events.states[-1].model)
    assert not _same(long.best_state, trained)
    averaged = {k[len("module."):]: v for k, v in events.states[-1].average.items() if k.startswith("module.")}
    assert _same(averaged, long.best_state) or long.best_epoch < len(long.history)


def test_a_training_with_an_average_resumes_exactly(tmp_path, data):
    config = replace(CONFIG, ema_epochs=1.0)
    whole, _ = _trained(config, data, folder=tmp_path)
    resumed, _ = _trained(config, data, resume=load_state(tmp_path))
    assert load_state(tmp_path).average is not None
    assert [h.val_dice for h in resumed.history] == [h.val_dice for h in whole.history]
    assert _same(resumed.best_state, whole.best_state)


def test_ema_epochs_must_be_a_number_of_at_least_zero(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ema_epochs: -1\n")
    with pytest.raises(InputError, match="ema_epochs must be a number of at least 0"):
        resolve(path)
