"""Variational autoencoder with a pluggable prior (Kingma & Welling, 2014), its ELBO and
its IWAE bound (Burda et al., 2016); the near-exact log p(x) of a 2-D latent is `gen_lib.quadrature`'s
(exported here under the library's public name), what the notebooks compute from a trained VAE `gen_lib.vae_eval`.

Written once for every prior (see `gen_lib.priors`), with z ~ q(z|x):

    ELBO(x)   = E_q[log p(x|z)] - KL(q(z|x) || p(z))
    IWAE_K(x) = logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,   z_k ~ q(z|x)
    log p(x)  = log \\int p(x|z) p(z) dz        (2-D numerical integration)

ELBO <= IWAE_K <= IWAE_{K+1} <= log p(x) in expectation, and IWAE_K -> log p(x) as K grows.
The KL is analytic when `torch.distributions.kl_divergence` knows the pair (Gaussian
prior), otherwise the single-sample Monte-Carlo estimate log q(z|x) - log p(z) at the
same z used for the reconstruction term (MoG, flow and VampPrior).

Shapes: images x are (B, C, H, W) (the dataset's shape, (B, 1, 28, 28) for MNIST) or (B, P)
with P = C * H * W, and are flattened to (B, P); latents z are (B, D) or (K, B, D);
per-example results are (B,), in nats.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import (Bernoulli, ContinuousBernoulli, Distribution, Independent, Normal,
                                 kl_divergence)

from . import priors
from .seeds import Linear
from .data import INFO
from .quadrature import brute_force_log_px, log_likelihood_quadrature, quadrature_convergence  # noqa: F401

MNIST_SHAPE = INFO["mnist"].shape  # the study's images, (1, 28, 28): the default where none is given

LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
KL_METHODS = ("auto", "analytic", "mc")
# What an image "from the VAE" can be, given z: the decoder's mean E[x|z], its parameter (the Bernoulli's
# probabilities; the continuous Bernoulli's lambda, which is not its mean), or a draw x ~ p(x|z), the
# model's actual sample. For the Bernoulli the first two coincide.
OUTPUTS = ("mean", "parameter", "draw")
IWAE_CHUNK = 2**16  # decoder evaluations per chunk of `evaluate`'s IWAE (K_c * B <= IWAE_CHUNK): bounds its memory


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b))  # nn.Linear that also runs stacked seeds (gen_lib.seeds)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """q(z|x) = N(z; mu(x), diag(sigma(x)^2)), an MLP P-512-512-2D (P = 784 for MNIST) with
    sigma = softplus(.) + 1e-5."""

    def __init__(self, latent_dim: int = 2, hidden: int = 512, input_dim: int = math.prod(MNIST_SHAPE)):
        super().__init__()
        self.latent_dim, self.input_dim = latent_dim, input_dim
        self.net = _mlp([input_dim, hidden, hidden, 2 * latent_dim])

    def forward(self, x: torch.Tensor) -> Distribution:
        mu, raw = self.net(x).chunk(2, dim=-1)  # (B, D) each
        std = nn.functional.softplus(raw) + 1e-5
        return Independent(Normal(mu, std, validate_args=False), 1, validate_args=False)


class BernoulliDecoder(nn.Module):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(l_i(z))), an MLP D-512-512-P giving logits l.

    `likelihood="continuous_bernoulli"` gives the continuous Bernoulli of Loaiza-Ganem &
    Cunningham (2019) instead, the proper density for data in [0, 1] (its normaliser is included).
    """

    def __init__(self, latent_dim: int = 2, hidden: int = 512, output_dim: int = math.prod(MNIST_SHAPE),
                 likelihood: str = "bernoulli"):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={likelihood!r} is unknown; choose one of {', '.join(LIKELIHOODS)}")
        self.likelihood = likelihood
        self.net = _mlp([latent_dim, hidden, hidden, output_dim])

    def forward(self, z: torch.Tensor) -> Distribution:
        # at least float32 out of the network under bf16 autocast: log p(x|z) sums 784 terms
        logits = self.net(z)  # (..., P)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        cls = Bernoulli if self.likelihood == "bernoulli" else ContinuousBernoulli
        return Independent(cls(logits=logits, validate_args=False), 1, validate_args=False)


def _at_least_float32(q: Distribution) -> Distribution:
    """The posterior with float32 parameters when the encoder ran under bf16 autocast (Independent(Normal)
    posteriors; any other distribution is returned as it is)."""
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        loc, scale = q.base_dist.loc, q.base_dist.scale
        if loc.dtype in (torch.bfloat16, torch.float16):
            return Independent(Normal(loc.float(), scale.float(), validate_args=False),
                               q.reinterpreted_batch_ndims, validate_args=False)
    return q


