"""Plotting helpers of the notebooks. Every figure with one panel per model (per prior, per sampler)
takes a dict label -> data and lays out as many panels as it has entries."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid


def image_grid(images: torch.Tensor, nrow: int = 8, ax=None, title: str | None = None, padding: int = 2):
    """Show images (N, C, H, W) in [0, 1] (C = 1 grey or 3 colour) as one grid; returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(nrow * 0.5, (len(images) + nrow - 1) // nrow * 0.5))
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    shown = grid[0] if images.shape[1] == 1 else grid.permute(1, 2, 0)  # make_grid repeats a grey channel
    ax.imshow(shown.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def learning_curves(histories: dict[str, list[dict]], keys: tuple[str, ...] = ("train_loss",), ax=None,
                    ylabel: str = "loss", spread: float = 4.0, title: str | None = None):
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
    if title:
        ax.set_title(title)
    return ax


def panels(n: int, ncols: int = 4, size: tuple[float, float] = (4.0, 4.0), **kwargs):
    """A figure with n panels in rows of at most `ncols`: returns (fig, list of n axes); spare axes are removed."""
    if n < 1:
        raise ValueError(f"n={n}: a figure needs at least one panel")
    cols = min(n, ncols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, **kwargs)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def even_columns(n: int) -> int:
    """Columns for n panels that fill every row: the smallest divisor of n at least sqrt(n) (4 -> 2 x 2, 3 -> 1 x 3,
    6 -> 2 x 3), so a grid has no empty panel."""
    return next(c for c in range(1, n + 1) if n % c == 0 and c * c >= n)


def grids(images: dict[str, torch.Tensor], nrow: int = 8, ncols: int | None = None,
          size: tuple[float, float] = (4.0, 4.0)):
    """One image grid per entry of `images` (title -> images (N, C, H, W) in [0, 1]), in rows of `ncols` panels
    (default: all in one row); returns the figure."""
    fig, axes = panels(len(images), ncols or len(images), size=size)
    for ax, (title, x) in zip(axes, images.items()):
        image_grid(x, nrow=nrow, ax=ax, title=title)
    return fig


def strip(images: torch.Tensor, nrow: int, title: str, size: tuple[float, float] = (8, 3.4)):
    """Images in one grid of `nrow` columns under a small title (a trajectory: one row per sample)."""
    fig, ax = plt.subplots(figsize=size)
    image_grid(images, nrow=nrow, ax=ax)
    ax.set_title(title, fontsize=8)
    return fig


def flow_walk(steps: list[tuple[str, torch.Tensor]], diverging: tuple[str, ...] = ("base z",)):
    """One image (1, 1, H, W) per (title, image) of `steps`, side by side: grey, but the titles in `diverging`
    (the base variable) on a red-blue scale over [-3, 3]; a colour bar for the last (an error, in powers of 10)."""
    fig, axes = plt.subplots(1, len(steps), figsize=(1.9 * len(steps), 2.3))
    for ax, (title, img) in zip(axes, steps):
        style = dict(cmap="RdBu_r", vmin=-3, vmax=3) if title in diverging else dict(cmap="gray")
        im = ax.imshow(img[0, 0].float().cpu(), interpolation="nearest", **style)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[-1], fraction=0.046, format="%.0e")
    return fig


def fid_against_n(curve: dict[str, dict[int, tuple[float, float]]], original_n: int = 256):
    """FID against N (log-log), mean +- std over subsets per set (`metrics.fid_vs_n`: name -> {N: (mean, std)}),
    with the original study's N marked."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, points in curve.items():
        sizes = sorted(points)
        ax.errorbar(sizes, [points[n][0] for n in sizes], yerr=[points[n][1] for n in sizes], marker="o", ms=4,
                    capsize=2, label=name)
    ax.axvline(original_n, color="grey", ls=":", lw=1)
    ax.annotate(f" N = {original_n}\n (original)", (original_n, 0.03), xycoords=("data", "axes fraction"),
                fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (samples per set)")
    ax.set_ylabel("FID (classifier features)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return fig


def latent_densities(views: dict[str, dict], labels: torch.Tensor, classes: tuple[str, ...], n_points: int = 5000,
                     span: float = 12.0):
    """Figure 1: per model (label -> `vae_eval.latent_view`), log p(z) of its prior as an image (the lowest `span`
    nats below the peak shaded alike) with the encoder means on top, coloured by class `labels` (N,). As many
    panels as models, in full rows (`even_columns`); the axes are the density's box, which holds every encoding."""
    fig, axes = panels(len(views), even_columns(len(views)), size=(4.6, 4.1))
    for ax, (title, view) in zip(axes, views.items()):
        logp, (x0, x1, y0, y1) = view["logp"], view["extent"].tolist()
        im = ax.imshow(logp.numpy(), origin="lower", extent=(x0, x1, y0, y1), cmap="viridis", aspect="auto",
                       vmin=max(logp.min().item(), logp.max().item() - span))
        fig.colorbar(im, ax=ax, label="log p(z)")
        mu = view["mu"]
        keep = torch.randperm(len(mu), generator=torch.Generator().manual_seed(0))[:n_points]
        ax.scatter(mu[keep, 0].numpy(), mu[keep, 1].numpy(), c=labels[keep].numpy(), cmap="tab10", s=2, alpha=0.6,
                   vmin=-0.5, vmax=9.5)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(title)
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
    handles = [plt.Line2D([], [], marker="o", ls="", color=plt.cm.tab10(d), label=c) for d, c in enumerate(classes)]
    fig.legend(handles=handles, loc="center right", title="class", frameon=False, fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    return fig


def image_rows(rows: dict[str, dict[str, torch.Tensor]], nrow: dict[str, int] | None = None, size: float = 4.0):
    """One row of image grids per key of `rows` (e.g. "samples", "latent grid"), one column per model: `rows[r]`
    maps a model's label to its images; `nrow[r]` images per grid row (default 8)."""
    models = list(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), len(models), figsize=(size * len(models), (size + 0.25) * len(rows)),
                             squeeze=False)
    for i, (row, images) in enumerate(rows.items()):
        for j, model in enumerate(models):
            image_grid(images[model], nrow=(nrow or {}).get(row, 8), ax=axes[i, j], padding=1 if i else 2,
                       title=f"{model}: {row}")
    fig.tight_layout()
    return fig


def seed_bands(histories: dict[str, list[list[dict]]], keys: dict[str, str]):
    """Per-epoch curves, mean over seeds with a min-max band: `histories[model]` is one history per seed;
    one panel per entry of `keys` (history key -> y-axis label)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for name, runs in histories.items():
        epochs = [h["epoch"] for h in runs[0]]
        for ax, key in zip(axes[0], keys):
            values = np.array([[h[key] for h in run] for run in runs])  # (seeds, epochs)
            ax.plot(epochs, values.mean(0), marker="o", ms=3, label=name)
            ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.2)
    for ax, ylabel in zip(axes[0], keys.values()):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def neighbours(queries: dict[str, torch.Tensor], reference: torch.Tensor, dist: dict[str, torch.Tensor],
               idx: dict[str, torch.Tensor], n_rows: int):
    """For the first `n_rows` images of each model (label -> images (N, C, H, W)), the image and its k nearest
    `reference` images (`metrics.nearest_neighbours`: distances and indices (N, k)), each titled by its distance."""
    k = next(iter(idx.values())).shape[1]
    fig, axes = plt.subplots(len(queries) * n_rows, k + 1, figsize=(0.9 * (k + 1), 0.9 * len(queries) * n_rows),
                             squeeze=False)
    for m, (name, images) in enumerate(queries.items()):
        for j in range(n_rows):
            row = axes[m * n_rows + j]
            image_grid(images[j:j + 1], nrow=1, ax=row[0], padding=0)
            for c in range(k):
                image_grid(reference[int(idx[name][j, c])][None], nrow=1, ax=row[c + 1], padding=0)
                row[c + 1].set_title(f"{dist[name][j, c]:.1f}", fontsize=6, pad=1)
            row[0].set_axis_on()
            row[0].set_xticks([])
            row[0].set_yticks([])
            row[0].set_ylabel(name.split(" ")[0] if j == 0 else "", fontsize=7)
    axes[0, 0].set_title("sample", fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.25)
    return fig


def fid_against_cost(q: dict[str, dict], ms: dict[str, float], floor: str, n: int):
    """Bias-corrected FID with its 95 % interval (filled) and raw FID at N (open) of each sampler against its
    time per sample, beside the real-data floor `floor` (dashed: bias-corrected; band: its interval)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for name, t in ms.items():
        v = q[name]
        c = v["fid_corrected"]
        ax.errorbar([t], [c], yerr=[[c - v["fid_low"]], [v["fid_high"] - c]], fmt="o", color="C0", capsize=3, ms=5)
        ax.plot([t], [v["fid"]], "o", mfc="none", color="C1", ms=5)
        ax.annotate(f" {name}", (t, c), fontsize=7)
    ax.axhspan(q[floor]["fid_low"], q[floor]["fid_high"], color="grey", alpha=0.2, lw=0)
    ax.axhline(q[floor]["fid_corrected"], color="grey", ls="--", lw=1)
    ax.plot([], [], "o", color="C0", label="bias-corrected FID, 95 % interval")
    ax.plot([], [], "o", mfc="none", color="C1", label=f"raw FID at N = {n:,}")
    ax.plot([], [], "--", color="grey", label="real data (bias-corrected; band: interval)")
    ax.set_xscale("log")
    ax.set_xlabel("ms per sample (this machine)")
    ax.set_ylabel("FID (classifier features)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"DDPM: FID against sampling cost (N = {n:,})", fontsize=9)
    return fig
