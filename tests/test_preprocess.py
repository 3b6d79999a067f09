"""Angiogram preprocessing: field of view, intensity normalisation, CLAHE; the same in training and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coroseg.data.augment import BatchAugmentation
from coroseg.data.preprocess import (
    Preprocessing,
    apply_clahe,
    detect_field_of_view,
    normalize_intensity,
    prepare,
)
from coroseg.inference.model_loading import LoadedModel
from coroseg.inference.predictor import Predictor
from coroseg.model_spec import ModelSpec
from coroseg.training.trainer import OUTSIDE_FOV_LOGIT, _fov_logits

from .conftest import run_cli

SIDE = 200


def _anatomy(seed: int = 0) -> np.ndarray:
    """A bright, smoothly varying background with noise, and dark vessels, one of them leaving the frame."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    frame = 0.55 + 0.2 * ndimage.gaussian_filter(rng.standard_normal((SIDE, SIDE)), 20) * 8
    frame += 0.02 * rng.standard_normal((SIDE, SIDE))
    frame[100:104, :] = 0.2                       # a horizontal vessel running off both edges
    frame[20:180, 60:63] = 0.25                   # a vertical one inside
    return np.clip(frame, 0, 1).astype(np.float32)


def _disk(radius: float) -> np.ndarray:
    y, x = np.mgrid[:SIDE, :SIDE]
    return (x - SIDE / 2 + 0.5) ** 2 + (y - SIDE / 2 + 0.5) ** 2 <= radius**2


def _collimated(frame: np.ndarray, radius: float = 0.56 * SIDE, level: float = 0.06) -> np.ndarray:
    """The frame seen through a circular collimator: outside, a flat dark border with a little noise."""
    rng = np.random.default_rng(1)
    out = frame.copy()
    outside = ~_disk(radius)
    out[outside] = level + 0.01 * rng.standard_normal(outside.sum())
    return np.clip(out, 0, 1).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_circular_field_of_view_is_found_despite_vessels_reaching_its_edge():
    truth = _disk(0.56 * SIDE)
    fov = detect_field_of_view(_collimated(_anatomy()))
    assert fov.dtype == bool and fov.shape == (SIDE, SIDE)
    assert _iou(fov, truth) > 0.97
    assert fov[100, 20] and fov[100, 180]         # the vessel ends inside the circle stay in the field of view


def test_frames_without_a_collimator_border_count_whole():
    frame = _anatomy()
    assert detect_field_of_view(frame).all()      # dark vessels running off the edges are not a border
    shadow = frame.copy()
    shadow[140:, :] *= 0.6                        # a dark diaphragm-like shadow touching the bottom edge
    assert detect_field_of_view(shadow).all()
    assert detect_field_of_view(np.full((50, 60), 0.3, np.float32)).all()     # flat frame


def test_field_of_view_and_normalisation_do_not_depend_on_the_intensity_scale():
    frame = _collimated(_anatomy())
    twelve_bit = frame * (4095 / 65535)           # 12-bit data read from 16-bit words: all values below 0.07
    fov, fov12 = detect_field_of_view(frame), detect_field_of_view(twelve_bit)
    assert np.array_equal(fov, fov12)
    assert np.allclose(normalize_intensity(frame, fov), normalize_intensity(twelve_bit, fov12), atol=1e-5)


def test_normalisation_maps_robust_percentiles_to_0_and_1_and_zeroes_the_border():
    frame = _collimated(_anatomy())
    frame[50, 50:55] = 1.0                        # a few saturated pixels must not squeeze the range
    fov = detect_field_of_view(frame)
    out = normalize_intensity(frame, fov)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert (out[~fov] == 0).all()
    inside = out[fov]
    assert np.mean(inside <= 0.0) == pytest.approx(0.005, abs=0.002)
    assert np.mean(inside >= 1.0) == pytest.approx(0.005, abs=0.002)


