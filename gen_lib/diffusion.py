"""Denoising diffusion probabilistic models (Ho et al., 2020) with DDIM sampling (Song et al., 2021).

Forward process, a fixed linear schedule β_1..β_T (here indexed t = 0..T−1):

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),   ᾱ_t = ∏_{s ≤ t} (1 − β_s).

Training (Ho et al., Algorithm 1): minimise E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖².

Ancestral sampling (Algorithm 2), x_T ~ N(0, I), for t = T−1, ..., 0:

    x_{t−1} = 1/√α_t (x_t − β_t/√(1 − ᾱ_t) ε_θ(x_t, t)) + σ_t z,   z ~ N(0, I) if t > 0, else z = 0,

with σ_t² = β_t or β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t). Noise is added at every step but the
last one (the original study dropped it one step early). We write the mean in its
equivalent x̂_0 form, μ = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x̂_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t with
x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ)/√ᾱ_t, which is identical unless `clip_denoised` clamps x̂_0 to
[−1, 1] (what Ho et al.'s released code does).

DDIM (η = 0) on a sub-sequence τ_1 < ... < τ_S of the steps, a deterministic map:

    x_{τ_{i−1}} = √ᾱ_{τ_{i−1}} x̂_0 + √(1 − ᾱ_{τ_{i−1}}) ε_θ(x_{τ_i}, τ_i),   ᾱ_{τ_0} := 1.

With S < T steps the ancestral sampler runs on the same sub-sequence with the respaced
β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} (Nichol & Dhariwal, 2021); with S = T it is Algorithm 2 exactly.

Likelihood (`DDPM.nll_bound`): the variational bound of Ho et al., Eq. 5, on −log p_θ(x_0) with
σ_t² = β_t and a Gaussian L_0, every KL in closed form; `bound_bits_per_dim` puts it on the flow's
bits/dim scale of the dequantized 8-bit data. `DDPM.ode_nll`: the exact −log density of the same ε-network's
probability-flow ODE (deterministic DDIM in its continuous limit), up to the ODE solver's error.

Samplers are step functions `step(x_t, eps, t, t_prev, schedule, noise, **options) -> x_prev` (the
shape of diffusers' `Scheduler.step`, with the standard-normal `noise` passed in like its
`variance_noise`), registered by name in `SAMPLERS`; the loop that calls them is written once
(`DDPM.sample`). A new sampler is one function with `@register_sampler(name, label)`.

The schedule is made of free functions in float64, stored as buffers; the network is
passed in and called as `network(x_t, t)` with t int64 of shape (B,).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import dequantize, to_signed
from .flows import bits_per_dim
from .unet import UNet

VARIANCES = ("beta", "beta_tilde")


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t evenly spaced from `beta_start` to `beta_end`, T values in float64 (Ho et al., 2020, Sec. 4)."""
    if T < 1:
        raise ValueError(f"T={T} must be >= 1")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"beta_start={beta_start}, beta_end={beta_end}: need 0 < beta_start <= beta_end < 1")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s ≤ t} (1 − β_s), in the dtype of `betas`."""
    return torch.cumprod(1.0 - betas, dim=0)


def sampling_timesteps(T: int, steps: int) -> torch.Tensor:
    """`steps` evenly spaced steps τ_i = ⌊i T / S⌋ − 1, i = S..1, in decreasing order (int64).

    Always starts at T − 1 (where x_T ~ N(0, I) is right); S = T gives T−1, ..., 0.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps={steps} must be in [1, T={T}]")
    return torch.tensor([(i * T) // steps - 1 for i in range(steps, 0, -1)], dtype=torch.long)


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


def _strata(T: int, S: int) -> torch.Tensor:
    """S + 1 strictly increasing step indices from 1 to T whose gaps grow geometrically (edges ≈ T^{j/S}).

    The bound's terms fall off roughly like 1/t, so strata of width ∝ t keep each stratum's terms
    alike (small t, where the terms are large, get strata of width 1: summed exactly).
    """
    edges = [1]
    for j in range(1, S + 1):
        edges.append(min(max(edges[-1] + 1, round(T ** (j / S))), T - (S - j)))
    return torch.tensor(edges, dtype=torch.long)


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, ...) to broadcast over x, in x's dtype."""
    return values[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------- samplers: one step function each


@dataclass(frozen=True)
class Schedule:
    """What a sampler step reads of the noise schedule: ᾱ_t as Python floats (float64), t = 0..T−1."""

    alphas_cumprod: tuple[float, ...]

    def abar(self, t: int) -> float:
        """ᾱ_t, with ᾱ_{−1} := 1 (the data end of the chain)."""
        return 1.0 if t < 0 else self.alphas_cumprod[t]


Step = Callable[..., torch.Tensor]  # (x_t, eps, t, t_prev, schedule, noise, **options) -> x_{t_prev}


@dataclass(frozen=True)
class SamplerSpec:
    """One entry of the sampler registry."""

    name: str
    label: str  # its name in text and tables, plain ASCII (the report is LaTeX): "DDIM"
    step: Step


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, label: str) -> Callable[[Step], Step]:
    """Decorator: register `step` as the sampler `name`. A step maps x_t (B, *shape) to x_{t_prev}, given
    the network's ε̂ (B, *shape), the steps t > t_prev (t_prev = −1 at the last step), the `Schedule`
    and a standard-normal draw `noise` (B, *shape) that a stochastic step scales; keyword options
    (`clip_denoised`, and its own) come from `DDPM.sample`."""
    def add(step: Step) -> Step:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        SAMPLERS[name] = SamplerSpec(name, label, step)
        return step
    return add


def sampler(name: str) -> SamplerSpec:
    """The registry entry of `name`; a clear error lists the registered samplers."""
    if name not in SAMPLERS:
        raise ValueError(f"method={name!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def _predict_x0(x_t: torch.Tensor, eps: torch.Tensor, abar: float, clip: bool) -> torch.Tensor:
    x0 = (x_t - (1.0 - abar) ** 0.5 * eps) / abar ** 0.5  # x̂_0 (Ho et al., Eq. 15)
    return x0.clamp(-1.0, 1.0) if clip else x0


@register_sampler("ancestral", "ancestral")
def ancestral_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, schedule: Schedule,
                   noise: torch.Tensor, *, clip_denoised: bool = True, variance: str = "beta") -> torch.Tensor:
    """One step of Ho et al.'s Algorithm 2 in its x̂_0 form, μ = √ᾱ' β/(1 − ᾱ) x̂_0 + √(1 − β)(1 − ᾱ')/(1 − ᾱ) x_t,
    then x_{t'} = μ + σ z with σ² = β (`variance="beta"`) or β̃ = β (1 − ᾱ')/(1 − ᾱ) ("beta_tilde"), and no
    noise at the last step; β = 1 − ᾱ_t/ᾱ_{t'} is β_t when t' = t − 1 and the respaced β' otherwise."""
    if variance not in VARIANCES:
        raise ValueError(f"variance={variance!r} is unknown; choose one of {', '.join(VARIANCES)}")
    abar, abar_prev = schedule.abar(t), schedule.abar(t_prev)
    x0_hat = _predict_x0(x_t, eps, abar, clip_denoised)
    beta = 1.0 - abar / abar_prev
    mean = (abar_prev ** 0.5 * beta / (1.0 - abar)) * x0_hat \
        + ((1.0 - beta) ** 0.5 * (1.0 - abar_prev) / (1.0 - abar)) * x_t
    if t_prev < 0:  # every step but the last adds noise
        return mean
    var = beta if variance == "beta" else beta * (1.0 - abar_prev) / (1.0 - abar)
    return mean + var ** 0.5 * noise


@register_sampler("ddim", "DDIM")
def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, schedule: Schedule, noise: torch.Tensor,
              *, clip_denoised: bool = True) -> torch.Tensor:
    """Song et al.'s deterministic DDIM step (η = 0, Eq. 12): x_{t'} = √ᾱ' x̂_0 + √(1 − ᾱ') ε̂, with ε̂ made
    consistent with a clamped x̂_0 (`noise` is not used)."""
    abar, abar_prev = schedule.abar(t), schedule.abar(t_prev)
    x0_hat = _predict_x0(x_t, eps, abar, clip_denoised)
    if clip_denoised:  # the ε consistent with the clamped x̂_0
        eps = (x_t - abar ** 0.5 * x0_hat) / (1.0 - abar) ** 0.5
    return abar_prev ** 0.5 * x0_hat + (1.0 - abar_prev) ** 0.5 * eps


