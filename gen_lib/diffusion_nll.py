"""Likelihoods of a DDPM (`gen_lib.diffusion.DDPM`), in nats per example, and their bits/dim.

`nll_bound`: the variational bound of Ho et al. (2020), Eq. 5, on −log p_θ(x_0), with σ_t² = β_t and a
Gaussian L_0, every KL in closed form; `bound_bits_per_dim` puts it on the flow's bits/dim scale of the
dequantized 8-bit data. `ode_nll`: an estimate of the −log density of the same ε-network's probability-flow
ODE (deterministic DDIM in its continuous limit), unbiased in the trace and limited by the solver's error; its
density is that of the data smoothed at the smallest noise level σ̄_0 (`one_bin_bits`: what that costs a
pixel whose values fill one quantization bin). `ode_sample` draws from that density by the same solver on the
same levels. `DDPM.nll_bound` and `DDPM.ode_nll` are these functions, bound as methods.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .data import INFO, bits_per_dim, dequantized_bits_per_dim, to_signed
from .samplers import predict_x0


def ode_levels(alphas_cumprod: torch.Tensor, steps: int) -> list[int]:
    """At most `steps` of the model's noise levels t (increasing, always 0 and T − 1) evenly spaced in
    u = log σ̄, σ̄ = √((1 − ᾱ_t)/ᾱ_t), each target rounded to the nearest level in u (duplicates merged): the
    solver grid of `DDPM.ode_nll`, as fine near the data (σ̄ ≈ 0.01) as near the noise (σ̄ ≈ 157)."""
    T = len(alphas_cumprod)
    if not 1 <= steps <= T:
        raise ValueError(f"steps={steps} must be in [1, T={T}]")
    u = (0.5 * torch.log((1.0 - alphas_cumprod) / alphas_cumprod)).double()  # (T,) increasing
    if steps == 1 or T == 1:
        return sorted({0, T - 1})
    targets = torch.linspace(u[0].item(), u[-1].item(), steps, dtype=torch.float64)
    right = torch.searchsorted(u, targets).clamp(1, T - 1)
    nearer = torch.where((targets - u[right - 1]).abs() <= (u[right] - targets).abs(), right - 1, right)
    return sorted(set(nearer.tolist()) | {0, T - 1})


def halved(levels: list[int]) -> list[int]:
    """Every other level of `levels` (increasing), keeping both ends: the grid of half the steps on the same levels.

    The network is defined at integer t only, so where `ode_levels` already holds every level (the low-noise end)
    a grid twice as fine does not exist; halving does, and Richardson's estimate compares the two
    (`gen_lib.report.likelihood.refinement`). With an odd number of steps the last (high-noise) one stays whole."""
    if len(levels) < 2:
        raise ValueError(f"levels={levels!r}: need at least two")
    return sorted(set(levels[::2]) | {levels[-1]})


def _strata(T: int, S: int) -> torch.Tensor:
    """S + 1 strictly increasing step indices from 1 to T whose gaps grow geometrically (edges ≈ T^{j/S}).

    The bound's terms fall off roughly like 1/t, so strata of width ∝ t keep each stratum's terms
    alike (small t, where the terms are large, get strata of width 1: summed exactly).
    """
    edges = [1]
    for j in range(1, S + 1):
        edges.append(min(max(edges[-1] + 1, round(T ** (j / S))), T - (S - j)))
    return torch.tensor(edges, dtype=torch.long)


@torch.no_grad()
def nll_bound(ddpm: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None, *,
              n_t: int | None = None, clip_denoised: bool = False, batch: int = 1024) -> torch.Tensor:
    """Variational upper bound on −log p_θ(x0) per example (B,), in nats, float64 (Ho et al., Eq. 5).

    With the paper's t = 1..T (index t − 1 here) and the reverse model
    p_θ(x_{t−1} | x_t) = N(μ_θ(x_t, t), σ_t² I), σ_t² = β_t (the ancestral sampler's default),

        −log p_θ(x0) ≤ L_T + Σ_{t=2..T} L_{t−1} + L_0,
        L_T     = KL(q(x_T | x0) ‖ N(0, I)),
        L_{t−1} = E_q KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t))
                = D/2 (log(β_t/β̃_t) + β̃_t/β_t − 1) + c_t²/(2β_t) ‖x0 − x̂_0(x_t, t)‖²,
        L_0     = −log N(x0; μ_θ(x_1, 1), β_1 I) = D/2 log(2π β_1) + ‖x0 − x̂_0(x_1, 1)‖²/(2β_1),

    where q(x_{t−1} | x_t, x0) = N(μ̃_t, β̃_t I), β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t), and
    μ̃_t − μ_θ = c_t (x0 − x̂_0) with c_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t), x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ)/√ᾱ_t
    (c_1 = 1, ᾱ_0 := 1). x0 is continuous data in [-1, 1] and L_0 a Gaussian density, so the
    bound is on a density of x0 (`bound_bits_per_dim` converts it to bits/dim of y = (x0 + 1)/2).

    Each expectation over q(x_t | x0) is one draw x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε per term, so the
    result is an unbiased, noisy estimate of the bound; average over examples and report the
    standard error (`gen_lib.stats.mean_ci`). `n_t=None` sums all T terms (T network calls per
    example, batched over t); `n_t=S` replaces Σ_{t=2..T} L_{t−1} by a stratified
    estimate: one t drawn uniformly in each of S strata of 2..T whose widths grow geometrically
    (the terms fall off like 1/t; the first strata are single steps), weighted by the stratum's
    width (unbiased; its extra variance enters the same standard error). L_T is in closed form
    and L_0 is always computed. The schedule coefficients and the KL arithmetic are float64;
    the network sees x_t in its parameters' dtype (x0's dtype if it has none), in eval mode
    (dropout off; its mode is restored after), at most `batch` (t, example) pairs per call.
    `clip_denoised` clamps x̂_0 to [-1, 1] as the sampler does by default: the bound is then on
    that model's density (off by default: the model that `DDPM.loss` trains).
    """
    ddpm.check_x0(x0)
    if n_t is not None and not (isinstance(n_t, int) and 1 <= n_t <= ddpm.T - 1):
        raise ValueError(f"n_t={n_t!r} must be None (sum all T terms) or an integer in [1, T-1={ddpm.T - 1}]")
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    dev, B, D = ddpm.betas.device, x0.shape[0], math.prod(ddpm.shape)
    dtype = next((p.dtype for p in ddpm.network.parameters()), x0.dtype)
    x = x0.to(dev, torch.float64)  # (B, *shape)
    betas, abar = ddpm.betas, ddpm.alphas_cumprod  # (T,) float64
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])  # ᾱ_{t−1}, ᾱ_0 := 1
    beta_tilde = betas * (1.0 - abar_prev) / (1.0 - abar)
    # per-step constant and weight of ‖x0 − x̂_0‖²: term_t = const_t + weight_t ‖x0 − x̂_0‖²
    const = 0.5 * D * (torch.log(betas / beta_tilde.clamp_min(1e-300)) + beta_tilde / betas - 1.0)
    const[0] = 0.5 * D * math.log(2 * math.pi * betas[0].item())  # L_0, the Gaussian decoder
    weight = abar_prev * betas / (2.0 * (1.0 - abar) ** 2)  # c_t²/(2β_t); 1/(2β_1) at t = 1

    a_T = abar[-1]  # L_T = KL(N(√ᾱ_T x0, 1 − ᾱ_T) ‖ N(0, 1)) per pixel, closed form
    total = 0.5 * ((1.0 - a_T) - 1.0 - torch.log1p(-a_T) + a_T * x.flatten(1).pow(2)).sum(1)  # (B,)

    # L_0 at every example, plus one step in each of S strata of 2..T (index 1..T−1), weighted by
    # the stratum's width; S = T − 1 strata of width 1 is the exact sum of every term
    edges = _strata(ddpm.T, ddpm.T - 1 if n_t is None else n_t).to(dev)  # (S + 1,) from 1 to T
    width = edges[1:] - edges[:-1]  # (S,) >= 1
    u = None if n_t is None else torch.rand((len(width), B), generator=generator, device=dev,
                                            dtype=torch.float64)  # (S, B): where in its stratum

    def steps(row: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # row 0 is L_0
        if row == 0:
            return torch.zeros_like(b), torch.ones(len(b), dtype=torch.float64, device=dev)
        t = edges[row - 1].expand(len(b)) if u is None else \
            edges[row - 1] + (u[row - 1, b] * width[row - 1]).floor().long()
        return t, width[row - 1].double().expand(len(b))

    rows_per_call, per_call = max(1, batch // B), min(B, batch)  # at most `batch` (step, example) pairs
    was_training = ddpm.network.training
    ddpm.network.eval()
    try:
        for r0 in range(0, len(width) + 1, rows_per_call):
            for b0 in range(0, B, per_call):
                b1 = torch.arange(b0, min(B, b0 + per_call), device=dev)
                rows = range(r0, min(len(width) + 1, r0 + rows_per_call))
                t, w = (torch.cat(v) for v in zip(*(steps(r, b1) for r in rows)))  # (P,), step-major
                b = b1.repeat(len(rows))
                xb = x[b]  # (P, *shape)
                noise = torch.randn(xb.shape, generator=generator, device=dev, dtype=torch.float64)
                a = abar[t].reshape(-1, *([1] * (xb.dim() - 1)))  # (P, 1, 1, 1), float64
                x_t = a.sqrt() * xb + (1.0 - a).sqrt() * noise
                eps = ddpm.network(x_t.to(dtype), t).to(torch.float64)
                x0_hat = predict_x0(x_t, eps, a, clip_denoised)
                sq = (xb - x0_hat).flatten(1).pow(2).sum(1)  # (P,)
                total.index_add_(0, b, w * (const[t] + weight[t] * sq))
    finally:
        ddpm.network.train(was_training)
    return total.to(x0.device)


@torch.no_grad()
def ode_nll(ddpm: nn.Module, x0: torch.Tensor, steps: int | None = None, exact_trace: bool = False,
            generator: torch.Generator | None = None, levels: list[int] | None = None) -> torch.Tensor:
    """−log p_θ(x0) per example (B,), in nats, float64, of continuous x0 in [-1, 1] under the probability-flow ODE
    of ε_θ (Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, Sec. 4.3, App. D.2): DDIM
    (η = 0) in its continuous limit. With x̄ = x/√ᾱ, σ̄ = √((1 − ᾱ)/ᾱ) and u = log σ̄:

        dx̄/du = σ̄ ε_θ(√ᾱ x̄, t),
        log p_θ(x0) = log N(√ᾱ_T x̄_T; 0, I) + D/2 log ᾱ_T + ∫ σ̄ div_x̄ ε_θ du   from σ̄_0 to σ̄_T

    (the instantaneous change of variables: FFJORD, Grathwohl et al., ICLR 2019), ᾱ_T = ᾱ_{T−1}. The ODE
    runs between the model's own smallest and largest noise levels, t = 0 and T − 1, with x̄ = x0 at the
    smallest (σ̄_0 = √(β_0/(1 − β_0)) = 0.01 here): the network is not defined below it, so this is the density
    of the DDIM sampler's state at t = 0 (rescaled by 1/√ᾱ_0), before its last step x̄ − σ̄_0 ε_θ. Like the
    variational bound's Gaussian L_0 of variance β_1, it cannot be sharper than σ̄_0 per pixel.

    Solver: Heun's method (trapezoid, 2nd order) on (x̄, ∫) in u, between consecutive levels of
    `ode_levels` (at most `steps` of the model's levels, evenly spaced in u), ε_θ at those integer t only.
    In u a pixel whose data are sharper than σ̄ contributes σ̄ div ≈ 1 (div ≈ 1/σ̄), which the trapezoid
    integrates exactly, and the levels are placed where the log-density changes, at every scale of the
    data (levels evenly spaced in t leave σ̄ from 0.01 to 0.03 to one step; the errors of both grids on
    Gaussian data: benchmarks/README.md). About 2S network evaluations with a vector-Jacobian product each
    (their cost: benchmarks/README.md).

    The divergence is Hutchinson's v^T (∂ε/∂x̄) v with Rademacher probes v (never more variance than Gaussian
    ones), drawn once per example from `generator` and held fixed along the path: unbiased, its noise part of
    each example's value (report the standard error over examples). `exact_trace=True` takes the trace, D
    vector-Jacobian products per evaluation (small shapes, tests). `steps=None` is min(100, T); `levels` gives
    the grid itself (increasing, from 0 to T − 1; it overrides `steps`): check a value against `halved` levels
    (`likelihood.refinement`; tests/test_ode_nll.py shows that this bounds the error on sharp data). The state is
    float64; the network sees its input in its parameters' dtype (x0's without any), in eval mode (restored
    after), and no parameter gets a .grad.
    """
    ddpm.check_x0(x0)
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= ddpm.T):
        raise ValueError(f"steps={steps!r} must be None (min(100, T)) or an integer in [1, T={ddpm.T}]")
    if not isinstance(exact_trace, bool):
        raise ValueError(f"exact_trace={exact_trace!r} must be True or False")
    dev, B = ddpm.betas.device, x0.shape[0]
    dtype = next((p.dtype for p in ddpm.network.parameters()), x0.dtype)
    ts = _grid(ddpm, steps, levels)  # increasing
    abar = ddpm.alphas_cumprod[ts].tolist()  # float64 values, read once
    sig = [((1.0 - a) / a) ** 0.5 for a in abar]  # σ̄ at the levels, increasing
    x = x0.to(dev, torch.float64)  # x̄ = x0 at σ̄_0
    probe = None if exact_trace else \
        torch.randint(0, 2, x.shape, generator=generator, device=dev).to(torch.float64).mul_(2).sub_(1)
    integral = x.new_zeros(B)  # ∫ σ̄ div_x̄ ε du

    def drift(xbar: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # dx̄/du and σ̄ div
        f, div = _ode_drift(ddpm.network, xbar, ts[i], abar[i], dtype, probe)
        return sig[i] * f, sig[i] * div

    was_training = ddpm.network.training
    ddpm.network.eval()
    try:
        for i in range(1, len(ts)):  # Heun in u = log σ̄ from level i − 1 to level i
            h = math.log(sig[i] / sig[i - 1])
            f1, div1 = drift(x, i - 1)
            f2, div2 = drift(x + h * f1, i)
            x, integral = x + 0.5 * h * (f1 + f2), integral + 0.5 * h * (div1 + div2)
    finally:
        ddpm.network.train(was_training)
    D, a_T = x[0].numel(), abar[-1]
    log_p_T = (-0.5 * a_T * x.flatten(1).pow(2).sum(1) - 0.5 * D * math.log(2 * math.pi)
               + 0.5 * D * math.log(a_T))  # log N(√ᾱ_T x̄_T; 0, I) + D/2 log ᾱ_T
    return -(log_p_T + integral).to(x0.device)


def _grid(ddpm: nn.Module, steps: int | None, levels: list[int] | None) -> list[int]:
    """The ODE's levels: `levels` if given (checked), else `ode_levels` of `steps` (None: min(100, T))."""
    if levels is None:
        return ode_levels(ddpm.alphas_cumprod, min(100, ddpm.T) if steps is None else steps)
    levels = [int(t) for t in levels]
    if len(levels) < 2 or levels[0] != 0 or levels[-1] != ddpm.T - 1 or any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels must increase from 0 to T - 1 = {ddpm.T - 1}; got {len(levels)} levels "
                         f"from {levels[0] if levels else None} to {levels[-1] if levels else None}")
    return levels


@torch.no_grad()
def ode_sample(ddpm: nn.Module, n: int, steps: int | None = None, generator: torch.Generator | None = None, *,
               levels: list[int] | None = None, batch: int = 500) -> torch.Tensor:
    """n draws (n, *shape), float32, from the density that `ode_nll` scores: x_T ~ N(0, I), x̄_T = x_T/√ᾱ_T, then
    Heun's method on dx̄/du = σ̄ ε_θ(√ᾱ x̄, t) down the same levels (`steps`/`levels` as in `ode_nll`) to x̄ at the
    smallest level, which is returned as it is: no final denoising step, no clamp (values may leave [-1, 1]).

    Its own function, not a `samplers` step: a Heun step evaluates the network twice (at both ends of the step),
    which the one-evaluation step contract of `DDPM.sample` does not allow. Float32 state and network input, eval
    mode (restored after), at most `batch` images per call; the draws come from `generator` in one piece."""
    if n < 1 or batch < 1:
        raise ValueError(f"n={n} and batch={batch} must be >= 1")
    ts = _grid(ddpm, steps, levels)[::-1]  # decreasing: from the noise to the data
    dev = ddpm.betas.device
    abar = ddpm.alphas_cumprod[ts].tolist()
    sig = [((1.0 - a) / a) ** 0.5 for a in abar]
    x_T = torch.randn((n, *ddpm.shape), generator=generator, device=dev, dtype=torch.float32)
    out = []
    was_training = ddpm.network.training
    ddpm.network.eval()
    try:
        for b0 in range(0, n, batch):
            x = x_T[b0:b0 + batch] / abar[0] ** 0.5  # x̄ at the largest level

            def f(xbar: torch.Tensor, i: int) -> torch.Tensor:  # dx̄/du at level i
                t = torch.full((len(xbar),), ts[i], device=dev, dtype=torch.long)
                return sig[i] * ddpm.network((abar[i] ** 0.5 * xbar).float(), t).float()

            for i in range(1, len(ts)):
                h = math.log(sig[i] / sig[i - 1])  # < 0: towards the data
                f1 = f(x, i - 1)
                f2 = f(x + h * f1, i)
                x = x + 0.5 * h * (f1 + f2)
            out.append(x)
    finally:
        ddpm.network.train(was_training)
    return torch.cat(out)


