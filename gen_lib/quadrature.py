"""Near-exact log p(x) = log \\int p(x|z) p(z) dz of a VAE with a 2-D latent, by numerical integration.

`log_likelihood_quadrature` (adaptive local midpoint rule around each posterior; `gen_lib.vae` exports it, as
the public name), `brute_force_log_px` (one global grid, nothing shared with the adaptive rule: the
independent check of it) and `quadrature_convergence` (the estimate against the grid size). `vae` is a
`gen_lib.vae.VAE`: these use only its `encode`-side posterior, decoder and prior, so they sit below it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def log_likelihood_quadrature(vae: nn.Module, x: torch.Tensor, n_grid: int = 32, n_std: float = 8.0,
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


GRID_CHUNK = 1024  # grid points per decoder call (times the images of a batch): bounds the decoder's temporaries


def _log_integrand(vae, p, x, centre, half, u):
    """log p(x|z) + log p(z) on the grid centre + half * u: (b, n*n), and log cell area (b,). The grid is decoded in
    chunks of GRID_CHUNK points (each point's value is computed alone, so the chunking changes no number)."""
    parts = []
    for j in range(0, u.shape[0], GRID_CHUNK):
        z = centre[:, None, :] + half[:, None, :] * u[j:j + GRID_CHUNK]  # (b, chunk, 2)
        zz = z.transpose(0, 1).to(x.dtype)  # (chunk, b, 2): sample-first, as the prior and decoder expect
        parts.append((vae.log_px(zz, x) + p.log_prob(zz)).double().transpose(0, 1))
    return torch.cat(parts, 1), torch.log(4 * half[:, 0] * half[:, 1] / u.shape[0])


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
def brute_force_log_px(vae: nn.Module, x: torch.Tensor, n_grid: int = 1600, half_width: float | None = None,
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
def quadrature_convergence(vae: nn.Module, x: torch.Tensor, grids: tuple[int, ...] = (8, 16, 32, 64, 128),
                           **kwargs) -> dict[int, torch.Tensor]:
    """log p(x) (B,) for each grid size in `grids`: the estimate should stop changing as n grows."""
    return {n: log_likelihood_quadrature(vae, x, n_grid=n, **kwargs) for n in grids}
