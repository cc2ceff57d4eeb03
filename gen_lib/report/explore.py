"""Interactive exploration of the trained models with ipywidgets, on the cached checkpoints only.

Three explorers, one per kind of model, each built the same way:

* `LatentExplorer`: the 2-D latent plane of each prior's VAE (01_priors). A point z moved by two
  sliders shows the decoded digit E[x|z], log p(z) under the prior there, and the test images
  whose encodings (posterior means) lie nearest to z.
* `DiffusionExplorer`: the DDPM's reverse process (03_ddpm). A slider over the noise level t moves
  a batch of samples, ancestral (T steps) beside DDIM (S steps), from the same x_T; beside each
  x_t its prediction of the clean image x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t.
* `FlowExplorer`: the RealNVP flow (02_flow). Samples at a temperature τ (z ~ N(0, τ² I) from one
  fixed draw), and test images walked data → base through the couplings, layer by layer, with the
  histogram of the values against the N(0, 1) the base should be.

Each explorer computes its tensors once, `render(...)` draws one setting as a matplotlib figure,
`widget` (sliders + an image) re-renders on every change, and `static_figure()` shows several
settings at once: the fallback that the executed HTML keeps where widgets cannot run.

The loaders (`load_vaes`, `load_flow`, `load_ddpm`) resolve the profile's configuration and load what
notebooks 01_priors, 02_flow and 03_ddpm trained with it (`recipes.load`: the same run folder); they
never train. A missing checkpoint is an error that names the notebook to run first.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib
import matplotlib.patches
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .. import data, flows, priors, vae
from ..data import dequantize
from ..diffusion import DDPM, sampling_timesteps
from ..study import config, recipes


# ---------------------------------------------------------------- the cached models


def load_vaes(profile: str, dataset: str = "mnist", seed: int = 0,
              names: tuple[str, ...] | None = None) -> dict[str, vae.VAE]:
    """The VAE of every prior (seed `seed`) that 01_priors trained under `profile`, in eval mode on the CPU."""
    cfg = config.resolve("priors", profile, dataset=dataset)
    if not 0 <= seed < cfg["seeds"]:
        raise ValueError(f"seed={seed}: profile {profile!r} trains seeds 0..{cfg['seeds'] - 1}")
    return {name: recipes.load("priors", {**cfg, "prior": name, "seed": seed})
            for name in names or priors.select(cfg.get("priors"))}


def load_flow(profile: str, dataset: str = "mnist", device: torch.device | str = "cpu") -> flows.ImageFlow:
    """The image flow that 02_flow trained under `profile`, in float32 and eval mode."""
    return recipes.load("flow", config.resolve("flow", profile, dataset=dataset), device=device)


def load_ddpm(profile: str, dataset: str = "mnist", device: torch.device | str = "cpu") -> DDPM:
    """The DDPM that 03_ddpm trained under `profile`, with the EMA weights it samples from, in eval mode."""
    return recipes.load("ddpm", config.resolve("ddpm", profile, dataset=dataset), device=device)


# ---------------------------------------------------------------- drawing helpers


def _png(fig: Figure, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _tile(images: torch.Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """Images (N, 1, H, W) as one (rows·(H+pad), nrow·(W+pad)) array, padding NaN (drawn blank)."""
    n, _, h, w = images.shape
    rows = -(-n // nrow)
    out = np.full((rows * (h + pad) - pad, nrow * (w + pad) - pad), np.nan, dtype=np.float32)
    for i, img in enumerate(images.detach().float().cpu().numpy()[:, 0]):
        r, c = divmod(i, nrow)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return out


def _show(ax, array: np.ndarray, title: str | None = None, **style) -> None:
    cmap = matplotlib.colormaps[style.pop("cmap", "gray")].with_extremes(bad="white")  # NaN padding: white
    ax.imshow(array, cmap=cmap, interpolation="nearest", **({"vmin": 0, "vmax": 1} | style))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


class _Explorer:
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


# ---------------------------------------------------------------- (a) the VAE latent plane


class LatentExplorer(_Explorer):
    """The 2-D latent plane of each prior's VAE: decoded digit, log p(z) and nearest test encodings at z.

    `vaes` maps prior names to trained VAEs with a 2-D latent; `test_x` (N, 1, 28, 28) are the images
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
        """At z under `prior`: the decoded image (1, 28, 28), log p(z), and the nearest test encodings."""
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
        _show(fig.add_subplot(grid[:, 1]), v["image"][0].numpy(), f"decoded at z\nlog p(z) = {v['log_pz']:.2f}")
        for j, (i, d) in enumerate(zip(v["neighbours"].tolist(), v["distances"].tolist())):
            _show(fig.add_subplot(grid[0, 2 + j]), self.test_x[i, 0].numpy(),
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
                strip = torch.cat([v["image"][None], self.test_x[v["neighbours"][:3]]])  # (4, 1, 28, 28)
                _show(row[j + 1], _tile(strip, nrow=2, pad=2), f"{j + 1}: log p(z) = {v['log_pz']:.1f}")
                row[j + 1].add_patch(matplotlib.patches.Rectangle((-0.5, -0.5), 28, 28, fill=False, ec="red", lw=2))
        fig.suptitle("At each point z: the decoded image (red frame) and the 3 test images whose encodings are nearest",
                     fontsize=10)
        fig.tight_layout()
        return fig


# ---------------------------------------------------------------- (b) the DDPM's reverse process


class _Recorder(nn.Module):
    """Wraps an ε-network and keeps every output (so x̂_0 of each step can be recomputed exactly)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.network(x, t)
        self.outputs.append(eps.detach().cpu())  # in the network's dtype: the sampler casts it the same way
        return eps


def denoising_trajectory(ddpm: DDPM, n: int, steps: int | None, method: str, seed: int = 0,
                         bf16: bool = False) -> dict[str, torch.Tensor]:
    """One run of `ddpm.sample` recorded step by step, in the data's scale [-1, 1] (unclamped):

    `x` (S + 1, n, 1, 28, 28): x_T, then x after every step; `x0_hat` (S + 1, n, 1, 28, 28): the
    clean image predicted before each step, x̂_0 = clamp((x_t − √(1 − ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t, −1, 1)
    (as the sampler computes it), and the final sample last; `level` (S + 1,): the noise level of
    each entry, t + 1 for x_t (T for x_T) and 0 for the final sample. The same `seed` gives the
    same x_T for every method. Recording does not change the samples: `x[-1]` is what
    `ddpm.sample(n, steps, method, generator)` returns for the same seed.
    """
    recorder = _Recorder(ddpm.network)
    twin = DDPM(recorder, T=ddpm.T, shape=ddpm.shape).to(ddpm.betas.device)  # same network, same schedule
    twin.betas.copy_(ddpm.betas)
    twin.alphas_cumprod.copy_(ddpm.alphas_cumprod)
    g = torch.Generator(device=ddpm.betas.device).manual_seed(seed)
    _, xs = twin.sample(n, steps=steps, method=method, generator=g, bf16=bf16, return_trajectory=True)
    ts = sampling_timesteps(ddpm.T, steps or ddpm.T)  # (S,) decreasing, as the sampler walks them
    abar = ddpm.alphas_cumprod.cpu()[ts].reshape(-1, 1, 1, 1, 1)  # (S, 1, 1, 1, 1) float64
    eps = torch.stack(recorder.outputs).double()  # (S, n, 1, 28, 28)
    x0_hat = ((xs[:-1].double() - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
    x0_hat = torch.cat([x0_hat.to(xs.dtype), xs[-1:]])
    level = torch.cat([ts + 1, torch.zeros(1, dtype=torch.long)])
    return {"x": xs, "x0_hat": x0_hat, "level": level}


class DiffusionExplorer(_Explorer):
    """The DDPM's denoising trajectory: a slider over the noise level t (T = pure noise, 0 = the sample)
    shows x_t and x̂_0 for a batch of samples, ancestral (`ancestral_steps`, None = all T) beside DDIM
    (`ddim_steps`), both started from the same x_T."""

    def __init__(self, ddpm: DDPM, n: int = 8, ddim_steps: int = 50, ancestral_steps: int | None = None,
                 seed: int = 0, bf16: bool = False):
        self.T = ddpm.T
        s = ancestral_steps or ddpm.T
        self.runs = {f"ancestral, {s} steps": denoising_trajectory(ddpm, n, s, "ancestral", seed, bf16),
                     f"DDIM, {ddim_steps} steps": denoising_trajectory(ddpm, n, ddim_steps, "ddim", seed, bf16)}
        self.nrow = max(1, (n + 1) // 2)
        self._make_widget(self._controls())

    def _controls(self) -> list:
        import ipywidgets as widgets

        self.t = widgets.IntSlider(min=0, max=self.T, value=self.T // 2, step=1, description="t",
                                   continuous_update=False)
        self.play = widgets.Play(min=0, max=self.T, step=max(1, self.T // 40), interval=400, value=0)
        self.play.observe(lambda c: setattr(self.t, "value", self.T - c["new"]), names="value")  # T -> 0
        return [self.t, self.play]

    def settings(self) -> dict[str, Any]:
        return {"t": self.t.value}

    def at(self, method: str, t: int) -> dict[str, Any]:
        """The state of `method` at noise level t (the last entry whose level is still >= t), in [0, 1] for display."""
        run = self.runs[method]
        i = int((run["level"] >= t).nonzero().max())
        shown = {k: ((run[k][i].float() + 1) / 2).clamp(0, 1) for k in ("x", "x0_hat")}  # [-1, 1] -> [0, 1]
        return {**shown, "level": int(run["level"][i]), "step": i, "steps": len(run["level"]) - 1}

    def render(self, t: int) -> Figure:
        fig = Figure(figsize=(9, 2.1 * len(self.runs)))
        axes = fig.subplots(len(self.runs), 2, squeeze=False)
        for row, method in zip(axes, self.runs):
            s = self.at(method, t)
            _show(row[0], _tile(s["x"], self.nrow), f"{method}: x_t, t = {s['level']} (step {s['step']}/{s['steps']})")
            _show(row[1], _tile(s["x0_hat"], self.nrow), f"{method}: predicted x̂_0")
        fig.tight_layout()
        return fig

    def describe(self, t: int) -> str:
        s = {m: self.at(m, t) for m in self.runs}
        return "; ".join(f"{m}: step {v['step']} of {v['steps']} (t = {v['level']})" for m, v in s.items())

    def static_figure(self, n_levels: int = 8, n_images: int = 4):
        """x_t and x̂_0 of the first `n_images` samples at `n_levels` noise levels from T to 0, per sampler."""
        import matplotlib.pyplot as plt

        levels = np.linspace(self.T, 0, n_levels).round().astype(int)
        rows = [(m, key) for m in self.runs for key in ("x", "x0_hat")]
        fig, axes = plt.subplots(len(rows), n_levels, figsize=(1.5 * n_levels, 1.65 * len(rows)), squeeze=False)
        for r, (method, key) in enumerate(rows):
            for c, t in enumerate(levels):
                s = self.at(method, int(t))
                _show(axes[r, c], _tile(s[key][:n_images], 2), f"t = {s['level']}" if r == 0 or key == "x" else None)
            axes[r, 0].set_axis_on()
            axes[r, 0].set_xticks([])
            axes[r, 0].set_yticks([])
            axes[r, 0].set_ylabel(f"{method.split(',')[0]}\n{'x_t' if key == 'x' else 'x̂_0'}", fontsize=8)
        fig.suptitle("Reverse process from the same x_T: x_t and the predicted clean image x̂_0", fontsize=10)
        fig.tight_layout()
        return fig


# ---------------------------------------------------------------- (c) the flow


class FlowExplorer(_Explorer):
    """The RealNVP flow: samples at temperature τ (one fixed base draw ε, z = τ ε), and test images
    walked data → base through the layers, with the histogram of their values against N(0, 1)."""

    def __init__(self, flow: flows.Flow, test_x: torch.Tensor, n_samples: int = 16, n_walk: int = 4, seed: int = 0):

        self.flow = flow
        p = next(flow.parameters())
        g = torch.Generator().manual_seed(seed)
        self.eps = torch.randn((n_samples, *flow.event_shape), generator=g).to(p.device, p.dtype)
        y = dequantize(test_x[:n_walk].float().cpu(), generator=g).to(p.device, p.dtype)
        with torch.no_grad():
            self.walk = [h.float().cpu() for h in flow.trajectory(y)]  # L + 1 states (n_walk, 1, 28, 28)
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
        """Samples (n, 1, 28, 28) clamped to [0, 1] from z = τ ε for the explorer's fixed ε."""
        key = round(float(temperature), 4)
        if key not in self._samples:
            with torch.no_grad():
                self._samples[key] = self.flow.base_to_data(self.eps * key).float().cpu().clamp(0, 1)
        return self._samples[key]

    def render(self, temperature: float, layer: int) -> Figure:
        fig = Figure(figsize=(11, 3.3))
        axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.1]})
        x = self.samples(temperature)
        _show(axes[0], _tile(x, int(len(x) ** 0.5 + 0.5)), f"samples at temperature τ = {temperature:.2f}")
        h = self.walk[layer]
        data_space = layer == 0
        _show(axes[1], _tile(h, 2), f"{self.names[layer]} ({layer}/{len(self.walk) - 1})",
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
            _show(ax, _tile(x, 4), f"τ = {t:g}")
        for ax, k in zip(axes[1], layers):
            _show(ax, _tile(self.walk[k], 2), self.names[k],
                  **({} if k == 0 else {"cmap": "RdBu_r", "vmin": -3, "vmax": 3}))
        for ax in axes[1][len(layers):]:
            ax.set_axis_off()
        fig.suptitle("Top: samples z = τ ε for one ε. Bottom: test images walked data → base "
                     "(red/blue: values, ±3)", fontsize=10)
        fig.tight_layout()
        return fig


__all__ = ["LatentExplorer", "DiffusionExplorer", "FlowExplorer", "load_vaes", "load_flow", "load_ddpm",
           "denoising_trajectory"]
