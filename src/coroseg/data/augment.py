"""Batch augmentation: one stage applied to a whole batch on the training device.

Per-sample CPU augmentation starves a GPU (DESIGN.md). Kornia, used before, draws its parameters on the host
and picks the samples to change by boolean indexing: both make the host wait for the device several times a
batch, so a GPU idled while the host prepared every step. Here every random draw is made on the batch's own
device and a skipped change is an identity (angle 0, gamma 1, a delta kernel): no host sync, the same work
for every batch, so the host queues steps ahead of the GPU. Geometry is one `grid_sample` for frames, masks
and fields of view together; intensity changes touch frames only.

`xray=True` adds changes modelled on how an angiogram is formed (`_xray`). An X-ray frame is the beam's
intensity after the body attenuated it, I = I0 exp(-A), so the changes are made to the attenuation A: the
contrast agent's share of a vessel's attenuation scaled (more or less iodine, washout), a smooth attenuation
field added (ribs, diaphragm, the heel effect), scatter (a blurred copy of the frame veiling it) and quantum
noise, whose spread grows with the square root of the photons counted rather than being constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The recipe, as ranges and the probability that each change is made to a frame.
FLIP_P = 0.5                  # horizontal, and separately vertical
AFFINE_P = 0.7
ROTATION_DEGREES = 20.0       # uniform in [-20, 20]
TRANSLATE = 0.05              # of the side, uniform in [-5%, 5%] on each axis
SCALE = (0.85, 1.2)           # zoom (>1 enlarges the content)
GAMMA_P, GAMMA = 0.5, (0.7, 1.5)
CONTRAST_P, CONTRAST = 0.5, (0.7, 1.3)
BLUR_P, BLUR_SIGMA, BLUR_SIZE = 0.2, (0.1, 1.0), 5
NOISE_P, NOISE_STD = 0.4, 0.03
# xray=True (see the module docstring); A = -ln(FLOOR + (1 - FLOOR) * frame): the frame's 0 is A = 3.
XRAY_FLOOR = 0.05
IODINE_P, IODINE = 0.5, (0.5, 1.3)          # the vessels' extra attenuation scaled by this factor
IODINE_POOL = 15                            # px of the box around a vessel pixel that gives its background
ANATOMY_P, ANATOMY_GRID, ANATOMY_STD = 0.5, 4, 0.15   # a 4x4 random field, bicubic to the frame, std 0.15 of A
SCATTER_P, SCATTER, SCATTER_POOL = 0.3, (0.05, 0.3), 31   # veil fraction; side of the box blur that spreads it
QUANTUM_P, QUANTUM_STD = 0.4, (0.01, 0.05)  # std of the noise at the brightest level, sqrt(level) below it


Draws = dict[str, torch.Tensor]


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, dtype=like.dtype)


def _chosen(n: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """Per sample: True with probability p (a tensor on the device, never read by the host)."""
    return torch.rand(n, device=like.device) < p


def draw(shape: tuple[int, int, int, int], device: torch.device, xray: bool = False) -> Draws:
    """Every random number the augmentation of a batch of frames shaped `shape` (N,C,H,W) uses, drawn on the
    device (no host sync). Drawn apart from the changes, which are then a pure function of frames and draws:
    trainer.py compiles that function into one graph with the network, and the compiled step changes the
    frames with the very numbers the eager one draws (torch.compile's own random numbers differ from eager
    ones). The order of the draws is that of the changes, as it was when each change drew its own."""
    n, c, h, w = shape
    like = torch.empty(0, device=device)
    d = {"affine": _chosen(n, AFFINE_P, like), "angle": _uniform(n, -ROTATION_DEGREES, ROTATION_DEGREES, like),
         "zoom": _uniform(n, *SCALE, like), "shift": _uniform(2 * n, -2 * TRANSLATE, 2 * TRANSLATE, like).view(n, 2),
         "flip_x": _chosen(n, FLIP_P, like), "flip_y": _chosen(n, FLIP_P, like)}
    for name, low_high, p in (("gamma", GAMMA, GAMMA_P), ("contrast", CONTRAST, CONTRAST_P),
                              ("blur", BLUR_SIGMA, BLUR_P)):
        d[name], d[f"{name}_on"] = _uniform(n, *low_high, like), _chosen(n, p, like)
    if not xray:
        d["noise_on"] = _chosen(n, NOISE_P, like)
        d["noise"] = torch.randn(shape, device=device)
        return d
    d["iodine"], d["iodine_on"] = _uniform(n, *IODINE, like), _chosen(n, IODINE_P, like)
    d["field"] = torch.randn(n, 1, ANATOMY_GRID, ANATOMY_GRID, device=device)
    d["anatomy_on"] = _chosen(n, ANATOMY_P, like)
    d["veil"], d["veil_on"] = _uniform(n, *SCATTER, like), _chosen(n, SCATTER_P, like)
    d["quantum"], d["quantum_on"] = _uniform(n, *QUANTUM_STD, like), _chosen(n, QUANTUM_P, like)
    d["noise"] = torch.randn(n, 1, h, w, device=device)
    return d


def _per_sample(d: Draws, name: str, identity: float) -> torch.Tensor:
    """Shaped (N, 1, 1, 1): the drawn value where the change was chosen, else the identity."""
    values = d[name]
    return torch.where(d[f"{name}_on"], values, torch.full_like(values, identity)).view(-1, 1, 1, 1)


def _geometry(d: Draws) -> torch.Tensor:
    """Per sample, the 2x3 matrix (normalised coordinates, output -> input) of flips then a random affine."""
    apply = d["affine"]
    angle = torch.where(apply, d["angle"], 0.0) * (math.pi / 180)
    zoom = torch.where(apply, d["zoom"], 1.0)
    shift = torch.where(apply[:, None], d["shift"], 0.0)
    flip_x = 1.0 - 2.0 * d["flip_x"].to(angle.dtype)
    flip_y = 1.0 - 2.0 * d["flip_y"].to(angle.dtype)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    rows_x = torch.stack([cos * flip_x, -sin * flip_y, shift[:, 0]], dim=1)
    rows_y = torch.stack([sin * flip_x, cos * flip_y, shift[:, 1]], dim=1)
    return torch.stack([rows_x, rows_y], dim=1)


def _blur(images: torch.Tensor, d: Draws) -> torch.Tensor:
    """A separable Gaussian blur with its own sigma per sample (a delta kernel where it is not chosen)."""
    n, c, h, w = images.shape
    sigma = d["blur"]
    offsets = torch.arange(BLUR_SIZE, device=images.device, dtype=images.dtype) - BLUR_SIZE // 2
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(images.dtype).expand(n, BLUR_SIZE)
    kernel = torch.where(d["blur_on"][:, None], kernel, delta).repeat_interleave(c, dim=0)
    pad = BLUR_SIZE // 2
    x = F.pad(images.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(n * c, 1, 1, BLUR_SIZE), groups=n * c)
    x = F.conv2d(x, kernel.view(n * c, 1, BLUR_SIZE, 1), groups=n * c)
    return x.view(n, c, h, w)


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    """A box blur of odd side `size` that, at the edges, averages only the pixels inside the frame. Made of
    running sums (two subtractions a pixel, whatever the size): with avg_pool2d's square windows the X-ray
    changes took 0.4 s a batch of 4 frames of 256 px on one CPU thread, the rest of the augmentation 0.02 s."""
    return _box_along(_box_along(x, size, -1), size, -2)


def _box_along(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    length = x.shape[dim]
    sums = F.pad(x.cumsum(dim).movedim(dim, -1), (1, 0)).movedim(-1, dim)     # sums[i]: the first i pixels
    position = torch.arange(length, device=x.device)
    low = (position - size // 2).clamp(min=0)
    high = (position + size // 2 + 1).clamp(max=length)
    shape = [1] * x.dim()
    shape[dim] = length
    count = (high - low).to(x.dtype).view(shape)
    return (sums.index_select(dim, high) - sums.index_select(dim, low)) / count


def _xray(images: torch.Tensor, vessels: torch.Tensor, d: Draws) -> torch.Tensor:
    """The X-ray changes of the module docstring, each made to a frame with its own probability."""
    attenuation = -torch.log(XRAY_FLOOR + (1.0 - XRAY_FLOOR) * images)
    # A vessel's extra attenuation: its own minus that of the tissue around it (the box's non-vessel pixels).
    tissue = 1.0 - vessels
    background = _box(attenuation * tissue, IODINE_POOL) / _box(tissue, IODINE_POOL).clamp_min(1e-3)
    iodine = _per_sample(d, "iodine", 1.0)
    attenuation = attenuation + (iodine - 1.0) * vessels * (attenuation - background).clamp_min(0.0)
    field = F.interpolate(d["field"], size=images.shape[2:], mode="bicubic", align_corners=False)
    anatomy = ANATOMY_STD * d["anatomy_on"].to(images.dtype).view(-1, 1, 1, 1)
    attenuation = attenuation + anatomy * field
    frame = ((torch.exp(-attenuation) - XRAY_FLOOR) / (1.0 - XRAY_FLOOR)).clamp(0.0, 1.0)
    veil = _per_sample(d, "veil", 0.0)
    frame = (1.0 - veil) * frame + veil * _box(frame, SCATTER_POOL)
    quantum = _per_sample(d, "quantum", 0.0)
    return frame + quantum * frame.sqrt() * d["noise"]


class BatchAugmentation(nn.Module):
    """Frames, masks and fields of view in; augmented frames (clipped to [0,1]), binary masks and fields
    of view out. The FOV moves with the geometry, and the zeros padded in fall outside it. `xray`: the
    attenuation-domain changes (module docstring) replace the constant-spread noise. `draws`: the random
    numbers to use (`draw`), drawn here when not given."""

    def __init__(self, xray: bool = False) -> None:
        super().__init__()
        self.xray = xray

    def draw(self, shape: tuple[int, int, int, int], device: torch.device) -> Draws:
        return draw(shape, device, self.xray)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor, fov: torch.Tensor,
                draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.draw(tuple(images.shape), images.device) if draws is None else draws
        c = images.shape[1]
        grid = F.affine_grid(_geometry(d), list(images.shape), align_corners=False)
        moved = F.grid_sample(torch.cat([images, masks, fov], dim=1), grid, mode="bilinear",
                              padding_mode="zeros", align_corners=False)
        images, both = moved[:, :c], (moved[:, c:] > 0.5).to(images.dtype)
        gamma, contrast = _per_sample(d, "gamma", 1.0), _per_sample(d, "contrast", 1.0)
        images = (images.clamp(0.0, 1.0).pow(gamma) * contrast).clamp(0.0, 1.0)
        images = _blur(images, d)
        if self.xray:
            images = _xray(images, both[:, :1], d)
        else:
            images = images + NOISE_STD * d["noise_on"].to(images.dtype).view(-1, 1, 1, 1) * d["noise"]
        return images.clamp_(0.0, 1.0), both[:, : masks.shape[1]], both[:, masks.shape[1]:]
