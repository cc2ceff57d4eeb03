"""Variational autoencoder with a pluggable prior (Kingma & Welling, 2014), its ELBO,
its IWAE bound (Burda et al., 2016) and a near-exact log p(x) by quadrature for a 2-D latent.

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
from .data import INFO, dequantize
from .flows import bits_per_dim

MNIST_SHAPE = INFO["mnist"].shape  # the study's images, (1, 28, 28): the default where none is given

LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
KL_METHODS = ("auto", "analytic", "mc")
BPD_METHODS = ("iwae", "quadrature")
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


# -- near-exact log p(x) for a 2-D latent ------------------------------------------------------

@torch.no_grad()
def log_likelihood_quadrature(vae: VAE, x: torch.Tensor, n_grid: int = 32, n_std: float = 8.0,
                              n_search: int = 24, edge_tol: float = 1e-9, drop: float = 30.0,
                              max_doublings: int = 8, batch: int = 64, return_info: bool = False):
    """Near-exact log p(x) = log \\int p(x|z) p(z) dz per image (B,), for a 2-D latent.

    Method (adaptive local midpoint rule, in float64 sums): posteriors are narrow (std often
    ~0.04) and sit anywhere, so a global grid would need millions of points. Per image:

    1. *find the mass*: on an `n_search`^2 midpoint grid over the box mu_q +- `n_std` sigma_q
       (encoder mean and std per axis), if the outermost ring of cells holds more than
       `edge_tol` of the integral of f(z) = p(x|z) p(z), double the box and repeat (at most
       `max_doublings` times, else a clear error);
    2. *zoom*: shrink the box to the cells where log f > max log f - `drop` (plus one cell),
       i.e. where f is within e^-30 of its peak, and integrate there on an `n_grid`^2 grid.
       The mass left out is below (cells) * e^-`drop` of the total (negligible).

    The midpoint rule converges fast for a smooth integrand whose mass is inside the box
    (spectrally for Gaussian-like f); `quadrature_convergence` shows it by refining `n_grid`.

    Returns log p(x) (B,) in float64 and, with `return_info`, a dict: `centre` and `half_width` (B, 2) of
    the final box, `log_edge_fraction` (B,) of step 1's box, `doublings` (B,).
    """
    if vae.latent_dim != 2:
        raise ValueError(f"log_likelihood_quadrature integrates over a 2-D latent; this VAE has "
                         f"latent_dim={vae.latent_dim}")
    if n_grid < 4 or n_search < 4:
        raise ValueError(f"n_grid={n_grid}, n_search={n_search} are too coarse; need >= 4")
    x = vae._flat(x)
    parts = [_quadrature_batch(vae, x[i:i + batch], n_grid, n_search, n_std, edge_tol, drop, max_doublings, i)
             for i in range(0, x.shape[0], batch)]
    logp = torch.cat([p[0] for p in parts])  # float64
    if return_info:
        return logp, {"centre": torch.cat([p[4] for p in parts]), "half_width": torch.cat([p[1] for p in parts]),
                      "log_edge_fraction": torch.cat([p[2] for p in parts]),
                      "doublings": torch.cat([p[3] for p in parts])}
    return logp


def _grid(n, device):
    t = (torch.arange(n, device=device, dtype=torch.float64) + 0.5) / n * 2 - 1  # midpoints in (-1, 1)
    return torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)  # (n*n, 2)


def _log_integrand(vae, p, x, centre, half, u):
    """log p(x|z) + log p(z) on the grid centre + half * u: (b, n*n), and log cell area (b,)."""
    z = centre[:, None, :] + half[:, None, :] * u  # (b, n*n, 2)
    zz = z.transpose(0, 1).to(x.dtype)  # (n*n, b, 2): sample-first, as the prior and decoder expect
    f = (vae.log_px(zz, x) + p.log_prob(zz)).double().transpose(0, 1)
    return f, torch.log(4 * half[:, 0] * half[:, 1] / u.shape[0])


def _quadrature_batch(vae, x, n, n_search, n_std, edge_tol, drop, max_doublings, offset):
    dev = x.device
    x = x.to(next(vae.parameters()).dtype)
    q = vae.encoder(x).base_dist
    p = vae.prior()
    centre, half = q.loc.double(), (n_std * q.scale).double()  # (B, 2)
    u = _grid(n_search, dev)
    ring = (u.abs() > 1 - 1.5 / n_search).any(-1)  # (n*n,) outermost cells (midpoints at +-(1 - 1/n))
    f = torch.empty(x.shape[0], u.shape[0], dtype=torch.float64, device=dev)
    log_edge = torch.empty(x.shape[0], dtype=torch.float64, device=dev)
    doublings = torch.zeros(x.shape[0], dtype=torch.long, device=dev)
    todo = torch.arange(x.shape[0], device=dev)
    for attempt in range(max_doublings + 1):  # 1. find the mass
        f[todo], log_cell = _log_integrand(vae, p, x[todo], centre[todo], half[todo], u)
        log_edge[todo] = torch.logsumexp(f[todo][:, ring], 1) - torch.logsumexp(f[todo], 1)
        todo = todo[log_edge[todo] > math.log(edge_tol)]
        if len(todo) == 0:
            break
        if attempt == max_doublings:
            raise RuntimeError(f"quadrature did not contain the mass of image {offset + int(todo[0])} after "
                               f"{max_doublings} doublings of the box (edge fraction "
                               f"{log_edge[todo[0]].exp():.3g}); raise n_std or max_doublings")
        half[todo] *= 2
        doublings[todo] += 1
    # 2. zoom on the cells within e^-drop of the peak, one cell of margin
    keep = f > f.max(1, keepdim=True).values - drop  # (B, n*n)
    cell = 2.0 / n_search
    big = torch.tensor(math.inf, dtype=torch.float64, device=dev)
    lo = torch.where(keep[..., None], u, big).amin(1) - cell  # (B, 2) in the box's units
    hi = torch.where(keep[..., None], u, -big).amax(1) + cell
    centre = centre + half * (lo + hi) / 2
    half = half * (hi - lo) / 2
    f, log_cell = _log_integrand(vae, p, x, centre, half, _grid(n, dev))
    return torch.logsumexp(f, 1) + log_cell, half, log_edge, doublings, centre


@torch.no_grad()
def brute_force_log_px(vae: VAE, x: torch.Tensor, n_grid: int = 1600, half_width: float | None = None,
                       chunk: int = 2**16) -> tuple[float, float]:
    """log p(x) of one image x by the plain midpoint rule on one global n_grid x n_grid grid over
    [-h, h]^2: no search, no zoom, nothing shared with `log_likelihood_quadrature` but the integrand, so
    it checks that method independently (at a cost of n_grid^2 decoder evaluations). h (`half_width`):
    by default the larger of the prior's reach (the largest |z_i| of 10,000 prior samples, times 1.5) and
    the encoder's box |mu_q| + 10 sigma_q. Returns (log p(x) in float64, h)."""
    if vae.latent_dim != 2:
        raise ValueError(f"brute_force_log_px integrates over a 2-D latent; this VAE has latent_dim={vae.latent_dim}")
    x = vae._flat(x)
    if x.shape[0] != 1:
        raise ValueError(f"brute_force_log_px takes one image; got {x.shape[0]}")
    x = x.to(vae._device(), vae._dtype())
    p = vae.prior()
    if half_width is None:
        q = vae.encoder(x).base_dist
        reach = 1.5 * p.sample((10_000,)).abs().max().item()
        half_width = max(reach, (q.loc.abs() + 10 * q.scale).max().item())
    u = _grid(n_grid, x.device) * half_width  # (n^2, 2) midpoints of the global grid
    terms = []
    for i in range(0, u.shape[0], chunk):
        z = u[i:i + chunk, None, :].to(x.dtype)  # (c, 1, 2): sample-first
        terms.append((vae.log_px(z, x) + p.log_prob(z)).double().reshape(-1))
    log_cell = math.log((2 * half_width / n_grid) ** 2)
    return (torch.logsumexp(torch.cat(terms), 0) + log_cell).item(), half_width


