"""Plotting helpers shared by the notebooks (part-specific plots live in the notebooks)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid


def image_grid(images: torch.Tensor, nrow: int = 8, ax=None, title: str | None = None, padding: int = 2):
    """Show images (N, 1, 28, 28) in [0, 1] as one grid; returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(nrow * 0.5, (len(images) + nrow - 1) // nrow * 0.5))
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    ax.imshow(grid[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def learning_curves(histories: dict[str, list[dict]], keys: tuple[str, ...] = ("train_loss",), ax=None,
                    ylabel: str = "loss"):
    """Plot per-epoch curves: one line per (run, key)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for name, history in histories.items():
        for key in keys:
            epochs = [h["epoch"] for h in history if key in h]
            values = [h[key] for h in history if key in h]
            ax.plot(epochs, values, marker="o", ms=3, label=f"{name} {key}" if len(keys) > 1 else name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax
