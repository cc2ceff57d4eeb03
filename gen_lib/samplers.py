"""The DDPM's samplers: one step function each, registered by name in `SAMPLERS`, run by one loop
(`gen_lib.diffusion.DDPM.sample`).

Ancestral sampling (Ho et al., 2020, Algorithm 2), x_T ~ N(0, I), for t = T−1, ..., 0:

    x_{t−1} = 1/√α_t (x_t − β_t/√(1 − ᾱ_t) ε_θ(x_t, t)) + σ_t z,   z ~ N(0, I) if t > 0, else z = 0,

with σ_t² = β_t or β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t); no noise at the last step. The mean is written in its
equivalent x̂_0 form, μ = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x̂_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t with
x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ)/√ᾱ_t, identical unless `clip_denoised` clamps x̂_0 to [−1, 1] (as Ho et al.'s
released code does).

DDIM (Song et al., 2021; η = 0) on a sub-sequence τ_1 < ... < τ_S of the steps, a deterministic map:

    x_{τ_{i−1}} = √ᾱ_{τ_{i−1}} x̂_0 + √(1 − ᾱ_{τ_{i−1}}) ε_θ(x_{τ_i}, τ_i),   ᾱ_{τ_0} := 1.

With S < T steps the ancestral sampler runs on the same sub-sequence with the respaced
β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} (Nichol & Dhariwal, 2021); with S = T it is Algorithm 2 exactly.

A step is `step(x_t, eps, t, t_prev, schedule, noise, **options) -> x_prev` (the shape of diffusers'
`Scheduler.step`, the standard-normal `noise` passed in like its `variance_noise`). A new sampler is one
function with `@register_sampler(name, label)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

VARIANCES = ("beta", "beta_tilde")


def sampling_timesteps(T: int, steps: int) -> torch.Tensor:
    """`steps` evenly spaced steps τ_i = ⌊i T / S⌋ − 1, i = S..1, in decreasing order (int64).

    Always starts at T − 1 (where x_T ~ N(0, I) is right); S = T gives T−1, ..., 0.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps={steps} must be in [1, T={T}]")
    return torch.tensor([(i * T) // steps - 1 for i in range(steps, 0, -1)], dtype=torch.long)


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


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, abar: float | torch.Tensor,
               clip_denoised: bool = False) -> torch.Tensor:
    """The clean image the network predicts, x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t (Ho et al., Eq. 15), clamped to
    [−1, 1] when `clip_denoised`: the one x̂_0 of every sampler step, the variational bound and the explorer.
    `abar` is ᾱ_t as a float or a tensor that broadcasts against x_t (one ᾱ per example or per step)."""
    x0 = (x_t - (1.0 - abar) ** 0.5 * eps) / abar ** 0.5
    return x0.clamp(-1.0, 1.0) if clip_denoised else x0


@register_sampler("ancestral", "ancestral")
def ancestral_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, schedule: Schedule,
                   noise: torch.Tensor, *, clip_denoised: bool = True, variance: str = "beta") -> torch.Tensor:
    """One step of Ho et al.'s Algorithm 2 in its x̂_0 form, μ = √ᾱ' β/(1 − ᾱ) x̂_0 + √(1 − β)(1 − ᾱ')/(1 − ᾱ) x_t,
    then x_{t'} = μ + σ z with σ² = β (`variance="beta"`) or β̃ = β (1 − ᾱ')/(1 − ᾱ) ("beta_tilde"), and no
    noise at the last step; β = 1 − ᾱ_t/ᾱ_{t'} is β_t when t' = t − 1 and the respaced β' otherwise."""
    if variance not in VARIANCES:
        raise ValueError(f"variance={variance!r} is unknown; choose one of {', '.join(VARIANCES)}")
    abar, abar_prev = schedule.abar(t), schedule.abar(t_prev)
    x0_hat = predict_x0(x_t, eps, abar, clip_denoised)
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
    x0_hat = predict_x0(x_t, eps, abar, clip_denoised)
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
    x0_hat = predict_x0(x_t, eps, abar, clip_denoised)
    if clip_denoised:  # the ε consistent with the clamped x̂_0
        eps = (x_t - abar ** 0.5 * x0_hat) / (1.0 - abar) ** 0.5
    var = eta ** 2 * (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)
    return abar_prev ** 0.5 * x0_hat + (1.0 - abar_prev - var) ** 0.5 * eps + var ** 0.5 * noise