@torch.no_grad()
def quadrature_convergence(vae: VAE, x: torch.Tensor, grids: tuple[int, ...] = (8, 16, 32, 64, 128),
                           **kwargs) -> dict[int, torch.Tensor]:
    """log p(x) (B,) for each grid size in `grids`: the estimate should stop changing as n grows."""
    return {n: log_likelihood_quadrature(vae, x, n_grid=n, **kwargs) for n in grids}


@torch.no_grad()
def evaluate(vae: VAE, x: torch.Tensor, k: int, n_quadrature: int = 0, n_grid: int = 32, batch: int = 500,
             seed: int = 0) -> dict[str, torch.Tensor]:
    """Test metrics per image, in nats, in float32 (quadrature in float64), without gradients:
    `elbo` (N,), `iwae` (N,) with K = `k`, and `log_px` (n_quadrature,) by quadrature on the
    first `n_quadrature` images. The draws are seeded by `seed` (reproducible)."""
    vae.eval()
    dev = next(vae.parameters()).device
    torch.manual_seed(seed)
    elbo, iwae = [], []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch].to(dev, torch.float32)
        elbo.append(vae.elbo(xb).cpu())
        iwae.append(vae.iwae(xb, k, chunk=IWAE_CHUNK).cpu())
    out = {"elbo": torch.cat(elbo), "iwae": torch.cat(iwae)}
    if n_quadrature:
        out["log_px"] = log_likelihood_quadrature(vae, x[:n_quadrature].to(dev), n_grid=n_grid).cpu()
    return out


