"""Procedural X-ray coronary angiograms with exact vessel masks.

Each frame is built in three steps, all drawn from one ``numpy.random.default_rng(seed)``:

1. A vessel tree: one or two tortuous, tapering trunks that branch until a target vessel
   area (about 4-8 % of the frame) is reached, plus faint unlabelled twigs and sometimes an
   unlabelled catheter. Centrelines are random walks whose curvature mixes a constant bias
   (the C shapes of real arteries) with smooth noise at two scales (bends and tortuosity).
2. Rendering: for each group of vessels, a Euclidean distance transform to the rasterised
   centreline gives every pixel its distance to, and the width of, the nearest vessel. The
   mask is ``distance < width / 2``; the darkening follows Beer-Lambert absorption along the
   chord of a cylinder, so vessels are darker in the middle than at their edges.
3. Imaging: a bright low-frequency anatomical background (blobs, gradient, diaphragm-like
   shadow, spine-like band), blur, signal-dependent correlated noise and a circular field of
   view with a dark border. Vessels outside the field of view are invisible and unlabelled.

Lengths and widths are given in pixels at 300 px and scaled with ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

REF_SIZE = 300  # lengths below are in pixels at this frame size
STEP = 0.5  # centreline sample spacing (px): dense enough that rasterised lines have no gaps
REF_WIDTH = 7.0  # width (px at 300) of a main artery; contrast is specified for it
MIN_WIDTH = 2.2  # thinnest labelled vessel (px at 300), like the thinnest expert labels
MAX_LABELLED_LEVEL = 2  # trunks (0), branches (1), twigs (2)
UNLABELLED_GROUPS = ("faint", "catheter")  # drawn in the image, absent from the mask


@dataclass
class _Vessel:
    """A sampled centreline with per-point width (px) and attenuation (per px of chord)."""

    xy: np.ndarray  # (n, 2) points as (x, y)
    heading: np.ndarray  # (n,) direction of travel in radians
    width: np.ndarray  # (n,)
    density: np.ndarray  # (n,)
    level: int
    group: str  # vessels of one group are rendered by one distance transform


def _smooth_noise(rng: np.random.Generator, n: int, corr: float) -> np.ndarray:
    """Unit-variance 1-D noise correlated over ``corr`` samples."""
    noise = ndi.gaussian_filter1d(rng.standard_normal(n), max(corr, 0.5), mode="reflect")
    return noise / (noise.std() + 1e-12)


def _centreline(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    bias: float,
    wiggles: list[tuple[float, float]],
) -> tuple[np.ndarray, np.ndarray]:
    """Centreline turning at constant rate ``bias`` (rad/px) plus heading wiggles.

    Each wiggle is (amplitude in rad, correlation length in px). Wiggles are added to the
    heading rather than integrated into it, so they bend the course without making the
    vessel wander off in a random walk.
    """
    n = max(int(length / STEP), 4)
    theta = heading + bias * STEP * np.arange(n)
    for amplitude, corr in wiggles:
        theta += amplitude * _smooth_noise(rng, n, corr / STEP)
    steps = STEP * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return start + np.cumsum(steps, axis=0), theta


def _make_vessel(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    widths: tuple[float, float],
    density: float,
    level: int,
    scale: float,
    group: str,
    bias: float,
) -> _Vessel:
    """A tapering vessel whose contrast wanders and fades distally (contrast wash-out)."""
    # Smaller vessels are more tortuous, as in real frames.
    tortuosity = (0.1 + 0.15 * level) * rng.uniform(0.3, 1.5)
    wiggles = [(rng.uniform(0.15, 0.45), 25 * scale), (tortuosity, 5 * scale)]
    xy, theta = _centreline(rng, start, heading, length, bias, wiggles)
    t = np.linspace(0.0, 1.0, len(theta))
    width = widths[0] + (widths[1] - widths[0]) * t
    wander = np.clip(1 + 0.2 * _smooth_noise(rng, len(t), 30 * scale / STEP), 0.5, 1.5)
    fade = 1 - rng.uniform(0.0, 0.5) * t
    return _Vessel(xy, theta, width, density * wander * fade, level, group)


def _attenuation(darkening: float, width: np.ndarray | float, scale: float) -> np.ndarray:
    """Attenuation giving ``darkening`` at the centre of a REF_WIDTH vessel.

    Thinner vessels get a denser fill (width ** -0.5) so that, as in real frames, they stay
    visible instead of fading with their chord length.
    """
    ref = REF_WIDTH * scale
    return -np.log1p(-darkening) / ref * (np.asarray(width) / ref) ** -0.5


def _visible(vessel: _Vessel, inside: np.ndarray) -> np.ndarray:
    """Which centreline points fall inside the frame and its field of view."""
    size = inside.shape[0]
    ij = np.round(vessel.xy).astype(int)
    ok = np.all((ij >= 0) & (ij < size), axis=1)
    ok[ok] = inside[ij[ok, 1], ij[ok, 0]]
    return ok


def _grow_tree(
    rng: np.random.Generator, size: int, fov: tuple[np.ndarray, float], inside: np.ndarray
) -> list[_Vessel]:
    """Trunks, then branches until a target visible vessel area is reached, then extras."""
    scale = size / REF_SIZE
    centre, radius = fov
    darkening = rng.uniform(0.15, 0.5)  # centre darkening of a main artery, varies per image
    target = rng.uniform(0.04, 0.08) * size * size

    trunks = []
    for _ in range(1 + int(rng.random() < 0.35)):
        angle = rng.uniform(0, 2 * np.pi)
        start = centre + rng.uniform(0.3, 1.0) * radius * np.array([np.cos(angle), np.sin(angle)])
        heading = angle + np.pi + rng.uniform(-1.0, 1.0)  # roughly towards the centre
        w0 = rng.uniform(6.5, 11.0) * scale
        w1 = max(w0 * rng.uniform(0.45, 0.7), MIN_WIDTH * scale)
        bias = rng.choice([-1, 1]) * rng.uniform(0.5, 2.5) / size  # C-shaped course
        trunks.append(
            _make_vessel(
                rng, start, heading, rng.uniform(0.8, 1.5) * size, (w0, w1),
                _attenuation(darkening, w0, scale), 0, scale, "trunk", bias,
            )
        )
    tree = [(v, _visible(v, inside)) for v in trunks]
    # Mask area of a vessel ~ its width summed along its visible length.
    area = sum(np.sum(v.width[vis]) * STEP for v, vis in tree)
    while area < target and len(tree) < 60:
        child = _branch(rng, tree, scale, size, labelled=True)
        vis = _visible(child, inside)
        tree.append((child, vis))
        area += np.sum(child.width[vis]) * STEP

    vessels = [v for v, _ in tree]
    for _ in range(rng.integers(4, 15)):
        vessels.append(_branch(rng, tree, scale, size, labelled=False))
    if rng.random() < 0.25:
        vessels.append(_catheter(rng, trunks[0], darkening, scale, size))
    return vessels


def _branch(
    rng: np.random.Generator,
    tree: list[tuple[_Vessel, np.ndarray]],
    scale: float,
    size: int,
    labelled: bool,
) -> _Vessel:
    """A side branch leaving a visible point of a labelled vessel of the (vessel, visible) tree."""
    parents = [(v, vis) for v, vis in tree if not labelled or v.level < MAX_LABELLED_LEVEL]
    # Wide, long, visible vessels carry more branches; trunks most of all.
    weights = np.array([np.sum(v.width[vis]) / (1 + v.level) for v, vis in parents]) + 1e-9
    parent, vis = parents[rng.choice(len(parents), p=weights / weights.sum())]
    candidates = np.flatnonzero(vis[: int(0.9 * len(vis))])
    k = int(rng.choice(candidates)) if len(candidates) else 0
    heading = parent.heading[k] + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2)
    if labelled:
        w0 = max(parent.width[k] * rng.uniform(0.45, 0.85), MIN_WIDTH * scale)
        w1 = max(w0 * rng.uniform(0.4, 0.8), MIN_WIDTH * scale)
        level = parent.level + 1
        length = rng.uniform(0.3, 0.8) * size / level**1.5
        group = f"level{level}"
        fill = 1.0  # same contrast agent concentration as the parent
    else:
        w0 = rng.uniform(1.0, 1.8) * scale
        w1 = w0 * 0.7
        level = MAX_LABELLED_LEVEL + 1
        length = rng.uniform(0.05, 0.2) * size
        group = "faint"
        fill = rng.uniform(0.3, 0.7)
    # Same thinner-is-denser law as _attenuation, relative to the parent at the junction.
    density = fill * parent.density[k] * (w0 / parent.width[k]) ** -0.5
    bias = rng.uniform(-1.5, 1.5) / size
    return _make_vessel(
        rng, parent.xy[k], heading, length, (w0, w1), density, level, scale, group, bias
    )


def _catheter(
    rng: np.random.Generator, trunk: _Vessel, darkening: float, scale: float, size: int
) -> _Vessel:
    """An unlabelled, nearly straight, uniform tube leaving the trunk's ostium backwards."""
    width = rng.uniform(3.0, 4.5) * scale
    xy, theta = _centreline(
        rng, trunk.xy[0], trunk.heading[0] + np.pi, 1.5 * size, 0.0, [(0.2, 60 * scale)]
    )
    n = len(theta)
    density = np.full(n, _attenuation(darkening * rng.uniform(0.8, 1.2), width, scale))
    return _Vessel(xy, theta, np.full(n, width), density, 0, "catheter")