@register_sampler("ddim_eta", "DDIM (eta = 1)")
def ddim_eta_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, schedule: Schedule, noise: torch.Tensor,
                  *, clip_denoised: bool = True, eta: float = 1.0) -> torch.Tensor:
    """Song et al.'s generalized step (Eq. 12) with η > 0: x_{t'} = √ᾱ' x̂_0 + √(1 − ᾱ' − σ²) ε̂ + σ z,
    σ = η √((1 − ᾱ')/(1 − ᾱ)) √(1 − ᾱ/ᾱ') (Eq. 16). With η = 1 and S = T it is the ancestral chain with
    σ² = β̃_t; η = 0 is `ddim_step`."""
    if not eta >= 0:
        raise ValueError(f"eta={eta!r} must be >= 0")
    abar, abar_prev = schedule.abar(t), schedule.abar(t_prev)
    x0_hat = _predict_x0(x_t, eps, abar, clip_denoised)
    if clip_denoised:  # the ε consistent with the clamped x̂_0
        eps = (x_t - abar ** 0.5 * x0_hat) / (1.0 - abar) ** 0.5
    var = eta ** 2 * (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)
    return abar_prev ** 0.5 * x0_hat + (1.0 - abar_prev - var) ** 0.5 * eps + var ** 0.5 * noise


