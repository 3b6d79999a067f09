"""Tests for the procedural angiogram generator."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from coroseg.data.synthetic import synth_pair, write_synthetic_set

SEEDS = range(8)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    return [synth_pair(seed) for seed in SEEDS]


def test_deterministic_in_seed() -> None:
    image_a, mask_a = synth_pair(7)
    image_b, mask_b = synth_pair(7)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    image_c, mask_c = synth_pair(8)
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(mask_a, mask_c)


@pytest.mark.parametrize("size", [64, 300, 512])
def test_dtype_and_shape(size: int) -> None:
    image, mask = synth_pair(3, size)
    assert image.dtype == np.uint8 and image.shape == (size, size)
    assert mask.dtype == bool and mask.shape == (size, size)
    assert mask.any() and not mask.all()


def test_vessel_fraction_like_real_frames(pairs) -> None:
    fractions = [mask.mean() for _, mask in pairs]
    assert 0.03 <= np.mean(fractions) <= 0.10
    assert min(fractions) > 0.01


def test_vessels_darker_than_background(pairs) -> None:
    global_gaps, local_gaps = [], []
    for image, mask in pairs:
        pixels = image.astype(float)
        # Field of view: everything brighter than the dark border around it.
        background = pixels[~mask & (pixels > 40)]
        global_gaps.append(background.mean() - pixels[mask].mean())
        # A tree may sit in a bright region, but it is always darker than its surroundings.
        ring = ndi.binary_dilation(mask, iterations=3) & ~mask
        local_gaps.append(pixels[ring].mean() - pixels[mask].mean())
    assert np.mean(global_gaps) > 0
    assert min(local_gaps) > 0 and np.mean(local_gaps) > 5


def test_mask_is_a_few_large_trees(pairs) -> None:
    for _, mask in pairs:
        labels, _ = ndi.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        assert sizes[sizes > 200].sum() >= 0.8 * mask.sum()


def test_write_synthetic_set(tmp_path: Path) -> None:
    out = tmp_path / "new" / "set"
    paths = write_synthetic_set(out, count=3, size=64, seed=5)
    assert paths == [out / "1.png", out / "2.png", out / "3.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{i}.png" for i in (1, 2, 3)] + [f"{i}_gt.png" for i in (1, 2, 3)]
    )
    image = np.array(Image.open(out / "2.png"))
    mask = np.array(Image.open(out / "2_gt.png"))
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert set(np.unique(mask)) <= {0, 255} and (mask == 255).any()
    expected_image, expected_mask = synth_pair(5 * 100003 + 2, 64)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(mask == 255, expected_mask)


def test_sets_with_different_seeds_differ(tmp_path: Path) -> None:
    first = write_synthetic_set(tmp_path / "a", count=1, size=64, seed=0)[0]
    second = write_synthetic_set(tmp_path / "b", count=1, size=64, seed=1)[0]
    assert first.read_bytes() != second.read_bytes()


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    existing = tmp_path / "2_gt.png"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="2_gt.png"):
        write_synthetic_set(tmp_path, count=3, size=64)
    assert existing.read_bytes() == b"keep me"
    # Nothing was written before the refusal.
    assert [p.name for p in tmp_path.iterdir()] == ["2_gt.png"]
