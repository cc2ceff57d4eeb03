"""The RealNVP flow (notebook 02_flow), for notebook 05_explore.

Samples at a temperature τ (z ~ N(0, τ² I) from one fixed draw), and test images walked
data → base through the couplings, layer by layer, with the histogram of the values against the
N(0, 1) the base should be.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .. import flows
from ..data import dequantize
from .widgets import Explorer, show, tile


class FlowExplorer(Explorer):
    """The RealNVP flow: samples at temperature τ (one fixed base draw ε, z = τ ε), and test images
    walked data → base through the layers, with the histogram of their values against N(0, 1)."""

    def __init__(self, flow: flows.Flow, test_x: torch.Tensor, n_samples: int = 16, n_walk: int = 4, seed: int = 0):

        self.flow = flow
        p = next(flow.parameters())
        g = torch.Generator().manual_seed(seed)
        self.eps = torch.randn((n_samples, *flow.event_shape), generator=g).to(p.device, p.dtype)
        y = dequantize(test_x[:n_walk].float().cpu(), generator=g).to(p.device, p.dtype)
        with torch.no_grad():
            self.walk = [h.float().cpu() for h in flow.trajectory(y)]  # L + 1 states (n_walk, *event_shape)
        self.names = ["data y"] + [self._layer_name(k) for k in range(len(flow.layers))]
        self._samples: dict[float, torch.Tensor] = {}
        self._make_widget(self._controls())

    def _layer_name(self, k: int) -> str:
        layer = self.flow.layers[k]
        if isinstance(layer, flows.LogitTransform):
            return "after logit"
        if isinstance(layer, flows.ActNorm):
            return "after actnorm"
        couplings = [i for i, l in enumerate(self.flow.layers) if isinstance(l, flows.AffineCoupling)]
        return f"after coupling {couplings.index(k) + 1}" if k in couplings else f"after layer {k + 1}"

    def _controls(self) -> list:
        import ipywidgets as widgets

        self.temperature = widgets.FloatSlider(min=0.0, max=1.5, step=0.05, value=0.7, description="τ",
                                               continuous_update=False, readout_format=".2f")
        self.layer = widgets.IntSlider(min=0, max=len(self.walk) - 1, value=len(self.walk) - 1, description="layer",
                                       continuous_update=False)
        return [self.temperature, self.layer]

    def settings(self) -> dict[str, Any]:
        return {"temperature": self.temperature.value, "layer": self.layer.value}

    def samples(self, temperature: float) -> torch.Tensor:
        """Samples (n, *event_shape) clamped to [0, 1] from z = τ ε for the explorer's fixed ε."""
        key = round(float(temperature), 4)
        if key not in self._samples:
            with torch.no_grad():
                self._samples[key] = self.flow.base_to_data(self.eps * key).float().cpu().clamp(0, 1)
        return self._samples[key]

    def render(self, temperature: float, layer: int) -> Figure:
        fig = Figure(figsize=(11, 3.3))
        axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.1]})
        x = self.samples(temperature)
        show(axes[0], tile(x, int(len(x) ** 0.5 + 0.5)), f"samples at temperature τ = {temperature:.2f}")
        h = self.walk[layer]
        data_space = layer == 0
        show(axes[1], tile(h, 2), f"{self.names[layer]} ({layer}/{len(self.walk) - 1})",
              **({} if data_space else {"cmap": "RdBu_r", "vmin": -3, "vmax": 3}))
        values = h.flatten().numpy()
        axes[2].hist(values, bins=60, density=True, color="tab:blue", alpha=0.7, label="values")
        if not data_space:
            u = np.linspace(-4, 4, 200)
            axes[2].plot(u, np.exp(-u ** 2 / 2) / np.sqrt(2 * np.pi), color="black", lw=1, label="N(0, 1)")
        axes[2].set_title(f"mean {values.mean():.2f}, std {values.std():.2f}", fontsize=9)
        axes[2].legend(fontsize=7)
        axes[2].tick_params(labelsize=7)
        fig.tight_layout()
        return fig

    def describe(self, temperature: float, layer: int) -> str:
        return f"temperature {temperature:.2f}; {self.names[layer]} (layer {layer} of {len(self.walk) - 1})"

    def static_figure(self, temperatures: tuple[float, ...] = (0.0, 0.5, 0.7, 0.85, 1.0, 1.2)):
        """Top: the same base draw at several temperatures. Bottom: the walk data → base at six layers."""
        import matplotlib.pyplot as plt

        n = len(temperatures)
        offset = sum(not isinstance(layer, flows.AffineCoupling) for layer in self.flow.layers)  # logit, actnorm
        couplings = len(self.walk) - 1 - offset
        layers = sorted({0, offset} | {offset + round(couplings * f) for f in (0.25, 0.5, 0.75, 1.0)})[:n]
        fig, axes = plt.subplots(2, n, figsize=(2.1 * n, 4.8), squeeze=False)
        for ax, t in zip(axes[0], temperatures):
            x = self.samples(t)[:16]
            show(ax, tile(x, 4), f"τ = {t:g}")
        for ax, k in zip(axes[1], layers):
            show(ax, tile(self.walk[k], 2), self.names[k],
                  **({} if k == 0 else {"cmap": "RdBu_r", "vmin": -3, "vmax": 3}))
        for ax in axes[1][len(layers):]:
            ax.set_axis_off()
        fig.suptitle("Top: samples z = τ ε for one ε. Bottom: test images walked data → base "
                     "(red/blue: values, ±3)", fontsize=10)
        fig.tight_layout()
        return fig
