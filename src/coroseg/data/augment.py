"""Batch augmentation: one stage applied to a whole batch on the training device.

Per-sample CPU augmentation starves a GPU (DESIGN.md); kornia applies random geometry to frames and
masks together, and intensity changes to frames only, on whatever device the batch is on.
"""

from __future__ import annotations

import torch
from torch import nn


def build_augmentation() -> nn.Module:
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.RandomAffine(degrees=20.0, translate=(0.05, 0.05), scale=(0.85, 1.2), p=0.7),
        K.RandomGamma(gamma=(0.7, 1.5), p=0.5),
        K.RandomContrast(contrast=(0.7, 1.3), clip_output=True, p=0.5),
        K.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, 1.0), p=0.2),
        K.RandomGaussianNoise(std=0.03, p=0.4),
        data_keys=["input", "mask"],
    )


class BatchAugmentation(nn.Module):
    """Frames, masks and fields of view in; augmented frames (clipped to [0,1]), binary masks and fields
    of view out. The FOV moves with the geometry, and the zeros the affine pads in fall outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.pipeline = build_augmentation()

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor,
                fov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, both = self.pipeline(images, torch.cat([masks, fov], dim=1))
        both = (both > 0.5).to(images.dtype)
        return images.clamp_(0.0, 1.0), both[:, :1], both[:, 1:]
