"""The DDPM's reverse process (notebook 03_ddpm), for notebook 05_explore.

`denoising_trajectory` records one run of the sampler step by step; `DiffusionExplorer` shows a
batch of samples at a noise level t set by a slider, ancestral (T steps) beside DDIM (S steps), from
the same x_T, and beside each x_t its prediction of the clean image x̂_0 (`samplers.predict_x0`, the
samplers' own).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..diffusion import DDPM
from ..samplers import predict_x0, sampling_timesteps
from .widgets import Explorer, show, tile


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

    `x` (S + 1, n, *ddpm.shape): x_T, then x after every step; `x0_hat` (S + 1, n, *ddpm.shape): the
    clean image predicted before each step, clamped (`samplers.predict_x0`, as the sampler computes it),
    and the final sample last; `level` (S + 1,): the noise level of
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
    eps = torch.stack(recorder.outputs).double()  # (S, n, *shape)
    x0_hat = predict_x0(xs[:-1].double(), eps, abar, clip_denoised=True)
    x0_hat = torch.cat([x0_hat.to(xs.dtype), xs[-1:]])
    level = torch.cat([ts + 1, torch.zeros(1, dtype=torch.long)])
    return {"x": xs, "x0_hat": x0_hat, "level": level}


class DiffusionExplorer(Explorer):
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
            show(row[0], tile(s["x"], self.nrow), f"{method}: x_t, t = {s['level']} (step {s['step']}/{s['steps']})")
            show(row[1], tile(s["x0_hat"], self.nrow), f"{method}: predicted x̂_0")
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
                show(axes[r, c], tile(s[key][:n_images], 2), f"t = {s['level']}" if r == 0 or key == "x" else None)
            axes[r, 0].set_axis_on()
            axes[r, 0].set_xticks([])
            axes[r, 0].set_yticks([])
            axes[r, 0].set_ylabel(f"{method.split(',')[0]}\n{'x_t' if key == 'x' else 'x̂_0'}", fontsize=8)
        fig.suptitle("Reverse process from the same x_T: x_t and the predicted clean image x̂_0", fontsize=10)
        fig.tight_layout()
        return fig
