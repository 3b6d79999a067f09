"""Configuration precedence, the model registry, secret redaction."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from coroseg.config import (AUTO_FOLDS, NATIVE, ONE_SPLIT_SCHEDULE, PER_FOLD_SCHEDULE, PRESETS, TrainConfig,
                            epoch_schedule, fold_count, native_side, resolve)
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


def test_a_preset_replaces_defaults_and_a_config_file_and_flags_override_it(tmp_path, monkeypatch):
    assert PRESETS["best"] == {} and resolve(None, preset="best") == replace(TrainConfig(), preset="best")
    monkeypatch.setitem(PRESETS, "best", {"init": "arcade-v1", "epochs": 160})     # how a preset with values acts
    best = resolve(None, preset="best")
    assert (best.init, best.epochs, best.preset) == ("arcade-v1", 160, "best")
    assert best.learning_rate == TrainConfig().learning_rate          # what the preset leaves alone
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: best\nepochs: 7\n")
    from_file = resolve(cfg, patience=3)
    assert (from_file.init, from_file.epochs, from_file.patience) == ("arcade-v1", 7, 3)
    assert resolve(cfg, init="none").init == "none"                  # a flag overrides the preset
    cfg.write_text("preset: best\ninit: arcade-v2\n")
    assert resolve(cfg).init == "arcade-v2"                          # and so does the file


def test_native_is_the_first_frames_side_rounded_up_to_the_divisor(tmp_path):
    assert [native_side(shape, 16) for shape in [(300, 300), (512, 512), (1, 200, 301), (64, 32)]] == [304, 512, 304, 64]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("image_size: native\n")
    assert resolve(cfg).image_size == NATIVE


@pytest.mark.parametrize("text, needle", [
    ("epochz: 3\n", "unknown option 'epochz'"),
    ("preset: fastest\n", "preset must be one of best, got 'fastest'"),
    ("image_size: 16\n", "image_size must be native or a whole number of at least 32, got 16"),
    ("image_size: big\n", "image_size must be a int"),
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
    with pytest.raises(InputError, match="known: unet, attention_unet, basic_unet, unetpp, segresnet, dynunet"):
        family("vnet")


def test_redaction():
    assert redact_uri("http://bob:pw@host:5000/x?token=abc&a=1") == "http://host:5000/x?token=***&a=1"
    assert redact_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert "pw" not in redact_text("failed: https://bob:pw@host/api")


@pytest.mark.parametrize("name", ["dice_ce", "dice", "dice_cldice", "focal"])
def test_every_loss_is_finite_and_lower_for_a_better_prediction(name):
    from coroseg.training.losses import build_loss

    loss = build_loss(name)
    truth = torch.zeros(2, 1, 32, 32)
    truth[:, :, :, 10:14] = 1
    good = (truth * 2 - 1) * 6          # confident and right
    bad = -good                         # confident and wrong
    assert torch.isfinite(loss(good, truth)) and float(loss(good, truth)) < float(loss(bad, truth))


def test_unknown_loss_is_an_input_error():
    with pytest.raises(InputError, match="loss must be one of dice_ce, dice, dice_cldice, focal"):
        resolve(None, loss="hinge")


@pytest.mark.parametrize("flags, needle", [
    (["--image-size", "16"], "'16' is neither native nor a whole number of at least 32"),
    (["--image-size", "big"], "'big' is neither native nor a whole number of at least 32"),
    (["--epochs", "0"], "'0' is neither auto nor a whole number of at least 1"),
    (["--preset", "fastest"], "'fastest' is not 'best'"),
])
def test_bad_size_count_or_preset_flags_are_refused_before_training(flags, needle):
    from click.testing import CliRunner

    from coroseg.cli import main

    result = CliRunner().invoke(main, ["train", *flags])
    assert result.exit_code == 2 and needle in result.output


def test_train_flags_reach_the_configuration_over_the_preset(monkeypatch):
    from click.testing import CliRunner

    import coroseg.training.run
    from coroseg.cli import main

    taken = []

    def capture(config, *args, **kwargs):
        taken.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(coroseg.training.run, "run_training", capture)
    CliRunner().invoke(main, ["train", "--preset", "best", "--epochs", "9", "--no-tracking"])
    CliRunner().invoke(main, ["train", "--preset", "best", "--init", "arcade-v1", "--no-tracking"])
    CliRunner().invoke(main, ["train", "--image-size", "native", "--xray-augment", "--ema-epochs", "2.5",
                              "--no-tracking"])
    assert [(c.preset, c.init, c.image_size, c.epochs, c.xray_augment, c.ema_epochs) for c in taken] == [
        ("best", "auto", 256, 9, False, 0.0), ("best", "arcade-v1", 256, None, False, 0.0),
        (None, "auto", NATIVE, None, True, 2.5)]
