"""Configuration precedence, the model registry, secret redaction."""

from __future__ import annotations

import pytest
import torch

from coroseg.config import (AUTO_FOLDS, ONE_SPLIT_SCHEDULE, PER_FOLD_SCHEDULE, TrainConfig, fold_count, resolve,
                            epoch_schedule)
from coroseg.errors import InputError
from coroseg.models import FAMILIES, build_model, family
from coroseg.tracking.redact import redact_text, redact_uri


def test_defaults_then_yaml_then_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 7\nlearning_rate: 1\nimage_size: 128\n")
    resolved = resolve(cfg, epochs=3, image_size=None)
    assert resolved.epochs == 3                   # flag beats YAML
    assert resolved.image_size == 128             # YAML beats default; an absent flag changes nothing
    assert resolved.learning_rate == 1.0 and isinstance(resolved.learning_rate, float)
    assert resolved.batch_size == TrainConfig().batch_size


def test_folds_auto_ensembles_small_real_data_sets_only(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("folds: auto\n")
    auto = resolve(cfg, data="frames")
    assert auto.folds is None and resolve(None, data="frames").folds is None
    assert [fold_count(auto, n) for n in (9, 10, 40, 100, 101)] == [1, AUTO_FOLDS, AUTO_FOLDS, AUTO_FOLDS, 1]
    assert fold_count(resolve(None), 40) == 1                  # synthetic frames (the demo): one split
    assert fold_count(resolve(None, data="frames", folds=1), 40) == 1
    assert fold_count(resolve(None, data="frames", folds=3), 200) == 3


def test_the_auto_schedule_is_longer_for_one_model_than_for_each_fold_of_an_ensemble(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: auto\npatience: auto\n")
    auto = resolve(cfg)
    assert (auto.epochs, auto.patience) == (None, None)
    assert epoch_schedule(auto, 1) == ONE_SPLIT_SCHEDULE and epoch_schedule(auto, 5) == PER_FOLD_SCHEDULE
    assert ONE_SPLIT_SCHEDULE[0] > PER_FOLD_SCHEDULE[0]
    assert epoch_schedule(resolve(None, epochs=7), 5) == (7, PER_FOLD_SCHEDULE[1])      # what is asked stays
    assert epoch_schedule(resolve(None, patience=3), 1) == (ONE_SPLIT_SCHEDULE[0], 3)


@pytest.mark.parametrize("text, needle", [
    ("epochz: 3\n", "unknown option 'epochz'"),
    ("epochs: three\n", "epochs must be auto or a whole number of at least 1, got 'three'"),
    ("batch_size: four\n", "batch_size must be a int"),
    ("- a list\n", "must be a mapping"),
    ("epochs: 0\n", "epochs must be auto or a whole number of at least 1, got 0"),
    ("batch_size: 0\n", "batch_size must be at least 1"),
    ("val_fraction: 1.5\n", "val_fraction"),
    ("folds: 0\n", "folds must be auto or a whole number of at least 1, got 0"),
    ("folds: many\n", "folds must be auto or a whole number"),
])
def test_bad_yaml_names_the_file_and_the_problem(tmp_path, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(InputError, match=needle):
        resolve(cfg)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_maps_any_frame_size_to_probabilities(name):
    model = build_model(name).eval()
    with torch.no_grad():
        for shape in [(2, 1, 64, 64), (1, 1, 45, 70)]:
            out = model(torch.rand(*shape))
            assert out.shape == shape
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert model.logits(torch.rand(1, 1, 64, 48)).shape == (1, 1, 64, 48)


def test_unknown_family_lists_known():
    with pytest.raises(InputError, match="known: unet, attention_unet, basic_unet, unetpp, segresnet"):
        family("vnet")


def test_redaction():
    assert redact_uri("http://bob:pw@host:5000/x?token=abc&a=1") == "http://host:5000/x?token=***&a=1"
    assert redact_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert "pw" not in redact_text("failed: https://bob:pw@host/api")


@pytest.mark.parametrize("name", ["dice_ce", "dice_cldice", "focal"])
def test_every_loss_is_finite_and_lower_for_a_better_prediction(name):
    from coroseg.training.losses import build_loss

    loss = build_loss(name)
    truth = torch.zeros(2, 1, 32, 32)
    truth[:, :, :, 10:14] = 1
    good = (truth * 2 - 1) * 6          # confident and right
    bad = -good                         # confident and wrong
    assert torch.isfinite(loss(good, truth)) and float(loss(good, truth)) < float(loss(bad, truth))


def test_unknown_loss_is_an_input_error():
    with pytest.raises(InputError, match="loss must be one of dice_ce, dice_cldice, focal"):
        resolve(None, loss="hinge")
