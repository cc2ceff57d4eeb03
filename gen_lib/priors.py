"""Priors p(z) for a VAE, each an `nn.Module` whose `forward()` (call it as `prior()`)
returns a fresh `torch.distributions.Distribution` with event shape (latent_dim,).

The VAE only calls `log_prob`, `sample` and `rsample` on what they return, so one
ELBO serves all four (Tomczak, *Deep Generative Modeling*, 2022, ch. 4):

- `GaussianPrior`:  p(z) = N(z; 0, I)
- `MoGPrior`:       p(z) = sum_k w_k N(z; mu_k, diag(sigma_k^2)), 16 learnable components
- `FlowPrior`:      p(z) = N(f(z); 0, I) |det df/dz|, f a RealNVP coupling flow (Dinh et al., 2017)
- `VampPrior`:      p(z) = sum_k w_k q(z | u_k), the encoder at learnable pseudo-inputs u_k
                    (Tomczak & Welling, 2018), here with learnable weights w.

Only the Gaussian prior has an analytic KL against the Gaussian posterior in
`torch.distributions`; the VAE uses a Monte-Carlo KL for the others.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from . import flows

PRIORS = ("gaussian", "mog", "flow", "vamp")


def _check_latent_dim(latent_dim: int) -> None:
    if not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim={latent_dim!r} must be a positive integer")


class GaussianPrior(nn.Module):
    """Standard normal prior p(z) = N(z; 0, I) (Kingma & Welling, 2014). No parameters."""

    def __init__(self, latent_dim: int):
        super().__init__()
        _check_latent_dim(latent_dim)
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)


class MoGPrior(nn.Module):
    """Mixture of Gaussians p(z) = sum_k softmax(a)_k N(z; mu_k, diag(softplus(r_k)^2)).

    Means, per-dimension scales and mixture weights are all learnable. The means start
    as draws from N(0, I) so that the components begin spread over the prior's support.
    """

    def __init__(self, latent_dim: int, n_components: int = 16):
        super().__init__()
        _check_latent_dim(latent_dim)
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components={n_components!r} must be a positive integer")
        self.latent_dim = latent_dim
        self.means = nn.Parameter(torch.randn(n_components, latent_dim))  # (K, D)
        self.raw_scales = nn.Parameter(torch.full((n_components, latent_dim), 0.5413))  # softplus -> 1.0
        self.logits = nn.Parameter(torch.zeros(n_components))  # (K,)

    def forward(self) -> Distribution:
        scales = nn.functional.softplus(self.raw_scales) + 1e-4  # (K, D), floor keeps it proper
        components = Independent(Normal(self.means, scales, validate_args=False), 1, validate_args=False)
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False), components,
                                 validate_args=False)


class FlowPrior(nn.Module):
    """Flow prior: a RealNVP stack of `n_layers` affine couplings (hidden width `hidden`,
    alternating masks) on a standard normal base,

        log p(z) = log N(f(z); 0, I) + log |det df/dz|.

    `self.flow` is the `gen_lib.flows.Flow`; `prior()` returns its `FlowDistribution`.
    """

    def __init__(self, latent_dim: int, n_layers: int = 10, hidden: int = 8):
        super().__init__()
        _check_latent_dim(latent_dim)
        if latent_dim < 2:
            raise ValueError(f"latent_dim={latent_dim} is too small for a coupling flow; need >= 2")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers={n_layers!r} must be a positive integer")
        self.latent_dim = latent_dim
        half = (torch.arange(latent_dim) % 2).float()  # [0, 1, 0, 1, ...]
        masks = [half if i % 2 == 0 else 1.0 - half for i in range(n_layers)]  # alternate which half moves
        self.flow = flows.Flow([flows.AffineCoupling(m, hidden) for m in masks], event_shape=(latent_dim,))

    def forward(self) -> Distribution:
        return self.flow()


class VampPrior(nn.Module):
    """VampPrior p(z) = sum_k softmax(w)_k q(z | u_k) (Tomczak & Welling, 2018).

    The u_k = sigmoid(v_k) are `n_pseudo` learnable pseudo-images in [0, 1]^784; q is
    the VAE's own encoder (shared, not copied), so the prior moves with the encoder.
    """

    def __init__(self, latent_dim: int, encoder: nn.Module, n_pseudo: int = 16, input_dim: int = 784):
        super().__init__()
        _check_latent_dim(latent_dim)
        if not isinstance(n_pseudo, int) or n_pseudo < 1:
            raise ValueError(f"n_pseudo={n_pseudo!r} must be a positive integer")
        self.latent_dim = latent_dim
        self.encoder = [encoder]  # a list: the encoder's parameters belong to the VAE, not twice to the prior
        self.pseudo_logits = nn.Parameter(0.1 * torch.randn(n_pseudo, input_dim))  # (K, 784), u ~ 0.5 at start
        self.logits = nn.Parameter(torch.zeros(n_pseudo))  # (K,)

    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-images u_k in [0, 1], shape (K, 784)."""
        return torch.sigmoid(self.pseudo_logits)

    def forward(self) -> Distribution:
        q = self.encoder[0](self.pseudo_inputs())  # Independent(Normal), batch (K,), event (D,)
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False), q, validate_args=False)


def build_prior(name: str, latent_dim: int = 2, encoder: nn.Module | None = None) -> nn.Module:
    """The study's prior `name` in {"gaussian", "mog", "flow", "vamp"} (the VampPrior needs `encoder`)."""
    if name == "gaussian":
        return GaussianPrior(latent_dim)
    if name == "mog":
        return MoGPrior(latent_dim, n_components=16)
    if name == "flow":
        return FlowPrior(latent_dim, n_layers=10, hidden=8)
    if name == "vamp":
        if encoder is None:
            raise ValueError("prior='vamp' needs the VAE's encoder (encoder=None was given)")
        return VampPrior(latent_dim, encoder, n_pseudo=16)
    raise ValueError(f"prior={name!r} is unknown; choose one of {', '.join(PRIORS)}")
