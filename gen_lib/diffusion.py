"""Denoising diffusion probabilistic models (Ho et al., 2020) with DDIM sampling (Song et al., 2021).

Forward process, a fixed linear schedule β_1..β_T (here indexed t = 0..T−1):

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),   ᾱ_t = ∏_{s ≤ t} (1 − β_s).

Training (Ho et al., Algorithm 1): minimise E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖².

Sampling: `DDPM.sample` is the one loop of every sampler of `gen_lib.samplers.SAMPLERS` (ancestral, DDIM, ...).
Likelihood: `DDPM.nll_bound` (Ho et al.'s variational bound) and `DDPM.ode_nll` (an estimate of the probability-flow
ODE's density: Hutchinson's trace, limited by the solver), computed in `gen_lib.diffusion_nll`.

The schedule is made of free functions in float64, stored as buffers; the network is passed in and called as
`network(x_t, t)` with t int64 of shape (B,).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from . import diffusion_nll
from .samplers import Schedule, sampler, sampling_timesteps
from .unet import UNet


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


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, ...) to broadcast over x, in x's dtype."""
    return values[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


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

    def check_x0(self, x0: torch.Tensor) -> None:
        """A clear error unless x0 is a batch (B, *shape) in [-1, 1]."""
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
        self.check_x0(x0)
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
        """Draw n samples (n, *shape) in [-1, 1] by the registered sampler `method` (`gen_lib.samplers.SAMPLERS`:
        "ancestral", Ho et al.'s Algorithm 2; "ddim", Song et al.'s η = 0; ...) on `steps` evenly spaced steps
        (None = T).

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

    # ---------------------------------------------------------------- likelihood: functions of the model, as methods
    nll_bound = diffusion_nll.nll_bound  # Ho et al.'s variational bound on −log p_θ(x0), nats per example
    ode_nll = diffusion_nll.ode_nll  # −log p_θ(x0) under the probability-flow ODE, nats per example


# ---------------------------------------------------------------- the study's DDPM
def build_ddpm(*, base_channels: int, channel_mults: str, n_res: int, dropout: float, T: int,
               shape: tuple[int, int, int] = (1, 28, 28)) -> DDPM:
    """DDPM(UNet(...)) on images of `shape` (C, H, W) (the dataset's; MNIST's by default) with the linear
    schedule 1e-4 → 0.02 (Ho et al.). Its arguments are the `[ddpm]` section's model fields, declared (with
    their meaning) only in `gen_lib.study.sections.DDPMSection`; `gen_lib.study.models.build` passes them and
    `gen_lib.study.recipes.train_ddpm` trains the result. `channel_mults`: the levels' width factors,
    comma-separated ("1,2,2,2")."""

    mults = tuple(int(m) for m in str(channel_mults).split(","))
    return DDPM(UNet(shape[0], base_channels, mults, n_res, dropout=dropout), T=T, shape=shape)
