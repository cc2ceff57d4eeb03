"""What the explorers share: the image helpers and the widget plumbing of `Explorer`.

Each explorer (`explore_latent`, `explore_diffusion`, `explore_flow`) computes its tensors once,
`render(...)` draws one setting as a matplotlib figure, `widget` (sliders + an image) re-renders on
every change, and `static_figure()` shows several settings at once: the fallback that the executed
HTML keeps where widgets cannot run.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure


def _png(fig: Figure, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def tile(images: torch.Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """Images (N, 1, H, W) as one (rows·(H+pad), nrow·(W+pad)) array, padding NaN (drawn blank)."""
    n, _, h, w = images.shape
    rows = -(-n // nrow)
    out = np.full((rows * (h + pad) - pad, nrow * (w + pad) - pad), np.nan, dtype=np.float32)
    for i, img in enumerate(images.detach().float().cpu().numpy()[:, 0]):
        r, c = divmod(i, nrow)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return out


def show(ax, array: np.ndarray, title: str | None = None, **style) -> None:
    """`array` drawn on `ax` without axes, gray in [0, 1] unless `style` says otherwise; NaN is white."""
    cmap = matplotlib.colormaps[style.pop("cmap", "gray")].with_extremes(bad="white")  # NaN padding: white
    ax.imshow(array, cmap=cmap, interpolation="nearest", **({"vmin": 0, "vmax": 1} | style))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


class Explorer:
    """Shared widget plumbing: `controls` (ipywidgets) drive `render(**self.settings())` into one image."""

    dpi = 80

    def _make_widget(self, controls: list) -> None:
        import ipywidgets as widgets

        self.image = widgets.Image(format="png")
        self.readout = widgets.HTML()
        for control in controls:
            control.observe(self._update, names="value")
        self.widget = widgets.VBox([widgets.HBox(controls), self.readout, self.image])
        self._update()

    def _update(self, change: Any = None) -> None:
        settings = self.settings()
        fig = self.render(**settings)
        self.image.value = _png(fig, self.dpi)
        self.readout.value = self.describe(**settings)

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def render(self, **settings: Any) -> Figure:
        raise NotImplementedError

    def describe(self, **settings: Any) -> str:
        return ""

    def _ipython_display_(self) -> None:  # a bare explorer in a cell shows its widget
        from IPython.display import display

        display(self.widget)