@torch.no_grad()
def iwae_by_k(vae: VAE, x: torch.Tensor, ks: tuple[int, ...], seed: int = 0) -> dict[int, float]:
    """Mean IWAE_K bound over the images x (nats) for each K in `ks`, draws seeded by `seed`: the bound
    rises with K towards log p(x) (Burda et al., 2016, Theorem 1)."""
    vae.eval()
    x = x.to(vae._device(), vae._dtype())
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return {k: vae.iwae(x, k, chunk=IWAE_CHUNK).mean().item() for k in ks}


@torch.no_grad()
def latent_view(vae: VAE, x: torch.Tensor, n_grid: int = 200, n_prior: int = 5000, tail: float = 0.5,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """What Figure 1 shows of a VAE with a 2-D latent: the encoder means `mu` (N, 2) of the images x,
    and log p(z) of the prior on an `n_grid` x `n_grid` grid, `logp` (n_grid, n_grid) (row = z_2,
    column = z_1), over the box `extent` = (z1_lo, z1_hi, z2_lo, z2_hi) that holds all but `tail` % on
    either side of both the encodings and `n_prior` prior samples (padded by 10 %)."""
    if vae.latent_dim != 2:
        raise ValueError(f"latent_view draws a 2-D latent; this VAE has latent_dim={vae.latent_dim}")
    dev = vae._device()
    mu = vae.encode(x.to(dev))[0].cpu()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        pz = vae.prior().sample((n_prior,)).cpu()  # the box covers the prior's mass and the encodings
    lo = torch.minimum(mu.double().quantile(tail / 100, 0), pz.double().quantile(tail / 100, 0))
    hi = torch.maximum(mu.double().quantile(1 - tail / 100, 0), pz.double().quantile(1 - tail / 100, 0))
    pad = 0.1 * (hi - lo)
    lo, hi = (lo - pad).float(), (hi + pad).float()
    g1, g2 = torch.meshgrid(torch.linspace(lo[0], hi[0], n_grid), torch.linspace(lo[1], hi[1], n_grid), indexing="xy")
    grid = torch.stack([g1, g2], -1).reshape(-1, 2).to(dev, vae._dtype())  # (n*n, 2)
    logp = vae.prior().log_prob(grid).cpu().reshape(n_grid, n_grid)
    return {"mu": mu, "logp": logp, "extent": torch.stack([lo[0], hi[0], lo[1], hi[1]])}


@torch.no_grad()
def decoded_plane(vae: VAE, x: torch.Tensor, n: int = 12, tail: float = 2.0) -> torch.Tensor:
    """The decoder's mean on a regular n x n grid over the box holding the encodings of x between the
    `tail` and 100 - `tail` percentiles: images (n * n, *image_shape), row by row from the top (z_2 high)."""
    mu = vae.encode(x.to(vae._device()))[0].cpu().double()
    lo, hi = mu.quantile(tail / 100, 0).float(), mu.quantile(1 - tail / 100, 0).float()
    g1, g2 = torch.meshgrid(torch.linspace(lo[0], hi[0], n), torch.linspace(hi[1], lo[1], n), indexing="xy")
    return vae.decode(torch.stack([g1, g2], -1).reshape(-1, 2).to(vae._device(), vae._dtype())).cpu()


@torch.no_grad()
def dataset_bits_per_dim(vae: VAE, images: torch.Tensor, k: int = 1000, seed: int = 0, batch_size: int = 500,
                         method: str = "iwae", chunk: int = 2**16) -> torch.Tensor:
    """Per-image bits/dim (N,) of 8-bit `images` (N, 1, 28, 28) in [0, 1] under a continuous-Bernoulli VAE,
    on the flow's scale (`gen_lib.flows.bits_per_dim` of log p(y), y dequantized in [0, 1]^784).

    y is dequantized exactly as `gen_lib.flows.dataset_bits_per_dim` does with the same `seed` and
    `batch_size`, so the models score the same y. method="iwae": log p(y) >= IWAE_K(y) (Burda et al.,
    2016) with K = `k` importance samples drawn `chunk` decoder evaluations at a time, so the result
    is an upper bound on the bits/dim in expectation (tighter as K grows); the draws come from the
    global RNG seeded by `seed` inside a forked RNG state. method="quadrature": the near-exact
    log p(y) of `log_likelihood_quadrature` (2-D latent only).
    """

    if getattr(vae.decoder, "likelihood", None) != "continuous_bernoulli":
        raise ValueError(f"bits/dim of dequantized images needs a density on [0, 1]: the decoder's likelihood is "
                         f"{getattr(vae.decoder, 'likelihood', None)!r}; build the VAE with "
                         "likelihood='continuous_bernoulli'")
    if method not in BPD_METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {', '.join(BPD_METHODS)}")
    vae.eval()
    dev, dtype = vae._device(), vae._dtype()
    gen_y = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, images.shape[0], batch_size):
            y = dequantize(images[i:i + batch_size].float().cpu(), generator=gen_y).to(dev, dtype)
            log_p = vae.iwae(y, k, chunk=chunk) if method == "iwae" else log_likelihood_quadrature(vae, y)
            out.append(bits_per_dim(log_p.double(), dim=y[0].numel()).cpu())
    return torch.cat(out)
