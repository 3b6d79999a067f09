"""The registry of training losses, all MONAI's, all taking logits and binary masks."""

from __future__ import annotations

from typing import Callable

from torch import nn


def _dice_ce() -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True)


def _dice() -> nn.Module:
    # soft Dice alone: the measure itself, without the cross-entropy's per-pixel term
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True)


def _dice_cldice() -> nn.Module:
    # Dice plus soft centreline Dice: rewards connected vessel trees, not only overlapping pixels.
    from monai.losses import SoftDiceclDiceLoss

    return SoftDiceclDiceLoss(sigmoid=True)


def _focal() -> nn.Module:
    from monai.losses import FocalLoss

    return FocalLoss(use_softmax=False)   # sigmoid focal loss on the single vessel channel


LOSSES: dict[str, Callable[[], nn.Module]] = {"dice_ce": _dice_ce, "dice": _dice, "dice_cldice": _dice_cldice,
                                               "focal": _focal}


def build_loss(name: str) -> nn.Module:
    return LOSSES[name]()   # the config module has checked the name
