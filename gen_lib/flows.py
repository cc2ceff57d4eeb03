"""RealNVP-style normalizing flows (Dinh et al., 2017), written once for the 2-D flow
prior of the VAE and for the 784-D image flow.

A flow maps data x to a base variable z through invertible layers. Each layer's
`forward(x)` goes data -> base and returns `(z, log|det dz/dx|)`; `inverse(z)` goes
back. By the change of variables,

    log p(x) = log N(z; 0, I) + sum_layers log|det dz/dx|.

Affine coupling with a binary mask m (1 = passed through, 0 = transformed):

    z = m * x + (1 - m) * (x * exp(s(m * x)) + t(m * x)),   log|det| = sum((1 - m) * s),

with s = tanh(.) bounded for stability and the last layer of s and t zero-initialised
(every coupling starts as the identity).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, constraints

_LOG_2PI = math.log(2 * math.pi)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class AffineCoupling(nn.Module):
    """Affine coupling layer on flat vectors (B, D) with a fixed binary `mask` (D,).

    Scale and translation networks each have one hidden layer of `hidden` ReLU units.
    """

    def __init__(self, mask: torch.Tensor, hidden: int):
        super().__init__()
        self.register_buffer("mask", mask.float())
        dim = mask.numel()
        self.s_net = _mlp(dim, hidden)
        self.t_net = _mlp(dim, hidden)

    def _st(self, x_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = 1.0 - self.mask
        s = torch.tanh(self.s_net(x_masked)) * keep  # (B, D), zero on the passed-through half
        t = self.t_net(x_masked) * keep
        return s, t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> base: (z, log|det dz/dx|) with shapes (B, D), (B,)."""
        s, t = self._st(x * self.mask)
        z = x * self.mask + (1.0 - self.mask) * (x * torch.exp(s) + t)
        return z, s.sum(-1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Base -> data."""
        s, t = self._st(z * self.mask)  # m * z == m * x: the conditioner sees the same input
        return z * self.mask + (1.0 - self.mask) * ((z - t) * torch.exp(-s))


class Flow(nn.Module):
    """A stack of invertible layers on a standard-normal base, for events of `event_shape`.

    Layers act on flattened events (B, D); the API takes and returns (B, *event_shape).
    `forward()` returns the flow as a `torch.distributions.Distribution`.
    """

    def __init__(self, layers: list[nn.Module], event_shape: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.event_shape = tuple(event_shape)
        self.dim = math.prod(self.event_shape)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for a wrong shape or non-finite values (subclasses add ranges)."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"flow input has shape {tuple(x.shape)}; expected (N, {', '.join(map(str, self.event_shape))})")
        if not torch.isfinite(x).all():
            raise ValueError("flow input has non-finite values (nan or inf)")

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) per example, (B,)."""
        z = z.reshape(z.shape[0], -1)
        return -0.5 * (z.pow(2).sum(-1) + self.dim * _LOG_2PI)

    def data_to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, *event) -> (z (B, *event), log|det dz/dx| (B,))."""
        self.check_input(x)
        h = x.reshape(x.shape[0], self.dim)
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            h, log_det = layer(h)
            total = total + log_det
        return h.reshape(x.shape), total

    def base_to_data(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, *event) -> x (B, *event)."""
        h = z.reshape(z.shape[0], self.dim)
        for layer in reversed(self.layers):
            h = layer.inverse(h)
        return h.reshape(z.shape[0], *self.event_shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per example (B,), every Jacobian included."""
        z, log_det = self.data_to_base(x)
        return self.base_log_prob(z) + log_det

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension (nats), the training objective."""
        return -self.log_prob(x).float().mean() / self.dim

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples (n, *event): z ~ N(0, temperature^2 I) mapped to data space."""
        p = next(self.parameters(), None)
        device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
        z = torch.randn((n, *self.event_shape), generator=generator, device=device, dtype=dtype) * temperature
        return self.base_to_data(z)

    def forward(self) -> "FlowDistribution":
        return FlowDistribution(self)


class FlowDistribution(Distribution):
    """A `Flow` seen as a `torch.distributions.Distribution` (reparameterised samples)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, flow: Flow):
        self.flow = flow
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size(flow.event_shape), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = value.shape[: value.dim() - len(self.event_shape)]  # any sample/batch shape
        flat = value.reshape(-1, *self.event_shape)
        z, log_det = self.flow.data_to_base(flat)
        return (self.flow.base_log_prob(z) + log_det).reshape(shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        n = math.prod(sample_shape)
        return self.flow.sample(n).reshape(*sample_shape, *self.event_shape)
