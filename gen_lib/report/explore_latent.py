"""The 2-D latent plane of each prior's VAE (notebook 01_priors), for notebook 05_explore.

A point z moved by two sliders shows the decoded digit E[x|z], log p(z) under the prior there, and
the test images whose encodings (posterior means) lie nearest to z; `static_figure()` walks a few
points between two digits' mean encodings.
"""

from __future__ import annotations

from typing import Any

import matplotlib.patches
import numpy as np
import torch
from matplotlib.figure import Figure

from .. import priors, vae
from .widgets import Explorer, show, tile


class LatentExplorer(Explorer):
    """The 2-D latent plane of each prior's VAE: decoded digit, log p(z) and nearest test encodings at z.

    `vaes` maps prior names to trained VAEs with a 2-D latent; `test_x` (N, 1, H, W) are the images
    the VAEs were trained on the view of (binarized for 01_priors), `test_y` (N,) their labels.
    Nearest encodings: the k test images whose posterior means μ(x) are closest to z (Euclidean).
    """

    def __init__(self, vaes: dict[str, vae.VAE], test_x: torch.Tensor, test_y: torch.Tensor,
                 n_neighbours: int = 5, grid: int = 120, n_scatter: int = 3000):
        if not vaes:
            raise ValueError("vaes is empty; give at least one prior's VAE")
        bad = [name for name, m in vaes.items() if m.latent_dim != 2]
        if bad:
            raise ValueError(f"the latent plane needs a 2-D latent; {', '.join(bad)} have another dimension")
        self.vaes, self.test_x, self.test_y = vaes, test_x, test_y
        self.k = n_neighbours
        self.mu, self.box, self.logp = {}, {}, {}
        keep = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))[:n_scatter]
        self.scatter = keep
        for name, model in vaes.items():
            with torch.no_grad():
                mu, _ = model.encode(test_x)  # (N, 2)
                lo = torch.quantile(mu, 0.005, dim=0)
                hi = torch.quantile(mu, 0.995, dim=0)
                pad = 0.1 * (hi - lo)
                lo, hi = lo - pad, hi + pad
                gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], grid), torch.linspace(lo[1], hi[1], grid),
                                        indexing="xy")
                logp = model.prior().log_prob(torch.stack([gx, gy], -1).reshape(-1, 2)).reshape(grid, grid)
            self.mu[name], self.box[name], self.logp[name] = mu, (lo.tolist(), hi.tolist()), logp
        self._make_widget(self._controls())

    def _controls(self) -> list:
        import ipywidgets as widgets

        first = next(iter(self.vaes))
        self.prior = widgets.Dropdown(options=[(priors.label(n), n) for n in self.vaes], value=first,
                                      description="prior")
        (lo1, lo2), (hi1, hi2) = self.box[first]
        style = dict(continuous_update=False, readout_format=".2f", step=0.01)
        self.z1 = widgets.FloatSlider(min=lo1, max=hi1, value=(lo1 + hi1) / 2, description="z₁", **style)
        self.z2 = widgets.FloatSlider(min=lo2, max=hi2, value=(lo2 + hi2) / 2, description="z₂", **style)
        self.prior.observe(self._rescale, names="value")  # before _update: new ranges, then one render
        return [self.prior, self.z1, self.z2]

    def _rescale(self, change: Any) -> None:
        # each prior has its own box: move the sliders' ranges without re-rendering (the prior's own
        # observer renders once, after this one)
        (lo1, lo2), (hi1, hi2) = self.box[change["new"]]
        for slider, lo, hi in ((self.z1, lo1, hi1), (self.z2, lo2, hi2)):
            slider.unobserve(self._update, names="value")
            slider.max, slider.min = max(hi, slider.max), min(lo, slider.min)  # widen first: min <= max always
            slider.min, slider.max = lo, hi  # the widget clips its value into the new range
            slider.observe(self._update, names="value")

    def settings(self) -> dict[str, Any]:
        return {"prior": self.prior.value, "z": (self.z1.value, self.z2.value)}

    def view(self, prior: str, z: tuple[float, float]) -> dict[str, Any]:
        """At z under `prior`: the decoded image (1, H, W), log p(z), and the nearest test encodings."""
        model = self.vaes[prior]
        zt = torch.tensor([z], dtype=torch.float32)  # (1, 2)
        with torch.no_grad():
            image = model.decode(zt)[0]
            log_pz = model.prior().log_prob(zt).item()
        dist = (self.mu[prior] - zt).norm(dim=1)  # (N,)
        d, idx = dist.topk(self.k, largest=False)
        return {"image": image, "log_pz": log_pz, "neighbours": idx, "distances": d}

    def render(self, prior: str, z: tuple[float, float]) -> Figure:
        v = self.view(prior, z)
        fig = Figure(figsize=(11, 3.6))
        grid = fig.add_gridspec(2, 2 + self.k, width_ratios=[3.2, 1.6] + [0.8] * self.k)
        ax = fig.add_subplot(grid[:, 0])
        self._plane(ax, prior, [z], v["neighbours"])
        show(fig.add_subplot(grid[:, 1]), v["image"][0].numpy(), f"decoded at z\nlog p(z) = {v['log_pz']:.2f}")
        for j, (i, d) in enumerate(zip(v["neighbours"].tolist(), v["distances"].tolist())):
            show(fig.add_subplot(grid[0, 2 + j]), self.test_x[i, 0].numpy(),
                  f"'{int(self.test_y[i])}', d={d:.2f}")
        fig.text(0.72, 0.25, f"{self.k} nearest test encodings μ(x) to z", ha="center", fontsize=9)
        return fig

    def _plane(self, ax, prior: str, points: list[tuple[float, float]], neighbours: torch.Tensor | None = None):
        (lo1, lo2), (hi1, hi2) = self.box[prior]
        logp = self.logp[prior]
        ax.imshow(logp.numpy(), origin="lower", extent=(lo1, hi1, lo2, hi2), cmap="viridis", aspect="auto",
                  vmin=max(logp.min().item(), logp.max().item() - 12))
        mu, keep = self.mu[prior], self.scatter
        ax.scatter(mu[keep, 0], mu[keep, 1], c=self.test_y[keep], cmap="tab10", vmin=-0.5, vmax=9.5, s=2, alpha=0.5)
        if neighbours is not None:
            ax.scatter(mu[neighbours, 0], mu[neighbours, 1], s=40, facecolors="none", edgecolors="white", lw=1.2)
        for j, (a, b) in enumerate(points):
            ax.plot(a, b, marker="X", ms=11, color="red", mec="white")
            if len(points) > 1:
                ax.annotate(str(j + 1), (a, b), xytext=(5, 5), textcoords="offset points", color="white",
                            fontsize=9, weight="bold")
        ax.set_xlim(lo1, hi1)
        ax.set_ylim(lo2, hi2)
        ax.set_title(f"{priors.label(prior)}: log p(z), test encodings", fontsize=9)
        ax.tick_params(labelsize=7)

    def describe(self, prior: str, z: tuple[float, float]) -> str:
        v = self.view(prior, z)
        labels = ", ".join(str(int(self.test_y[i])) for i in v["neighbours"])
        return (f"<b>{priors.label(prior)}</b>: z = ({z[0]:.2f}, {z[1]:.2f}), log p(z) = {v['log_pz']:.3f}; "
                f"nearest test images (labels): {labels}")

    def path(self, prior: str, n: int = 5) -> list[tuple[float, float]]:
        """n points evenly spaced from the mean encoding of one digit to that of the digit farthest from it."""
        mu, y = self.mu[prior], self.test_y
        centres = torch.stack([mu[y == d].mean(0) if (y == d).any() else mu.mean(0) for d in range(10)])
        a, b = divmod(int(torch.cdist(centres, centres).argmax()), 10)
        return [tuple((centres[a] + s * (centres[b] - centres[a])).tolist()) for s in np.linspace(0, 1, n)]

    def static_figure(self, n: int = 5):
        """Per prior: the plane with n points on a walk between two digits' mean encodings; at each point
        the decoded digit beside its 3 nearest test images, titled with log p(z)."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(self.vaes), n + 1, figsize=(2.3 * (n + 1) + 1, 2.5 * len(self.vaes)),
                                 gridspec_kw={"width_ratios": [1.6] + [1.0] * n}, squeeze=False)
        for row, prior in zip(axes, self.vaes):
            points = self.path(prior, n)
            self._plane(row[0], prior, points)
            for j, z in enumerate(points):
                v = self.view(prior, z)
                strip = torch.cat([v["image"][None], self.test_x[v["neighbours"][:3]]])  # (4, C, H, W)
                show(row[j + 1], tile(strip, nrow=2, pad=2), f"{j + 1}: log p(z) = {v['log_pz']:.1f}")
                h, w = v["image"].shape[-2:]
                row[j + 1].add_patch(matplotlib.patches.Rectangle((-0.5, -0.5), w, h, fill=False, ec="red", lw=2))
        fig.suptitle("At each point z: the decoded image (red frame) and the 3 test images whose encodings are nearest",
                     fontsize=10)
        fig.tight_layout()
        return fig