def sigma_bar_0(ddpm: nn.Module) -> float:
    """σ̄ at the smallest level, √((1 − ᾱ_0)/ᾱ_0): the smoothing of the density `ode_nll` scores (x0 units)."""
    a = ddpm.alphas_cumprod[0].item()
    return math.sqrt((1.0 - a) / a)


def one_bin_bits(sigma: float, n_bins: int = 256, n_u: int = 2048) -> float:
    """Bits that smoothing by N(0, σ²) in x0 = 2y − 1 (σ/2 in y) costs a pixel whose values fill one quantization
    bin of y uniformly, with no mass in the bins beside it (the background of MNIST): the uniform's cross-entropy
    under the smoothed density minus its entropy, by the midpoint rule over the bin (`n_u` points). A flow can
    give such a pixel the bin's uniform density, 0 bits on the bits/dim scale; the ODE's density cannot."""
    w, s = 1.0 / n_bins, 0.5 * sigma
    y = (torch.arange(n_u, dtype=torch.float64) + 0.5) / n_u * w  # points of the bin [0, w)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    smoothed = (normal.cdf(w - y) - normal.cdf(-y)) / w  # (U(0, w) * N(0, s²))(y)
    return (math.log(1.0 / w) - smoothed.log().mean().item()) / math.log(2.0)