class DDPM(nn.Module):
    """Gaussian diffusion around an ε-network: `loss(x0)` to train, `sample(n)` to generate.

    Data x0 live in [-1, 1] with shape `shape` (per example). Buffers `betas` and
    `alphas_cumprod` (length T) are computed and kept in float64 and cast where used.
    Reference: Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020;
    Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021.
    """

    def __init__(self, network: nn.Module, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.network = network
        self.T = T
        self.shape = tuple(shape)
        betas = linear_beta_schedule(T, beta_start, beta_end)
        self.register_buffer("betas", betas)  # (T,) float64
        self.register_buffer("alphas_cumprod", alphas_cumprod(betas))  # (T,) float64

    # ---------------------------------------------------------------- training
    def _check_t(self, t: torch.Tensor, batch: int) -> None:
        if t.dtype != torch.long or t.shape != (batch,):
            raise ValueError(f"t has dtype {t.dtype} and shape {tuple(t.shape)}; expected int64 of shape ({batch},)")
        if t.numel() and (t.min() < 0 or t.max() >= self.T):
            raise ValueError(f"t in [{t.min().item()}, {t.max().item()}] is out of range; steps are 0..T-1 = "
                             f"0..{self.T - 1}")

    def _check_x0(self, x0: torch.Tensor) -> None:
        if tuple(x0.shape[1:]) != self.shape or x0.dim() != len(self.shape) + 1:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}; expected (B, {', '.join(map(str, self.shape))})")
        lo, hi = x0.min().item(), x0.max().item()
        if lo < -1.0 or hi > 1.0:
            raise ValueError(f"x0 lies in [{lo:.4g}, {hi:.4g}]; DDPM data must be in [-1, 1] "
                             "(use gen_lib.data.to_signed on images in [0, 1])")

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x_0) (Ho et al., Eq. 4)."""
        self._check_t(t, x0.shape[0])
        abar = _at(self.alphas_cumprod, t, x0)  # (B, 1, 1, 1)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def p_losses(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """‖ε − ε_θ(x_t, t)‖² averaged over pixels and the batch, in float32 (or the data's float64)."""
        eps = self.network(self.q_sample(x0, t, noise), t)  # (B, C, H, W), bf16 under autocast
        dtype = torch.promote_types(x0.dtype, torch.float32)
        return F.mse_loss(eps.to(dtype), noise.to(dtype))

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The simple loss L_simple (Ho et al., Eq. 14, Algorithm 1): t ~ U{0..T−1}, ε ~ N(0, I)."""
        self._check_x0(x0)
        t = torch.randint(0, self.T, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.p_losses(x0, t, noise)

    # ---------------------------------------------------------------- sampling
    def schedule(self) -> Schedule:
        """The ᾱ_t table as Python floats, read once per sampling run (no device sync per step)."""
        return Schedule(tuple(self.alphas_cumprod.tolist()))

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, method: str = "ancestral",
               generator: torch.Generator | None = None, *, clip_denoised: bool = True, bf16: bool = False,
               return_trajectory: bool = False, dtype: torch.dtype | None = None, **options):
        """Draw n samples (n, *shape) in [-1, 1] by the registered sampler `method` (`SAMPLERS`: "ancestral",
        Ho et al.'s Algorithm 2; "ddim", Song et al.'s η = 0; ...) on `steps` evenly spaced steps (None = T).

        The one loop of every sampler: x_T ~ N(0, I), then for t in the steps, ε̂ = ε_θ(x_t, t) and
        x ← step(x, ε̂, t, t_prev, schedule, z), z ~ N(0, I) drawn from `generator` at every step.
        `options` go to the step (e.g. `variance="beta_tilde"` for "ancestral"); `clip_denoised` clamps
        x̂_0 to [-1, 1] at each step (off to study the exact sampler); `bf16` runs the network under bf16
        autocast (the update itself stays in float32). `return_trajectory` also returns x_t before every
        step and the final x_0: (S + 1, n, *shape).
        """
        spec = sampler(method)
        known = [k for k, p in inspect.signature(spec.step).parameters.items() if p.kind == p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"sampler {method!r} has no option(s) {', '.join(unknown)}; "
                             f"its options: {', '.join(known)}")
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        timesteps = sampling_timesteps(self.T, self.T if steps is None else steps).tolist()  # decreasing
        device = self.betas.device
        if dtype is None:
            dtype = next((p.dtype for p in self.network.parameters()), torch.get_default_dtype())
        schedule = self.schedule()
        x = torch.randn((n, *self.shape), generator=generator, device=device, dtype=dtype)  # x_T
        trajectory = [x.cpu()] if return_trajectory else None
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                eps = self.network(x, torch.full((n,), t, device=device, dtype=torch.long))
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
            x = spec.step(x, eps.to(dtype), t, t_prev, schedule, noise, clip_denoised=clip_denoised, **options)
            if return_trajectory:
                trajectory.append(x.cpu())
        return (x, torch.stack(trajectory)) if return_trajectory else x

    # ---------------------------------------------------------------- likelihood
    @torch.no_grad()
    def nll_bound(self, x0: torch.Tensor, generator: torch.Generator | None = None, *, n_t: int | None = None,
                  clip_denoised: bool = False, batch: int = 1024) -> torch.Tensor:
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
        that model's density (off by default: the model that `loss` trains).
        """
        self._check_x0(x0)
        if n_t is not None and not (isinstance(n_t, int) and 1 <= n_t <= self.T - 1):
            raise ValueError(f"n_t={n_t!r} must be None (sum all T terms) or an integer in [1, T-1={self.T - 1}]")
        if batch < 1:
            raise ValueError(f"batch={batch} must be >= 1")
        dev, B, D = self.betas.device, x0.shape[0], math.prod(self.shape)
        dtype = next((p.dtype for p in self.network.parameters()), x0.dtype)
        x = x0.to(dev, torch.float64)  # (B, *shape)
        betas, abar = self.betas, self.alphas_cumprod  # (T,) float64
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
        edges = _strata(self.T, self.T - 1 if n_t is None else n_t).to(dev)  # (S + 1,) from 1 to T
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
        was_training = self.network.training
        self.network.eval()
        try:
            for r0 in range(0, len(width) + 1, rows_per_call):
                for b0 in range(0, B, per_call):
                    b1 = torch.arange(b0, min(B, b0 + per_call), device=dev)
                    rows = range(r0, min(len(width) + 1, r0 + rows_per_call))
                    t, w = (torch.cat(v) for v in zip(*(steps(r, b1) for r in rows)))  # (P,), step-major
                    b = b1.repeat(len(rows))
                    xb = x[b]  # (P, *shape)
                    noise = torch.randn(xb.shape, generator=generator, device=dev, dtype=torch.float64)
                    a = _at(abar, t, xb)  # (P, 1, 1, 1)
                    x_t = a.sqrt() * xb + (1.0 - a).sqrt() * noise
                    eps = self.network(x_t.to(dtype), t).to(torch.float64)
                    x0_hat = (x_t - (1.0 - a).sqrt() * eps) / a.sqrt()
                    if clip_denoised:
                        x0_hat = x0_hat.clamp(-1.0, 1.0)
                    sq = (xb - x0_hat).flatten(1).pow(2).sum(1)  # (P,)
                    total.index_add_(0, b, w * (const[t] + weight[t] * sq))
        finally:
            self.network.train(was_training)
        return total.to(x0.device)

    @torch.no_grad()
    def ode_nll(self, x0: torch.Tensor, steps: int | None = None, exact_trace: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
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
        data (levels evenly spaced in t leave σ̄ from 0.01 to 0.03 to one step: on Gaussian data of std 0.003,
        an error of 0.007 nats/dim at S = 100 against 0.0008 here; std 0.05-0.2: 0.013 against 0.010). About 2S network evaluations with a vector-Jacobian product each (the
        default U-Net on 28×28 images, float32, 2 CPU threads, batch 100: ≈ 5 ms per image and evaluation
        pair, 0.5 s per image at S = 100).

        The divergence is Hutchinson's v^T (∂ε/∂x̄) v with Rademacher probes v (never more variance than Gaussian
        ones), drawn once per example from `generator` and held fixed along the path: unbiased, its noise part of
        each example's value (report the standard error over examples). `exact_trace=True` takes the trace, D
        vector-Jacobian products per evaluation (small shapes, tests). `steps=None` is min(100, T); check a value
        against 2S steps (tests/test_ode_nll.py measures the error on Gaussian data, broad and sharp). The state is
        float64; the network sees its input in its parameters' dtype (x0's without any), in eval mode (restored
        after), and no parameter gets a .grad.
        """
        self._check_x0(x0)
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= self.T):
            raise ValueError(f"steps={steps!r} must be None (min(100, T)) or an integer in [1, T={self.T}]")
        if not isinstance(exact_trace, bool):
            raise ValueError(f"exact_trace={exact_trace!r} must be True or False")
        dev, B = self.betas.device, x0.shape[0]
        dtype = next((p.dtype for p in self.network.parameters()), x0.dtype)
        ts = ode_levels(self.alphas_cumprod, min(100, self.T) if steps is None else steps)  # increasing
        abar = self.alphas_cumprod[ts].tolist()  # float64 values, read once
        sig = [((1.0 - a) / a) ** 0.5 for a in abar]  # σ̄ at the levels, increasing
        x = x0.to(dev, torch.float64)  # x̄ = x0 at σ̄_0
        probe = None if exact_trace else \
            torch.randint(0, 2, x.shape, generator=generator, device=dev).to(torch.float64).mul_(2).sub_(1)
        integral = x.new_zeros(B)  # ∫ σ̄ div_x̄ ε du

        def drift(xbar: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # dx̄/du and σ̄ div
            f, div = self._ode_drift(xbar, ts[i], abar[i], dtype, probe)
            return sig[i] * f, sig[i] * div

        was_training = self.network.training
        self.network.eval()
        try:
            for i in range(1, len(ts)):  # Heun in u = log σ̄ from level i − 1 to level i
                h = math.log(sig[i] / sig[i - 1])
                f1, div1 = drift(x, i - 1)
                f2, div2 = drift(x + h * f1, i)
                x, integral = x + 0.5 * h * (f1 + f2), integral + 0.5 * h * (div1 + div2)
        finally:
            self.network.train(was_training)
        D, a_T = x[0].numel(), abar[-1]
        log_p_T = (-0.5 * a_T * x.flatten(1).pow(2).sum(1) - 0.5 * D * math.log(2 * math.pi)
                   + 0.5 * D * math.log(a_T))  # log N(√ᾱ_T x̄_T; 0, I) + D/2 log ᾱ_T
        return -(log_p_T + integral).to(x0.device)

    def _ode_drift(self, xbar: torch.Tensor, t: int, abar: float, dtype: torch.dtype, probe: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """ε_θ(√ᾱ x̄, t) (B, *shape) and div_x̄ of it (B,), both float64 and detached: v^T (∂ε/∂x̄) v for the
        probes v, or the exact trace when `probe` is None. Only x̄ requires a gradient."""
        t_b = torch.full((xbar.shape[0],), t, device=xbar.device, dtype=torch.long)
        with torch.enable_grad():
            xbar = xbar.detach().requires_grad_(True)
            f = self.network((abar ** 0.5 * xbar).to(dtype), t_b).to(torch.float64)
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


def bound_bits_per_dim(nll_x0: torch.Tensor, dim: int = 784, n_bins: int = 256) -> torch.Tensor:
    """Bits/dim of 8-bit data from a bound on −log p(x0) (nats) with x0 = 2y − 1, y dequantized in [0, 1]^dim.

    The map y → x0 = 2y − 1 has Jacobian 2^dim, so −log p(y) = −log p(x0) − dim·ln 2, and then
    `gen_lib.flows.bits_per_dim` (bits/dim = (−log p(y) + dim·ln 256)/(dim·ln 2)): the same scale
    as the flow's test bits/dim, and an upper bound like it. Per example: same shape as `nll_x0`.
    """

    return bits_per_dim(-(nll_x0 - dim * math.log(2.0)), dim=dim, n_bins=n_bins)


@torch.no_grad()
def dataset_bits_per_dim(ddpm: DDPM, images: torch.Tensor, seed: int = 0, batch_size: int = 500,
                         n_t: int | None = None, clip_denoised: bool = False) -> torch.Tensor:
    """Per-image bits/dim (N,) of 8-bit `images` (N, 1, 28, 28) in [0, 1] from `DDPM.nll_bound`.

    Dequantized exactly as `gen_lib.flows.dataset_bits_per_dim` does with the same `seed` and
    `batch_size` (so both models score the same y and their difference can be paired), mapped to
    [-1, 1], then bounded with the diffusion noise drawn from a generator seeded by `seed`.
    """

    dev = ddpm.betas.device
    gen_y = torch.Generator(device="cpu").manual_seed(seed)
    gen_t = torch.Generator(device=dev).manual_seed(seed)
    dim = math.prod(ddpm.shape)
    out = []
    for i in range(0, images.shape[0], batch_size):
        y = dequantize(images[i:i + batch_size].float().cpu(), generator=gen_y)
        nll = ddpm.nll_bound(to_signed(y).to(dev), generator=gen_t, n_t=n_t, clip_denoised=clip_denoised)
        out.append(bound_bits_per_dim(nll, dim=dim).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------- the study's DDPM
@dataclass
class DDPMConfig:
    """The DDPM of the study: U-Net width, schedule and training protocol (profiles.toml, [*.ddpm])."""

    epochs: int = 100  # passes over the training images
    batch_size: int = 128
    lr: float = 2e-4  # Adam, constant (Ho et al. used 2e-4 on CIFAR-10)
    train_subset: int = 0  # first N training images, 0 = all 50,000 of the "fit" split
    base_channels: int = 32  # U-Net width c0 of the 32×32 level
    channel_mults: str = "1,2,2,4"  # widths of the four levels, c0 · mult
    n_res: int = 2  # residual blocks per level and side
    dropout: float = 0.1
    T: int = 1000  # diffusion steps
    ema_decay: float = 0.9999  # EMA of the weights, used for sampling
    bf16: bool = False  # bf16 autocast for the network (loss and schedule stay fp32)
    channels_last: bool = False
    seed: int = 0


def build_ddpm(cfg: DDPMConfig, shape: tuple[int, int, int] = (1, 28, 28)) -> DDPM:
    """DDPM(UNet(...)) on images of `shape` (C, H, W) (the dataset's; MNIST's by default) with the linear
    schedule 1e-4 → 0.02 (Ho et al.). Trained by `gen_lib.study.recipes.train_ddpm`."""

    mults = tuple(int(m) for m in str(cfg.channel_mults).split(","))
    return DDPM(UNet(shape[0], cfg.base_channels, mults, cfg.n_res, dropout=cfg.dropout), T=cfg.T, shape=shape)