class VAE(nn.Module):
    """A VAE `VAE(encoder, decoder, prior)`: encoder(x) -> q(z|x), decoder(z) -> p(x|z),
    prior() -> p(z), all `torch.distributions` objects. `elbo`, `iwae` are per example (B,).
    `image_shape` (C, H, W) is the images' shape (default MNIST's); the encoder reads C * H * W numbers."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module,
                 image_shape: tuple[int, ...] = MNIST_SHAPE):
        super().__init__()
        self.encoder, self.decoder, self.prior = encoder, decoder, prior
        self.latent_dim = encoder.latent_dim
        self.image_shape, self.input_dim = tuple(image_shape), math.prod(image_shape)
        if getattr(encoder, "input_dim", self.input_dim) != self.input_dim:
            raise ValueError(f"the encoder reads {encoder.input_dim} numbers but images of shape {self.image_shape} "
                             f"have {self.input_dim}")

    # -- inputs ---------------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x[0].numel() != self.input_dim:
            shape = ", ".join(map(str, self.image_shape))
            raise ValueError(f"images have shape {tuple(x.shape)}; expected (B, {shape}) or (B, {self.input_dim})")
        x = x.reshape(x.shape[0], -1)
        likelihood = getattr(self.decoder, "likelihood", "bernoulli")
        if likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
            bad = x[(x != 0) & (x != 1)][0].item()
            raise ValueError(f"the Bernoulli decoder needs binary data (0 or 1) but got the value {bad:.4g}; "
                             "binarize first (gen_lib.data.binarize) or use likelihood='continuous_bernoulli'")
        if likelihood == "continuous_bernoulli" and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"the continuous Bernoulli decoder needs data in [0, 1]; got "
                             f"[{x.min().item():.4g}, {x.max().item():.4g}]")
        return x

    # -- bounds ---------------------------------------------------------------------------
    def log_px(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) = `decoder(z).log_prob(x)` for latents z (..., B, D) and flat images x (B, P): (..., B)."""
        return self.decoder(z).log_prob(x)

    def kl_method(self) -> str:
        """'analytic' if torch.distributions has KL(q || p) for this prior, else 'mc'."""
        q = self.encoder(torch.zeros(1, self.input_dim, device=self._device(), dtype=self._dtype()))
        try:
            kl_divergence(q, self.prior())
            return "analytic"
        except NotImplementedError:
            return "mc"

    def _flat_unchecked(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., *image_shape) or (..., P) as (..., P), unchecked: any leading batch dimensions (a stacked
        model's (B, S, P), `gen_lib.seeds`)."""
        n = len(self.image_shape)
        if x.dim() > n and tuple(x.shape[-n:]) == self.image_shape:
            return x.flatten(-n)
        return x if x.shape[-1] == self.input_dim else x.reshape(x.shape[0], -1)

    def elbo(self, x: torch.Tensor, kl: str = "auto", check: bool = True,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """Single-sample ELBO log p(x|z) - KL(q(z|x) || p(z)), z ~ q(z|x) reparameterised, (B,) nats.

        `kl`: "auto" (analytic where torch.distributions has it, else Monte Carlo),
        "analytic" (error if unavailable) or "mc" (log q(z|x) - log p(z) at the same z).
        `check=False` skips the check of the values of x (binary for the Bernoulli decoder, in [0, 1] for the
        continuous one): for a training loop that checked its whole data set once (`check_data`); x may then
        carry more batch dimensions, (..., P) (a stacked model's (B, S, P), `gen_lib.seeds`).
        `noise`: the standard normal draw of the reparameterisation, z = mu + sigma * noise (shape of mu), for a
        caller that draws it from its own generator; None draws it from torch's global generator.
        """
        if kl not in KL_METHODS:
            raise ValueError(f"kl={kl!r} is unknown; choose one of {', '.join(KL_METHODS)}")
        x = self._flat(x) if check else self._flat_unchecked(x)
        q = _at_least_float32(self.encoder(x))
        p = self.prior()  # a VampPrior runs the encoder here: in bf16 under autocast, as the encoder above
        # Under bf16 autocast only the networks run in bf16; z, the prior's density (a flow prior's layers)
        # and the KL stay in float32: they are small, and bf16 there costs casts without gaining speed.
        with torch.autocast(x.device.type, enabled=False):
            if noise is None:
                z = q.rsample()  # (B, D)
            elif isinstance(q, Independent) and isinstance(q.base_dist, Normal):
                z = q.base_dist.loc + q.base_dist.scale * noise
            else:
                raise ValueError(f"noise= needs a Gaussian posterior; this encoder gives {type(q).__name__}")
            kl_value = None
            if kl in ("auto", "analytic"):
                try:
                    kl_value = kl_divergence(q, p)
                except NotImplementedError:
                    if kl == "analytic":
                        raise ValueError(f"no analytic KL between {type(q).__name__} and the prior "
                                         f"{type(self.prior).__name__}; use kl='mc' or 'auto'") from None
            if kl_value is None:
                kl_value = q.log_prob(z) - p.log_prob(z)
        return self.log_px(z, x) - kl_value  # (B,)

    def loss(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Mean negative ELBO over the batch (nats per image): the training objective for `fit`.
        `check=False`: see `elbo`."""
        return -self.elbo(x, check=check).mean()

    def check_data(self, x: torch.Tensor) -> None:
        """Raise the clear error of `elbo` if any image of the data set x is not what the decoder models."""
        self._flat(x)

    def log_weights(self, x: torch.Tensor, z: torch.Tensor, q: Distribution | None = None,
                    p: Distribution | None = None) -> torch.Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x) for x (B, P) flat and z (K, B, D) -> (K, B)."""
        q = self.encoder(x) if q is None else q
        p = self.prior() if p is None else p
        return self.log_px(z, x) + p.log_prob(z) - q.log_prob(z)

    def iwae(self, x: torch.Tensor, k: int, chunk: int = 2**18) -> torch.Tensor:
        """IWAE bound logsumexp_k log w_k - log K with K samples from q(z|x), (B,) nats.

        The K samples are drawn in chunks of about `chunk` decoder evaluations (K_c * B <= chunk)
        and combined by a running logsumexp, so K = 5000 fits in memory. Call under
        `torch.no_grad()` for evaluation.
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be an integer >= 1 (number of importance samples)")
        x = self._flat(x)
        q, p = self.encoder(x), self.prior()
        per = max(1, min(k, chunk // x.shape[0]))  # samples per chunk
        total = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
        done = 0
        while done < k:
            m = min(per, k - done)
            z = q.rsample((m,))  # (m, B, D)
            total = torch.logaddexp(total, torch.logsumexp(self.log_weights(x, z, q, p), dim=0))
            done += m
        return total - math.log(k)

    # -- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample_images(self, n: int, generator: torch.Generator | None = None, output: str = "mean") -> torch.Tensor:
        """n images (n, *image_shape) in [0, 1]: z ~ p(z), then `output` of p(x|z) (`OUTPUTS`): "mean" E[x|z]
        (the default; for the continuous Bernoulli its mean, not its parameter lambda), "parameter" (the
        Bernoulli's probabilities; the continuous Bernoulli's lambda) or "draw" x ~ p(x|z). The same
        `generator` state gives the same z for every `output`, so the three can be compared image by image."""
        _check_output(output)
        if generator is not None:  # torch.distributions has no generator argument: seed the global RNG from it
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        z = self.prior().sample((n,))  # (n, D)
        return self.decode(z, output=output)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, output: str = "mean") -> torch.Tensor:
        """Images (n, *image_shape) in [0, 1] from latents z (n, D): the decoder's `output` (`OUTPUTS`)."""
        _check_output(output)
        px = self.decoder(z).base_dist
        x = {"mean": lambda: px.mean, "parameter": lambda: px.probs, "draw": px.sample}[output]()
        return x.clamp(0, 1).reshape(-1, *self.image_shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and standard deviations (B, D), (B, D)."""
        q = self.encoder(self._flat(x)).base_dist
        return q.loc, q.scale

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r} is unknown; choose one of {', '.join(OUTPUTS)}")


def build_vae(prior: str, likelihood: str = "bernoulli", latent_dim: int = 2, hidden: int = 512, *,
              image_shape: tuple[int, ...] = MNIST_SHAPE, prior_params: dict | None = None) -> VAE:
    """The study's VAE: MLP encoder/decoder P-`hidden`-`hidden`-`latent_dim` (ReLU; P = 784 for MNIST's
    `image_shape`), a Gaussian encoder, a Bernoulli (binarized data) or continuous Bernoulli ([0, 1] data)
    decoder, and the registered prior `prior` ("gaussian", "mog", "flow", "vamp", ...: `priors.names()`)
    with size parameters `prior_params` (default: the prior's own)."""
    priors.spec(prior)
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood={likelihood!r} is unknown; choose one of {', '.join(LIKELIHOODS)}")
    dim = math.prod(image_shape)
    encoder = GaussianEncoder(latent_dim, hidden, input_dim=dim)
    decoder = BernoulliDecoder(latent_dim, hidden, output_dim=dim, likelihood=likelihood)
    prior_module = priors.build_prior(prior, latent_dim, encoder=encoder, **(prior_params or {}))
    return VAE(encoder, decoder, prior_module, image_shape=image_shape)