def smoothing_bits(train: torch.Tensor, test: torch.Tensor, sigma: float, n_bins: int = 256, n_u: int = 16,
                   chunk: int = 16) -> dict[str, float]:
    """What smoothing by N(0, σ²) in x0 (σ̄_0) costs a density that is sharp at the bin scale, measured on data:
    the per-pixel histogram of the 8-bit `train` images (n_bins bins per pixel position, half a count added to
    every bin) as a density of dequantized y, piecewise constant, and its σ-smoothed version; the cost is the
    mean over the `test` images' pixels and `n_u` evenly spaced points of each pixel's bin of
    log2 density − log2 smoothed density (bits/dim). Also the share of test pixels at 0 (`zero`), the bin of
    MNIST's background, and `one_bin`, `one_bin_bits(sigma)`."""
    k_train = (train.flatten(1).double() * (n_bins - 1)).round().long()  # (N, D) bins
    D = k_train.shape[1]
    counts = torch.full((D, n_bins), 0.5, dtype=torch.float64)
    counts.scatter_add_(1, k_train.T.contiguous(), torch.ones(k_train.T.shape, dtype=torch.float64))
    dens = counts / counts.sum(1, keepdim=True) * n_bins  # (D, n_bins) density of y in each bin
    s, w = 0.5 * sigma, 1.0 / n_bins
    reach = int(math.ceil(8 * s / w)) + 1  # bins beyond this many contribute < Φ(−8)
    offsets = torch.arange(-reach, reach + 1)  # (R,)
    u = (torch.arange(n_u, dtype=torch.float64) + 0.5) / n_u  # (U,) points in the bin
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    k_test = (test.flatten(1).double() * (n_bins - 1)).round().long()  # (M, D)
    total, count = 0.0, 0
    for c0 in range(0, len(k_test), chunk):
        k = k_test[c0:c0 + chunk]  # (m, D)
        own = dens.gather(1, k.T.contiguous()).T  # (m, D) the pixel's bin's density
        j = (k[..., None] + offsets).clamp(0, n_bins - 1)  # (m, D, R) neighbouring bins
        valid = ((k[..., None] + offsets) >= 0) & ((k[..., None] + offsets) < n_bins)
        dj = torch.gather(dens.expand(len(k), D, n_bins), 2, j) * valid  # (m, D, R)
        y = (k[..., None, None] + u).double() * w  # (m, D, 1, U) in the pixel's bin
        a = (j[..., None].double() * w)  # (m, D, R, 1) bin starts
        mass = normal.cdf((a + w - y) / s) - normal.cdf((a - y) / s)  # (m, D, R, U)
        smoothed = (dj[..., None] * mass).sum(2)  # (m, D, U)
        total += (own.log()[..., None] - smoothed.log()).sum().item()
        count += smoothed.numel()
    return {"bits": total / count / math.log(2.0), "zero": (k_test == 0).double().mean().item(),
            "one_bin": one_bin_bits(sigma, n_bins)}


