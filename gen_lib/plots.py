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
                    ylabel: str = "loss", spread: float = 4.0):
    """Plot per-epoch curves: one line per (run, key).

    The y axis stays readable whatever a run did: when some points lie far above the rest (above
    q75 + `spread` * (q75 - min) of all plotted values, e.g. one diverged epoch), the axis is clipped
    there, the clipped points are drawn as triangles on the top edge, and a note says so.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    values_all = []
    for name, history in histories.items():
        for key in keys:
            epochs = [h["epoch"] for h in history if key in h]
            values = [h[key] for h in history if key in h]
            values_all += values
            ax.plot(epochs, values, marker="o", ms=3, label=f"{name} {key}" if len(keys) > 1 else name)
    finite = torch.tensor([v for v in values_all if v == v and abs(v) != float("inf")], dtype=torch.float64)
    if len(finite) >= 3:
        lo, q75 = finite.min().item(), finite.quantile(0.75).item()
        top = q75 + spread * max(q75 - lo, 1e-12)
        above = (finite > top).sum().item()
        if above:
            pad = 0.05 * (top - lo)
            ax.set_ylim(lo - pad, top + pad)
            for line in ax.get_lines():
                x, y = line.get_xdata(), line.get_ydata()
                clipped = [(a, b) for a, b in zip(x, y) if b > top]
                ax.plot([a for a, _ in clipped], [top + pad * 0.5] * len(clipped), ls="", marker="^",
                        color=line.get_color(), ms=6)
            ax.text(0.99, 0.98, f"axis clipped: {above} point(s) above, up to {finite.max().item():.3g}",
                    transform=ax.transAxes, ha="right", va="top", fontsize=6, color="grey")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax
