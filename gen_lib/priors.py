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
`torch.distributions`; the VAE uses a Monte-Carlo KL for the others. The two mixtures are torch's
`MixtureSameFamily` of diagonal Gaussians.

The registry (`register`, `REGISTRY`) is the one list of priors: `build_vae`, the notebooks
(Table 1, Figure 1, the samples figure, the report's sentences), the profiles' size parameters
and the contract tests all read it. A prior registers its factory, its label, its size
parameters (keyword arguments of the factory, set in a profile as `<name>_<param>`, defaulting
to the factory's own defaults), a phrase for the report and, for the study's four, the original
study's Table 1 row. CONTRIBUTING.md shows how to add one (also from a plugin module named in
GEN_LIB_PLUGINS, without touching this file).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from . import flows


def _check_latent_dim(latent_dim: int) -> None:
    if not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim={latent_dim!r} must be a positive integer")


def _mixture(logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> MixtureSameFamily:
    """sum_k softmax(logits)_k N(z; loc_k, diag(scale_k^2)): logits (*batch, K), loc and scale (*batch, K, D)."""
    components = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
    return MixtureSameFamily(Categorical(logits=logits, validate_args=False), components, validate_args=False)


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
        return _mixture(self.logits, self.means, scales)


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

    The u_k = sigmoid(v_k) are `n_pseudo` learnable pseudo-images in [0, 1]^D (D = the encoder's
    `input_dim`, 784 for MNIST, unless `input_dim` says otherwise); q is the VAE's own encoder
    (shared, not copied), so the prior moves with the encoder.
    """

    def __init__(self, latent_dim: int, encoder: nn.Module, n_pseudo: int = 16, input_dim: int | None = None):
        super().__init__()
        _check_latent_dim(latent_dim)
        if not isinstance(n_pseudo, int) or n_pseudo < 1:
            raise ValueError(f"n_pseudo={n_pseudo!r} must be a positive integer")
        input_dim = input_dim or getattr(encoder, "input_dim", None)
        if not input_dim:
            raise ValueError("VampPrior needs input_dim: the encoder has no `input_dim` attribute")
        self.latent_dim = latent_dim
        self.encoder = [encoder]  # a list: the encoder's parameters belong to the VAE, not twice to the prior
        self.pseudo_logits = nn.Parameter(0.1 * torch.randn(n_pseudo, input_dim))  # (K, D), u ~ 0.5 at start
        self.logits = nn.Parameter(torch.zeros(n_pseudo))  # (K,)

    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-images u_k in [0, 1], shape (K, D)."""
        return torch.sigmoid(self.pseudo_logits)

    def forward(self) -> Distribution:
        u = self.pseudo_inputs()  # (K, P), or (S, K, P) for stacked seeds (gen_lib.seeds)
        q = self.encoder[0](u.movedim(-2, 0)).base_dist  # batch (K,) or (K, S): the seed axis stays innermost
        loc, scale = q.loc.movedim(0, -2), q.scale.movedim(0, -2)  # (..., K, D)
        return _mixture(self.logits, loc, scale)


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class PriorSpec:
    """One entry of the prior registry (see `register`)."""

    name: str
    factory: Callable[..., nn.Module]  # factory(latent_dim, [encoder=...,] **params) -> the prior module
    label: str  # its name in tables and figures, formatted with its parameters: "MoG ({n_components})"
    params: tuple[str, ...] = ()  # size parameters: keyword arguments of `factory`, profile keys <name>_<param>
    description: str = ""  # a LaTeX phrase for the report, formatted with its parameters
    original: tuple[float, float, float] | None = None  # the original study's Table 1: ELBO mean, std, IWAE

    @property
    def needs_encoder(self) -> bool:
        """Whether the factory takes the VAE's encoder (the VampPrior does)."""
        return "encoder" in inspect.signature(self.factory).parameters

    def defaults(self) -> dict[str, Any]:
        """The factory's own default value of each size parameter."""
        signature = inspect.signature(self.factory).parameters
        return {p: signature[p].default for p in self.params}


REGISTRY: dict[str, PriorSpec] = {}


def register(name: str, factory: Callable[..., nn.Module], label: str, params: tuple[str, ...] = (),
             description: str = "", original: tuple[float, float, float] | None = None) -> PriorSpec:
    """Add the prior `name` to the registry and return its entry.

    `factory(latent_dim, **params)` (plus `encoder=` when it declares that argument) builds the
    module, whose `forward()` returns a `torch.distributions.Distribution` with event shape
    (latent_dim,). Every name in `params` must be a keyword argument of `factory` with a default.
    """
    if not name.isidentifier() or name in REGISTRY:
        raise ValueError(f"prior name {name!r} must be a new identifier; registered: {', '.join(REGISTRY)}")
    signature = inspect.signature(factory).parameters
    bad = [p for p in params if p not in signature or signature[p].default is inspect.Parameter.empty]
    if bad:
        raise ValueError(f"prior {name!r}: parameter(s) {', '.join(bad)} are not keyword arguments with a default "
                         f"of {getattr(factory, '__name__', factory)}")
    REGISTRY[name] = PriorSpec(name, factory, label, tuple(params), description, original)
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered priors, in registration order (the study's four first)."""
    return tuple(REGISTRY)


def spec(name: str) -> PriorSpec:
    """The registry entry of `name`; a clear error lists the registered names."""
    if name not in REGISTRY:
        raise ValueError(f"prior={name!r} is unknown; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def params(name: str, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The size parameters of prior `name`: `cfg["<name>_<param>"]` where the profile sets it, else the
    factory's default (the study's value)."""
    entry = spec(name)
    cfg = cfg or {}
    return {p: cfg.get(f"{name}_{p}", default) for p, default in entry.defaults().items()}


def label(name: str, cfg: Mapping[str, Any] | None = None) -> str:
    """The prior's name in tables and figures, with its sizes under `cfg`: "MoG (16)"."""
    return spec(name).label.format(**params(name, cfg))


def describe(name: str, cfg: Mapping[str, Any] | None = None) -> str:
    """The prior's phrase for the report, with its sizes under `cfg`."""
    return spec(name).description.format(**params(name, cfg))


def select(text: str | None) -> tuple[str, ...]:
    """Priors named in a comma-separated `text` ("gaussian,flow"), in that order; None or "" = all registered."""
    if not text:
        return names()
    chosen = tuple(n.strip() for n in str(text).split(",") if n.strip())
    for n in chosen:
        spec(n)
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"priors={text!r} names a prior twice")
    return chosen


def build_prior(name: str, latent_dim: int = 2, encoder: nn.Module | None = None, **sizes: Any) -> nn.Module:
    """The registered prior `name` (e.g. "gaussian", "mog", "flow", "vamp"; `names()` lists them) in
    `latent_dim` dimensions, with size parameters `sizes` (default: the factory's). A prior whose factory
    takes an encoder (the VampPrior) needs `encoder`."""
    entry = spec(name)
    unknown = sorted(set(sizes) - set(entry.params))
    if unknown:
        raise ValueError(f"prior {name!r} has no parameter(s) {', '.join(unknown)}; its parameters: "
                         f"{', '.join(entry.params) or 'none'}")
    if entry.needs_encoder:
        if encoder is None:
            raise ValueError(f"prior={name!r} needs the VAE's encoder (encoder=None was given)")
        return entry.factory(latent_dim, encoder=encoder, **sizes)
    return entry.factory(latent_dim, **sizes)


register("gaussian", GaussianPrior, "Gaussian", description="a standard Gaussian",
         original=(-135.00, 0.40, -29.40))
register("mog", MoGPrior, "MoG ({n_components})", ("n_components",),
         "a mixture of {n_components} Gaussians with learnable means, scales and weights",
         original=(-134.07, 0.41, -29.12))
register("flow", FlowPrior, "Flow ({n_layers} layers)", ("n_layers", "hidden"),
         "a flow prior of {n_layers} RealNVP affine coupling layers (hidden width {hidden}, alternating masks) on "
         "a Gaussian base", original=(-134.88, 0.66, -27.27))
register("vamp", VampPrior, "VampPrior ({n_pseudo})", ("n_pseudo",),
         "a VampPrior, the mixture of the encoder's posteriors at {n_pseudo} learnable pseudo-images with "
         "learnable weights", original=(-134.00, 0.29, -28.83))
