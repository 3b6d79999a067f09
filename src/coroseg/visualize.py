"""Pictures for people: overlays of masks on frames, side-by-side panels, training curves."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from coroseg.data.imageio import to_uint8

PREDICTION_COLOR = (255, 64, 64)
TRUTH_COLOR = (64, 220, 64)


def gray_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(to_uint8(image)[..., None], 3, axis=2)


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float = 0.55) -> np.ndarray:
    """The frame in gray with the mask tinted over it (RGB uint8)."""
    rgb = gray_rgb(image).astype(np.float32)
    tint = np.asarray(color, dtype=np.float32)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * tint
    return rgb.astype(np.uint8)


def panel(tiles: Sequence[np.ndarray], labels: Sequence[str], gap: int = 4) -> np.ndarray:
    """Tiles of equal height side by side, each with its label in the top-left corner."""
    height = max(t.shape[0] for t in tiles)
    canvas = Image.new("RGB", (sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1), height), (255, 255, 255))
    draw, x = ImageDraw.Draw(canvas), 0
    for tile, label in zip(tiles, labels):
        canvas.paste(Image.fromarray(tile), (x, 0))
        draw.rectangle((x, 0, x + 7 * len(label) + 6, 13), fill=(0, 0, 0))
        draw.text((x + 3, 1), label, fill=(255, 255, 255))
        x += tile.shape[1] + gap
    return np.asarray(canvas)


def comparison(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """input | ground truth (when known) | prediction."""
    tiles, labels = [gray_rgb(image)], ["input"]
    if truth is not None:
        tiles.append(overlay(image, truth, TRUTH_COLOR))
        labels.append("ground truth")
    tiles.append(overlay(image, prediction, PREDICTION_COLOR))
    labels.append("prediction")
    return panel(tiles, labels)


def training_curves(history: Sequence[dict[str, float]]) -> bytes:
    """Loss, validation Dice and learning rate against epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=90)
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(epochs, [h["val_dice"] for h in history], "o-", color="tab:green")
    axes[1].set_title("validation Dice")
    axes[1].set_ylim(0, 1)
    axes[2].plot(epochs, [h["learning_rate"] for h in history], "o-", color="tab:orange")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
