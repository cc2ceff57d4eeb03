"""What the notebooks compute from a trained VAE: per-image test bounds (`evaluate`), the IWAE bound against
K (`iwae_by_k`), Figure 1's latent plane (`latent_view`, `decoded_plane`) and Table 3's bits/dim
(`dataset_bits_per_dim`). The model and its bounds are `gen_lib.vae`; the quadrature `gen_lib.quadrature`.
"""

from __future__ import annotations

import torch

from .data import dequantized_bits_per_dim
from .quadrature import log_likelihood_quadrature
from .vae import IWAE_CHUNK, VAE

BPD_METHODS = ("iwae", "quadrature")


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
    column = z_1), over the box `extent` = (z1_lo, z1_hi, z2_lo, z2_hi) that holds every encoding and all but
    `tail` % on either side of `n_prior` prior samples (padded by 10 %): the density lies under every point."""
    if vae.latent_dim != 2:
        raise ValueError(f"latent_view draws a 2-D latent; this VAE has latent_dim={vae.latent_dim}")
    dev = vae._device()
    mu = vae.encode(x.to(dev))[0].cpu()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        pz = vae.prior().sample((n_prior,)).cpu()  # the box covers the prior's mass and the encodings
    lo = torch.minimum(mu.double().min(0).values, pz.double().quantile(tail / 100, 0))
    hi = torch.maximum(mu.double().max(0).values, pz.double().quantile(1 - tail / 100, 0))
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
                         method: str = "iwae", chunk: int = 2**16, n_grid: int = 32,
                         quadrature_batch: int = 64) -> torch.Tensor:
    """Per-image bits/dim (N,) of 8-bit `images` (N, *image_shape) in [0, 1] under a continuous-Bernoulli VAE,
    on the flow's scale: `data.dequantized_bits_per_dim` of log p(y), the same y as every model's for the same
    `seed` and `batch_size`.

    method="iwae": log p(y) >= IWAE_K(y) (Burda et al., 2016) with K = `k` importance samples drawn `chunk`
    decoder evaluations at a time, so the result is an upper bound on the bits/dim in expectation (tighter
    as K grows); the draws come from the global RNG seeded by `seed` inside a forked RNG state.
    method="quadrature": the near-exact log p(y) of `log_likelihood_quadrature` on an `n_grid`² grid,
    `quadrature_batch` images per grid evaluation (2-D latent only).
    """

    if getattr(vae.decoder, "likelihood", None) != "continuous_bernoulli":
        raise ValueError(f"bits/dim of dequantized images needs a density on [0, 1]: the decoder's likelihood is "
                         f"{getattr(vae.decoder, 'likelihood', None)!r}; build the VAE with "
                         "likelihood='continuous_bernoulli'")
    if method not in BPD_METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {', '.join(BPD_METHODS)}")
    vae.eval()
    dev, dtype = vae._device(), vae._dtype()

    def log_prob(y: torch.Tensor) -> torch.Tensor:
        y = y.to(dev, dtype)
        if method == "iwae":
            return vae.iwae(y, k, chunk=chunk).double()
        return log_likelihood_quadrature(vae, y, n_grid=n_grid, batch=quadrature_batch).double()

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        return dequantized_bits_per_dim(images, log_prob, seed, batch_size)