def test_clahe_raises_local_contrast_of_a_flat_frame():
    rng = np.random.default_rng(0)
    frame = (0.5 + 0.02 * rng.standard_normal((128, 128))).astype(np.float32)
    frame[60:64, :] -= 0.05                       # a faint vessel
    out = apply_clahe(frame)
    assert out.shape == frame.shape and out.min() >= 0 and out.max() <= 1

    def vessel_contrast(f: np.ndarray) -> float:
        return float(f.mean() - f[60:64].mean())

    assert vessel_contrast(out) > 1.5 * vessel_contrast(frame)    # clip limit 2 allows about 2x


def test_prepare_follows_its_settings():
    frame = _collimated(_anatomy())
    raw_image, all_fov = prepare(frame, Preprocessing(normalize=False, field_of_view=False, clahe=False))
    assert np.array_equal(raw_image, frame) and all_fov.all()
    image, fov = prepare(frame, Preprocessing())
    assert not fov.all() and (image[~fov] == 0).all()
    equalised, _ = prepare(frame, Preprocessing(clahe=True))
    assert not np.allclose(equalised, image) and (equalised[~fov] == 0).all()


def test_settings_round_trip_through_model_metadata_and_older_models_get_none():
    settings = Preprocessing(field_of_view=False, clahe=True)
    metadata = json.loads(json.dumps({"preprocessing": settings.to_metadata()}))
    assert Preprocessing.from_metadata(metadata) == settings
    assert Preprocessing.from_metadata({}) == Preprocessing(normalize=False, field_of_view=False, clahe=False)


def test_pixels_outside_the_field_of_view_add_no_loss_and_get_no_gradient():
    from coroseg.training.losses import build_loss

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.value = torch.nn.Parameter(torch.randn(2, 1, 32, 32))

        def logits(self, images):
            return self.value * 1.0

    model = Logits()
    fov = torch.zeros(2, 1, 32, 32)
    fov[..., 8:24, 8:24] = 1
    masks = (torch.rand(2, 1, 32, 32) > 0.8).float() * fov
    logits = _fov_logits(model.logits, torch.zeros(2, 1, 32, 32), fov)
    assert (logits[fov == 0] == OUTSIDE_FOV_LOGIT).all()
    loss = build_loss("dice_ce")(logits, masks)
    loss.backward()
    assert (model.value.grad[fov == 0] == 0).all() and (model.value.grad[fov == 1] != 0).any()


def test_augmentation_moves_the_field_of_view_with_the_frame():
    torch.manual_seed(0)
    images = torch.rand(4, 1, 64, 64)
    y, x = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    fov = (((x - 31.5) ** 2 + (y - 31.5) ** 2) <= 36**2).float().expand(4, 1, 64, 64).contiguous()
    out_images, out_masks, out_fov = BatchAugmentation()(images, fov.clone(), fov)
    assert torch.equal(out_masks, out_fov)        # the same geometry for mask and field of view
    assert out_fov.shape == fov.shape and set(out_fov.unique().tolist()) <= {0.0, 1.0}