def _ode_drift(network: nn.Module, xbar: torch.Tensor, t: int, abar: float, dtype: torch.dtype,
               probe: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ε_θ(√ᾱ x̄, t) (B, *shape) and div_x̄ of it (B,), both float64 and detached: v^T (∂ε/∂x̄) v for the
    probes v, or the exact trace when `probe` is None. Only x̄ requires a gradient."""
    t_b = torch.full((xbar.shape[0],), t, device=xbar.device, dtype=torch.long)
    with torch.enable_grad():
        xbar = xbar.detach().requires_grad_(True)
        f = network((abar ** 0.5 * xbar).to(dtype), t_b).to(torch.float64)
        div = xbar.new_zeros(xbar.shape[0])
        if not f.requires_grad:  # the network ignores its input: no divergence
            return f.detach(), div
        if probe is not None:
            (vjp,) = torch.autograd.grad(f, xbar, grad_outputs=probe, allow_unused=True)
            if vjp is not None:
                div = (vjp * probe).flatten(1).sum(1)
            return f.detach(), div
        flat, D = f.flatten(1), f[0].numel()
        for d in range(D):  # ∂ε_d/∂x̄_d of every example, one dimension at a time
            (row,) = torch.autograd.grad(flat[:, d].sum(), xbar, retain_graph=d + 1 < D, allow_unused=True)
            if row is not None:
                div = div + row.flatten(1)[:, d]
        return f.detach(), div.detach()


def log_prob_y(nll_x0: torch.Tensor, dim: int) -> torch.Tensor:
    """log p(y) (nats) of y = (x0 + 1)/2 in [0, 1]^dim from −log p(x0) (or a bound on it) of x0 in [−1, 1]^dim.

    The map y → x0 = 2y − 1 has Jacobian 2^dim, so log p(y) = −(−log p(x0) − dim·ln 2): what
    `data.bits_per_dim` reads, the same scale as every model's bits/dim. Per example: same shape as `nll_x0`.
    """
    return -(nll_x0 - dim * math.log(2.0))


def bound_bits_per_dim(nll_x0: torch.Tensor, dim: int | None = None, n_bins: int = 256) -> torch.Tensor:
    """Bits/dim of 8-bit data from a bound on −log p(x0) (nats), x0 = 2y − 1 with y dequantized in [0, 1]^dim:
    `data.bits_per_dim` of `log_prob_y` (an upper bound, like the flow's). `dim` None: the default dataset's."""
    dim = INFO["mnist"].dim if dim is None else dim
    return bits_per_dim(log_prob_y(nll_x0, dim), dim=dim, n_bins=n_bins)


@torch.no_grad()
def dataset_bits_per_dim(ddpm: nn.Module, images: torch.Tensor, seed: int = 0, batch_size: int = 500,
                         n_t: int | None = None, clip_denoised: bool = False) -> torch.Tensor:
    """Per-image bits/dim (N,) of 8-bit `images` (N, *shape) in [0, 1] from `DDPM.nll_bound`.

    `data.dequantized_bits_per_dim`: the same y as every model's for the same `seed` and `batch_size` (so
    their differences can be paired), mapped to [-1, 1], then bounded with the diffusion noise drawn from a
    generator seeded by `seed`.
    """

    dev = ddpm.betas.device
    gen_t = torch.Generator(device=dev).manual_seed(seed)
    dim = math.prod(ddpm.shape)

    def log_prob(y: torch.Tensor) -> torch.Tensor:
        nll = ddpm.nll_bound(to_signed(y).to(dev), generator=gen_t, n_t=n_t, clip_denoised=clip_denoised)
        return log_prob_y(nll, dim)

    return dequantized_bits_per_dim(images, log_prob, seed, batch_size)
