"""The registry of model families, all MONAI networks: one output channel of logits.

`SegmentationModel` wraps a network for inference and export: it pads any spatial size up to what
the network's down-sampling needs, applies the sigmoid and crops back, so the logged model takes
(N,1,H,W) float32 frames of any size and returns vessel probabilities of the same size.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from coroseg.errors import InputError


def _unet(**kwargs: Any) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(**kwargs)


def _attention_unet(**kwargs: Any) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(**kwargs)


def _basic_unet(**kwargs: Any) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(**kwargs)


class _FirstOutput(nn.Module):
    """UNet++ returns one output per decoder depth (for deep supervision); keep the full-depth one."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def _unetpp(**kwargs: Any) -> nn.Module:
    from monai.networks.nets import BasicUNetPlusPlus

    return _FirstOutput(BasicUNetPlusPlus(**kwargs))


def _dynunet(**kwargs: Any) -> nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(**kwargs)


def _segresnet(**kwargs: Any) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(**kwargs)


# Every network takes one grey channel of a 2-D frame and gives one channel of logits.
IO_KWARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1}
DEFAULT_WIDTH = 16                 # channels of the first level; each family's widths below scale with it
FEATURES = [DEFAULT_WIDTH * m for m in (1, 2, 4, 8, 16)]


@dataclass(frozen=True)
class Family:
    network: Callable[..., nn.Module]
    architecture: dict[str, Any]   # the constructor's keyword arguments, recorded with every model (JSON-able)
    divisor: int                   # input sides must be multiples of this (total down-sampling factor)
    width_key: str                 # the constructor argument holding the channel counts, scaled by `width`


FAMILIES: dict[str, Family] = {
    # Instance norm with learnable affine: MONAI's default (no affine) trains several times slower here,
    # as the output cannot shift the background logits far from zero (measured on synthetic frames).
    "unet": Family(_unet, {**IO_KWARGS, "channels": FEATURES, "strides": [2, 2, 2, 2], "num_res_units": 2,
                           "norm": ["instance", {"affine": True}]}, 16, "channels"),
    "attention_unet": Family(_attention_unet, {**IO_KWARGS, "channels": FEATURES, "strides": [2, 2, 2, 2]}, 16, "channels"),
    "basic_unet": Family(_basic_unet, {**IO_KWARGS, "features": [*FEATURES, DEFAULT_WIDTH]}, 16, "features"),
    "unetpp": Family(_unetpp, {**IO_KWARGS, "features": [*FEATURES, DEFAULT_WIDTH]}, 16, "features"),
    "segresnet": Family(_segresnet, {**IO_KWARGS, "init_filters": DEFAULT_WIDTH}, 8, "init_filters"),
    # nnU-Net's network. With deep_supervision (--deep-supervision), in training mode it also returns logits of
    # its 2 next-coarser decoder levels, brought to full size and stacked on dim 1 (N, 3, 1, H, W), which the
    # loss weighs 1, 1/2, 1/4 (trainer.py); in eval mode, as exported and served, the full-size output alone.
    "dynunet": Family(_dynunet, {**IO_KWARGS, "kernel_size": [3] * 5, "strides": [1, 2, 2, 2, 2],
                                 "upsample_kernel_size": [2] * 4, "filters": FEATURES, "res_block": True,
                                 "norm_name": ["instance", {"affine": True}], "deep_supervision": False,
                                 "deep_supr_num": 2}, 16, "filters"),
}
DEEP_SUPERVISED = "deep_supervision"   # the constructor argument of the families that can train with it
DEFAULT_FAMILY = "unet"


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise InputError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def architecture_of(name: str, recorded: dict[str, Any] | None = None, width: int = DEFAULT_WIDTH,
                    deep_supervision: bool = False) -> dict[str, Any]:
    """The constructor's kwargs of a family at a first-level `width` (and `deep_supervision` where it has it):
    today's, overridden by those a model recorded when it was logged (so it is rebuilt as it was trained,
    whatever the defaults are now). A model's own are checked by `ModelSpec.from_metadata` before they get here."""
    chosen = family(name)
    base = copy.deepcopy(chosen.architecture)
    channels = base[chosen.width_key]
    base[chosen.width_key] = ([c * width // DEFAULT_WIDTH for c in channels] if isinstance(channels, list)
                              else channels * width // DEFAULT_WIDTH)
    if deep_supervision:
        if DEEP_SUPERVISED not in base:
            able = ", ".join(n for n, f in FAMILIES.items() if DEEP_SUPERVISED in f.architecture)
            raise InputError(f"deep supervision: the {name} family cannot train with it (only {able})")
        base[DEEP_SUPERVISED] = True
    return {**base, **copy.deepcopy(recorded or {})}


def build_network(name: str, architecture: dict[str, Any] | None = None) -> nn.Module:
    return family(name).network(**architecture_of(name, architecture))


def build_model(name: str, architecture: dict[str, Any] | None = None,
                divisor: int | None = None) -> "SegmentationModel":
    return SegmentationModel(build_network(name, architecture), divisor or family(name).divisor)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Vessels are ~5% of a frame. Starting the output at that prior (a learnable logit offset, as in
# RetinaNet) skips the first phase where the net predicts vessel everywhere; measured on the demo recipe
# over 3 seeds: best val Dice 0.70 +- 0.01 without it, 0.77 +- 0.01 with it.
VESSEL_PRIOR = 0.05


class Ensemble(nn.Module):
    """The mean of its members' vessel probabilities: the models of a cross-validation's folds."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


class SegmentationModel(nn.Module):
    """Any (N,1,H,W) float32 frame batch in, vessel probabilities of the same shape out."""

    def __init__(self, network: nn.Module, divisor: int) -> None:
        super().__init__()
        self.network = network
        self.divisor = divisor
        self.prior_logit = nn.Parameter(torch.tensor(math.log(VESSEL_PRIOR / (1 - VESSEL_PRIOR))))

    def logits(self, x: torch.Tensor, export_safe: bool = False) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        d = self.divisor
        # For export, always pad by 1..d pixels, never 0: a pad that is empty for some sizes makes
        # torch.export specialise on the input size, and the exported model would reject other sizes.
        pad_h, pad_w = (d - h % d, d - w % d) if export_safe else (-h % d, -w % d)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.network(x)[..., :h, :w] + self.prior_logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x, export_safe=True))