class _EverywhereVessel(torch.nn.Module):
    """A 'network' that finds vessel everywhere (probability 0.9)."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor(0.9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x) * self.p


def test_predictions_are_background_outside_the_field_of_view():
    frame = _collimated(_anatomy())
    metadata = {"image_size": 64, "preprocessing": Preprocessing().to_metadata()}
    prediction = Predictor(LoadedModel(_EverywhereVessel(), ModelSpec.from_metadata(metadata, "test"), "in-memory")).predict([frame])[0]
    assert prediction.mask.shape == frame.shape
    assert np.array_equal(prediction.mask, prediction.fov) and not prediction.fov.all()
    assert (prediction.probabilities[~prediction.fov] == 0).all()
    legacy = Predictor(LoadedModel(_EverywhereVessel(), ModelSpec.from_metadata({"image_size": 64}, "test"), "in-memory")).predict([frame])[0]
    assert legacy.mask.all()                      # a model recorded without preprocessing is used as before


def test_training_records_preprocessing_that_predict_then_applies(tmp_path, small_config, pairs_dir):
    from mlflow.models import Model

    train = run_cli("train", "--config", small_config, "--epochs", 1, "--data", pairs_dir, "--clahe",
                    "--no-field-of-view", "--no-tracking", "--output-dir", tmp_path / "runs", cwd=tmp_path)
    assert train.exit_code == 0, train.stderr
    model_dir = next((tmp_path / "runs").rglob("MLmodel")).parent
    recorded = Model.load(str(model_dir)).metadata["preprocessing"]
    assert recorded == {"normalize": True, "field_of_view": False, "clahe": True}
    out = tmp_path / "pred"
    predicted = run_cli("predict", "--model", model_dir, "--input", pairs_dir, "--output", out, "--no-tracking",
                        "--tta")
    assert predicted.exit_code == 0, predicted.stderr
    metadata = json.loads(next((out / "predictions" / "metadata").glob("*.json")).read_text())
    assert metadata["field_of_view_fraction"] == 1.0
    assert json.loads((out / "inference" / "summary" / "summary.json").read_text())["tta"] is True


class _LeftToRightRamp(torch.nn.Module):
    """A 'network' whose answer depends on position only: 0 at the left edge, 1 at the right."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, x.shape[-1], device=x.device) * self.p
        return ramp.expand_as(x).contiguous()


def test_flip_test_time_augmentation_averages_the_mirror_images():
    frame = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    model = LoadedModel(_LeftToRightRamp(), ModelSpec.from_metadata({"image_size": 64}, "test"), "in-memory")
    plain = Predictor(model).predict([frame])[0].probabilities
    assert plain[:, 0].max() < 0.05 and plain[:, -1].min() > 0.95
    averaged = Predictor(model, tta=True).predict([frame])[0].probabilities
    assert np.allclose(averaged, 0.5, atol=1e-5)   # the ramp and its mirror image cancel out


def _no_change(monkeypatch) -> None:
    import coroseg.data.augment as augment

    for name in ("FLIP_P", "AFFINE_P", "GAMMA_P", "CONTRAST_P", "BLUR_P", "NOISE_P", "IODINE_P", "ANATOMY_P",
                 "SCATTER_P", "QUANTUM_P"):
        monkeypatch.setattr(augment, name, 0.0)


@pytest.mark.parametrize("xray", [False, True])
def test_augmentation_with_every_change_off_is_the_identity(monkeypatch, xray):
    _no_change(monkeypatch)
    images, masks = torch.rand(3, 1, 40, 48), (torch.rand(3, 1, 40, 48) > 0.7).float()
    fov = torch.ones_like(masks)
    out_images, out_masks, out_fov = BatchAugmentation(xray)(images, masks, fov)
    assert torch.allclose(out_images, images, atol=1e-5)
    assert torch.equal(out_masks, masks) and torch.equal(out_fov, fov)


def test_augmentation_flips_each_sample_on_its_own(monkeypatch):
    import coroseg.data.augment as augment

    _no_change(monkeypatch)
    monkeypatch.setattr(augment, "FLIP_P", 0.5)
    torch.manual_seed(3)
    images = torch.rand(16, 1, 24, 24)
    masks = (images > 0.5).float()
    out_images, out_masks, _ = BatchAugmentation()(images, masks, torch.ones_like(masks))
    kinds = set()
    for i in range(16):
        for dims in ((), (-1,), (-2,), (-2, -1)):
            flipped = images[i].flip(dims) if dims else images[i]
            if torch.allclose(out_images[i], flipped, atol=1e-5):
                assert torch.equal(out_masks[i], (flipped > 0.5).float())
                kinds.add(dims)
                break
        else:
            raise AssertionError(f"sample {i} is not a flip of its frame")
    assert len(kinds) >= 3                       # samples draw their own flips


@pytest.mark.parametrize("xray", [False, True])
def test_augmentation_draws_on_the_batch_device_and_keeps_the_range(xray):
    torch.manual_seed(0)
    images = torch.rand(8, 1, 32, 32)
    out_images, out_masks, out_fov = BatchAugmentation(xray)(images, (images > 0.8).float(), torch.ones_like(images))
    assert out_images.min() >= 0 and out_images.max() <= 1 and not torch.allclose(out_images, images)
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0} and out_fov.shape == images.shape