def _render(vessels: list[_Vessel], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Absorbance (sum of chord x attenuation) and mask of the labelled vessels."""
    pad = int(np.ceil(max(v.width.max() for v in vessels) / 2)) + 2
    canvas = size + 2 * pad
    absorbance = np.zeros((size, size))
    mask = np.zeros((size, size), dtype=bool)
    # One distance transform per group, so a thin branch never carves a notch into the
    # wider vessel it leaves from (the nearest centreline would otherwise be the branch's).
    for group in dict.fromkeys(v.group for v in vessels):
        members = [v for v in vessels if v.group == group]
        xy = np.concatenate([v.xy for v in members]) + pad
        width = np.concatenate([v.width for v in members])
        density = np.concatenate([v.density for v in members])
        ij = np.round(xy).astype(int)
        ok = np.all((ij >= 0) & (ij < canvas), axis=1)
        width_map = np.zeros((canvas, canvas))
        density_map = np.zeros((canvas, canvas))
        width_map[ij[ok, 1], ij[ok, 0]] = width[ok]
        density_map[ij[ok, 1], ij[ok, 0]] = density[ok]
        dist, (iy, ix) = ndi.distance_transform_edt(width_map == 0, return_indices=True)
        crop = (slice(pad, pad + size), slice(pad, pad + size))
        dist, iy, ix = dist[crop], iy[crop], ix[crop]
        half = width_map[iy, ix] / 2
        chord = 2 * np.sqrt(np.clip(half**2 - dist**2, 0, None))
        absorbance += density_map[iy, ix] * chord
        if group not in UNLABELLED_GROUPS:
            mask |= dist < half
    return absorbance, mask


def _field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth unit-variance 2-D noise with about ``cells`` blobs across the frame."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    # Bicubic upsampling of a coarse grid: smooth and far cheaper than a huge Gaussian.
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-12)


def _soft_step(x: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 transition around x = 0 with unit width."""
    return 0.5 * (1 + np.tanh(x))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bright, low-frequency anatomy in gray levels."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    gx, gy = rng.normal(0, 0.2, 2)
    gain = 1 + rng.uniform(0.05, 0.25) * _field(rng, size, 2)
    gain += rng.uniform(0.01, 0.05) * _field(rng, size, 6) + gx * x + gy * y
    if rng.random() < 0.7:
        # Diaphragm / heart shadow: a huge disc whose soft rim crosses the frame.
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(1.5, 3.0)
        rim = dist - rng.uniform(0.3, 1.2)
        r = np.hypot(x - dist * np.cos(angle), y - dist * np.sin(angle))
        gain *= 1 - rng.uniform(0.15, 0.45) * _soft_step((rim - r) / rng.uniform(0.02, 0.1))
    if rng.random() < 0.4:
        # Spine-like band, roughly vertical, brighter or darker than its surroundings.
        angle = rng.normal(0, 0.25)
        offset = x * np.cos(angle) + y * np.sin(angle) - rng.uniform(-0.6, 0.6)
        half_width = rng.uniform(0.1, 0.25)
        band = _soft_step((half_width - np.abs(offset)) / 0.04)
        gain *= 1 + rng.uniform(-0.15, 0.12) * band
    mottle = rng.uniform(0.005, 0.025) * _field(rng, size, max(size // 10, 4))
    return rng.uniform(100, 170) * np.clip(gain + mottle, 0.3, None)


def _field_of_view(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Soft circular aperture in [0, 1] (all ones for frames without one), centre, radius."""
    centre = size / 2 + rng.normal(0, 0.02 * size, 2)
    radius = rng.uniform(0.5, 0.62) * size
    if rng.random() < 0.2:
        return np.ones((size, size)), centre, np.inf
    y, x = np.mgrid[:size, :size]
    r = np.hypot(x - centre[0], y - centre[1])
    return _soft_step((radius - r) / (1.0 * size / REF_SIZE)), centre, radius


def _imaging(rng: np.random.Generator, image: np.ndarray, aperture: np.ndarray) -> np.ndarray:
    """Aperture, blur and correlated, signal-dependent noise; returns uint8."""
    scale = image.shape[0] / REF_SIZE
    border = rng.uniform(0, 12)
    image = image * aperture + border * (1 - aperture)
    image = ndi.gaussian_filter(image, rng.uniform(0.5, 1.0) * scale)
    # Real frames show faint horizontal streaks: noise correlated along rows.
    noise = ndi.gaussian_filter(
        rng.standard_normal(image.shape), (0.6 * scale, rng.uniform(0.6, 2.5) * scale)
    )
    noise /= noise.std()
    image = image + rng.uniform(0.15, 0.4) * np.sqrt(np.clip(image, 1, None)) * noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def synth_pair(seed: int, size: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """One angiogram (uint8, shape (size, size)) and its mask (bool, same shape), deterministic in (seed, size)."""
    rng = np.random.default_rng(seed)
    aperture, centre, radius = _field_of_view(rng, size)
    inside = aperture > 0.5
    tree_radius = min(radius, 0.55 * size)  # frames without an aperture still centre the tree
    vessels = _grow_tree(rng, size, (centre, tree_radius), inside)
    absorbance, mask = _render(vessels, size)
    image = _imaging(rng, _background(rng, size) * np.exp(-absorbance), aperture)
    return image, mask & inside


def write_synthetic_set(
    out: Path | str, count: int = 20, size: int = 300, seed: int = 0
) -> list[Path]:
    """Write 1.png, 1_gt.png ... count.png, count_gt.png (mask saved 0/255) into out (created if missing).

    Image i uses ``synth_pair(seed * 100003 + i, size)``, so sets with different seeds differ.
    Never overwrites: if any target file already exists, raises FileExistsError naming that
    file before writing anything. Returns the list of image paths (not masks).
    """
    out = Path(out)
    targets = [(out / f"{i}.png", out / f"{i}_gt.png") for i in range(1, count + 1)]
    for path in (p for pair in targets for p in pair):
        if path.exists():
            raise FileExistsError(f"refusing to overwrite {path}")
    out.mkdir(parents=True, exist_ok=True)
    for i, (image_path, mask_path) in enumerate(targets, start=1):
        image, mask = synth_pair(seed * 100003 + i, size)
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
    return [image for image, _ in targets]
