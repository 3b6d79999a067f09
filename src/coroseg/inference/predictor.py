"""Batched prediction: frames are resized to the working resolution, run through MONAI's sliding-window
inference with the training size as window, and the probabilities are mapped back to each frame's size."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from coroseg.data.dataset import resize_image
from coroseg.inference.model_loading import LoadedModel
from coroseg.training.postprocess import apply_postprocessing


class Predictor:
    def __init__(self, model: LoadedModel, resolution: int | None = None, batch_size: int = 4) -> None:
        self.model = model
        self.resolution = resolution or model.image_size
        self.window = min(model.image_size, self.resolution)
        self.batch_size = batch_size
        self.device = next(model.module.parameters()).device

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def probabilities(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Vessel probability maps, float32, each the size of its frame."""
        from monai.inferers import sliding_window_inference

        side = (self.resolution, self.resolution)
        batch = torch.cat([resize_image(torch.from_numpy(f)[None, None], side) for f in frames]).to(self.device)
        with self._autocast():
            probs = sliding_window_inference(
                batch, roi_size=(self.window, self.window), sw_batch_size=self.batch_size,
                predictor=self.model.module, overlap=0.25, mode="gaussian",
            )
        probs = probs.float().cpu()
        return [resize_image(p[None], f.shape).clamp_(0, 1)[0, 0].numpy() for p, f in zip(probs, frames)]

    def masks(self, probabilities: list[np.ndarray]) -> list[np.ndarray]:
        """Boolean vessel masks: the model's threshold, then its small-piece removal (chosen on validation at
        training time), each mask at its own size (the minimum piece is a fraction of that frame's area)."""
        return [apply_postprocessing(p, self.model.threshold, self.model.min_component_fraction)
                for p in probabilities]