@pytest.mark.parametrize("xray", [False, True])
def test_augmentation_is_a_function_of_its_draws(xray):
    """The compiled training step draws the random numbers ahead of the changes (trainer._batch_loss): the
    changes must use those numbers alone, and drawing them apart must give what drawing them inside does."""
    images = torch.rand(4, 1, 32, 40)
    masks, fov = (images > 0.8).float(), torch.ones_like(images)
    augment = BatchAugmentation(xray)
    torch.manual_seed(5)
    inside = augment(images, masks, fov)
    torch.manual_seed(5)
    draws = augment.draw(tuple(images.shape), images.device)
    torch.manual_seed(99)                        # the changes themselves draw nothing
    apart, again = augment(images, masks, fov, draws), augment(images, masks, fov, draws)
    for a, b, c in zip(inside, apart, again):
        assert torch.equal(a, b) and torch.equal(b, c)
    assert not torch.equal(augment(images, masks, fov)[0], inside[0])       # while new draws change them


def _attenuation(frame: torch.Tensor) -> torch.Tensor:
    import coroseg.data.augment as augment

    return -torch.log(augment.XRAY_FLOOR + (1 - augment.XRAY_FLOOR) * frame)


def test_xray_augmentation_scales_the_contrast_agents_attenuation_only(monkeypatch):
    """Half the iodine: a vessel's attenuation above its surrounding tissue halves; tissue is left as it was."""
    import coroseg.data.augment as augment

    _no_change(monkeypatch)
    monkeypatch.setattr(augment, "IODINE_P", 1.0)
    monkeypatch.setattr(augment, "IODINE", (0.5, 0.5))
    images = torch.full((2, 1, 48, 48), 0.8)
    masks = torch.zeros_like(images)
    masks[:, :, 20:24, :] = 1.0                   # a horizontal vessel, 4 px wide
    images[masks == 1] = 0.3
    out, out_masks, _ = BatchAugmentation(xray=True)(images, masks, torch.ones_like(images))
    assert torch.equal(out_masks, masks)
    extra_before = _attenuation(torch.tensor(0.3)) - _attenuation(torch.tensor(0.8))
    extra_after = _attenuation(out[masks == 1]) - _attenuation(torch.tensor(0.8))
    assert torch.allclose(extra_after, 0.5 * extra_before, atol=1e-4)
    assert torch.allclose(out[masks == 0], images[masks == 0], atol=1e-5)


def test_xray_quantum_noise_spreads_with_the_square_root_of_the_brightness(monkeypatch):
    import coroseg.data.augment as augment

    _no_change(monkeypatch)
    monkeypatch.setattr(augment, "QUANTUM_P", 1.0)
    monkeypatch.setattr(augment, "QUANTUM_STD", (0.02, 0.02))
    torch.manual_seed(0)
    images = torch.full((4, 1, 64, 64), 0.9)
    images[:, :, :, :32] = 0.1                    # a dark half and a bright half
    out, _, _ = BatchAugmentation(xray=True)(images, torch.zeros_like(images), torch.ones_like(images))
    dark, bright = (out - images)[..., :32].std(), (out - images)[..., 32:].std()
    assert bright / dark == pytest.approx(3.0, rel=0.1)           # sqrt(0.9 / 0.1)
    assert bright == pytest.approx(0.02 * 0.9 ** 0.5, rel=0.1)


@pytest.mark.parametrize("size", [3, 15, 31])
def test_xray_box_blur_is_the_mean_of_the_window_inside_the_frame(size):
    import torch.nn.functional as F

    from coroseg.data.augment import _box

    frames = torch.rand(2, 1, 40, 52)
    window_mean = F.avg_pool2d(frames, size, stride=1, padding=size // 2, count_include_pad=False)
    assert torch.allclose(_box(frames, size), window_mean, atol=1e-5)
