"""Error bounds shared by tests: standard-error multipliers and float round-off bounds."""

import math

import torch
from scipy import stats

Z = 5.0  # Monte-Carlo checks at 5 standard errors: a Gaussian false alarm of 6e-7 per two-sided check


def t_quantile(df: int, z: float = Z) -> float:
    """Student-t quantile with the one-sided tail of z standard normal errors: the multiplier of a
    standard error estimated from df + 1 draws (at df = 5 it is 32 for z = 5, at df = 199 it is 5.2)."""
    return float(stats.t.isf(stats.norm.sf(z), df))


def fid_self_roundoff(features: torch.Tensor) -> float:
    """Float64 round-off bound on |FID(f, f)| for torchmetrics' FID of a feature set (N, d) with itself.

    torchmetrics computes FID = |mu1 - mu2|^2 + Tr(S1 + S2) - 2 sum_i sqrt(eig_i(S1 S2)); with S1 = S2 = S
    (eigenvalues lam_i) it is 0 in exact arithmetic. The product S S and the eigenvalue solver are
    backward stable, so each eigenvalue lam_i^2 moves by at most delta = 4 d u ||S||_F^2 (u = 2^-53),
    its square root by min(sqrt(delta), delta / (2 lam_i)), and the traces by 4 d u Tr S.
    """
    f = features.double()
    s = torch.cov(f.T)
    d, u = s.shape[0], torch.finfo(torch.float64).eps / 2
    delta = 4 * d * u * s.square().sum().item()
    lam = torch.linalg.eigvalsh(s).clamp_min(0)
    roots = torch.minimum(torch.full_like(lam, math.sqrt(delta)), delta / (2 * lam))
    return 2 * roots.sum().item() + 8 * d * u * s.trace().item()
