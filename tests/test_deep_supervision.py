"""`--deep-supervision` (dynunet): in training the network's coarser decoder levels are scored too, weighed 1, 1/2,
1/4; validation, the saved model and prediction use the full-size output alone; a family without it is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from coroseg.config import TrainConfig
from coroseg.errors import InputError
from coroseg.model_spec import ModelSpec
from coroseg.models import architecture_of, build_model
from coroseg.training.checkpoint import load_weights, weights_bytes
from coroseg.training.losses import build_loss
from coroseg.training.state import load_state, save_state
from coroseg.training.trainer import (OUTSIDE_FOV_LOGIT, NoEvents, _deep_supervised, _fov_logits,
                                      seed_everything, train)
from tests.conftest import run_cli

CONFIG = TrainConfig(synthetic_count=10, image_size=32, epochs=2, patience=10, batch_size=4, width=4,
                     tracking=False, compile="no", model_family="dynunet", deep_supervision=True)


def _supervised_model(width: int = 4):
    return build_model("dynunet", architecture_of("dynunet", width=width, deep_supervision=True))


def test_training_mode_gives_every_level_at_full_size_and_eval_mode_the_output_alone():
    model = _supervised_model()
    frames = torch.rand(2, 1, 45, 70)
    assert model.train().logits(frames).shape == (2, 3, 1, 45, 70)
    with torch.no_grad():
        out = model.eval()(frames)
    assert out.shape == (2, 1, 45, 70) and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0


def test_the_loss_weighs_the_levels_one_half_and_a_quarter_and_passes_a_single_output_through():
    plain = build_loss("dice_ce")
    supervised = _deep_supervised(plain)
    masks = (torch.rand(2, 1, 16, 16) > 0.7).float()
    levels = torch.randn(2, 3, 1, 16, 16)
    expected = plain(levels[:, 0], masks) + 0.5 * plain(levels[:, 1], masks) + 0.25 * plain(levels[:, 2], masks)
    assert torch.allclose(supervised(levels, masks), expected)
    assert torch.equal(supervised(levels[:, 0], masks), plain(levels[:, 0], masks))


def test_every_level_is_background_outside_the_field_of_view():
    fov = torch.ones(2, 1, 16, 16)
    fov[:, :, :, :4] = 0
    logits = _fov_logits(lambda images: torch.randn(2, 3, 1, 16, 16), torch.rand(2, 1, 16, 16), fov)
    assert (logits[..., :4] == OUTSIDE_FOV_LOGIT).all() and (logits[..., 4:] != OUTSIDE_FOV_LOGIT).all()


def test_weights_round_trip_though_the_network_holds_modules_under_two_names(tmp_path):
    # MONAI's DynUNet registers its blocks twice (e.g. input_block is skip_layers.downsample): one storage, two
    # names, which safetensors refuses unless each name gets its own copy
    model = _supervised_model()
    path = tmp_path / "model.safetensors"
    path.write_bytes(weights_bytes(model.state_dict()))
    loaded = load_weights(path, _supervised_model())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    model.eval(), loaded.eval()
    frames = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(frames), loaded(frames))


def test_a_deeply_supervised_training_learns_and_its_state_resumes(tmp_path):
    from coroseg.data.dataset import load_training_data

    data = load_training_data(CONFIG)[0]
    kept = []

    class Keep(NoEvents):
        def on_checkpoint(self, state):
            kept.append(state)
            save_state(tmp_path, state)

    seed_everything(CONFIG.seed)
    result = train(CONFIG, data, ModelSpec.of_training(CONFIG).build(), torch.device("cpu"), Keep(),
                   epoch_vessel_metrics=False)
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(h.train_loss)) for h in result.history)
    # the levels' summed loss (up to 1.75 times one output's) in training, the output alone in validation
    assert result.history[0].train_loss > result.history[0].val_loss
    assert result.best_val_probabilities.shape[1:] == (32, 32)
    state = load_state(tmp_path)
    assert state.epoch == 2 and state.model.keys() == kept[-1].model.keys()
    plain = replace(CONFIG, deep_supervision=False)
    assert ModelSpec.of_training(plain).architecture["deep_supervision"] is False


def test_a_family_without_deep_supervision_is_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(InputError, match="the unet family cannot train with it \\(only dynunet\\)"):
        architecture_of("unet", deep_supervision=True)
    result = run_cli("train", "--data", str(tmp_path / "missing"), "--deep-supervision", "--no-tracking",
                     cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == ("coroseg: error: deep supervision: the unet family cannot "
                                                      "train with it (only dynunet)")
