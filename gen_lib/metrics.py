"""Sample-quality metrics: FID, KID and precision/recall in a feature space.

Every metric compares a set of real images with a set of generated ones through a
feature map phi: images (N, C, H, W) in [0, 1] -> (N, d) (`gen_lib.features`). The feature
network runs once per set; FID, KID and precision/recall are then pure functions of the two
feature matrices (so the FID-vs-N curve of a notebook costs no extra network pass).

- FID (Heusel et al., 2017): with means mu and covariances S of the two feature sets,

      FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2}),

  computed in float64 with (n − 1) covariances. FID is biased
  upwards at small N (the covariance estimate's noise adds to the trace), which is
  why Table 2 states N and carries a real-data floor.
- KID (Bińkowski et al., 2018): the unbiased estimate of the squared MMD with the
  kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets (mean and std), in
  float64. Unbiased: about 0 for two
  samples of one distribution, at any N.
- Precision and recall (Kynkäänniemi et al., 2019): each point of a set gets the
  radius of its k-th nearest neighbour within the set; precision is the fraction of
  generated points inside some real point's ball, recall the fraction of real
  points inside some generated point's ball.

One implementation per metric: the weighted forms (`fid_weighted`, `kid_weighted`, `KnnBalls`, at the
end) that the resampled replicates of `gen_lib.intervals` need, with unit weights for the point values;
the tests hold them against torchmetrics, scipy and brute-force computations.

`METRICS` is the registry that the bootstrap intervals (`gen_lib.intervals`) and Table 2's columns
(`gen_lib.report.quality`) read: a metric added there is scored, bootstrapped and tabulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch

from .features import FeatureMap, check_image_shape, extract, feature_map


def min_samples(d: int) -> int:
    """Fewest samples per set for a stable d x d covariance: 2d (rank d needs d + 1)."""
    return 2 * d


def check_features(real: torch.Tensor, fake: torch.Tensor, need_cov: bool = True) -> None:
    """A clear error unless both are finite (N, d) feature matrices of one d, with enough rows for a covariance."""
    for name, f in (("real", real), ("fake", fake)):
        if f.dim() != 2:
            raise ValueError(f"{name} features have shape {tuple(f.shape)}; expected (N, d)")
        if not torch.isfinite(f).all():
            raise ValueError(f"{name} features contain NaN or inf")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real d={real.shape[1]}, fake d={fake.shape[1]}")
    d = real.shape[1]
    if need_cov and min(len(real), len(fake)) < min_samples(d):
        raise ValueError(f"{len(real)} real and {len(fake)} fake samples are too few for a stable {d}x{d} "
                         f"feature covariance; FID needs at least {min_samples(d)} (2d) per set")


def _ones(n: int) -> torch.Tensor:
    return torch.ones(1, n, dtype=torch.float64)  # one "replicate" of unit weights: the sets themselves


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between feature sets real (N, d) and fake (M, d), in float64 with (n − 1) covariances:
    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})  (Heusel et al., 2017)."""
    check_features(real, fake)
    return fid_weighted(real.double().cpu(), _ones(len(real)), fake.double().cpu(), _ones(len(fake)))[0].item()


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subset_size: int = 1000, subsets: int = 100,
                      seed: int = 0) -> tuple[float, float]:
    """KID (mean, population std over `subsets` random subsets of min(subset_size, N/2) samples of each set),
    float64: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (Bińkowski et al., 2018), as torchmetrics'
    `KernelInceptionDistance` reports it; subsets drawn by a generator seeded with `seed`."""
    check_features(real, fake, need_cov=False)
    size = min(subset_size, len(real) // 2, len(fake) // 2)
    if size < 2:
        raise ValueError(f"KID needs at least 4 samples per set; got {len(real)} real and {len(fake)} fake")
    xr, xf, g = real.double().cpu(), fake.double().cpu(), torch.Generator().manual_seed(seed)
    values = torch.cat([kid_weighted(xr[torch.randperm(len(xr), generator=g)[:size]], _ones(size),
                                      xf[torch.randperm(len(xf), generator=g)[:size]], _ones(size), 1024)
                        for _ in range(subsets)])
    return values.mean().item(), values.std(unbiased=False).item()


def fid_sizes(d: int, n_max: int, candidates: tuple[int, ...] = (64, 128, 256, 500, 1000, 2000, 5000, 10000)
              ) -> list[int]:
    """The set sizes N of an FID-vs-N curve: the `candidates` from `min_samples(d)` (a stable covariance) to `n_max`."""
    return [n for n in candidates if min_samples(d) <= n <= n_max]


def fid_vs_n(reference: torch.Tensor, features: torch.Tensor, sizes: list[int], repeats: int = 3,
             seed: int = 1000) -> dict[int, tuple[float, float]]:
    """FID between n random rows of `reference` (N, d) and n random rows of `features` (M, d), for each n in
    `sizes`: (mean, std) over `repeats` draws (one draw when n is all of `reference`); draw r is seeded by
    `seed + r`. FID's expectation falls roughly like 1/n even for two samples of one distribution: the curve
    shows how much a small N inflates it."""
    out = {}
    for n in sizes:
        values = []
        for r in range(repeats if n < len(reference) else 1):
            g = torch.Generator().manual_seed(seed + r)
            values.append(fid_from_features(reference[torch.randperm(len(reference), generator=g)[:n]],
                                            features[torch.randperm(len(features), generator=g)[:n]]))
        v = torch.tensor(values, dtype=torch.float64)
        out[n] = (v.mean().item(), v.std(unbiased=False).item())
    return out


def fid_disjoint(real: torch.Tensor, fake: torch.Tensor, n: int, max_subsets: int = 8) -> float:
    """Mean FID over up to `max_subsets` disjoint pairs of n consecutive rows of real and fake (N, d): FID at a
    small N such as the original study's 256."""
    starts = range(0, min(len(real), len(fake)) - n + 1, n)
    values = [fid_from_features(real[i:i + n], fake[i:i + n]) for i in list(starts)[:max_subsets]]
    if not values:
        raise ValueError(f"n={n} is larger than the sets ({len(real)}, {len(fake)})")
    return sum(values) / len(values)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of fake (M, d) against real (N, d).

    precision = mean_g 1[exists r: ||g - r|| <= NN_k(r)],  recall = mean_r 1[exists g: ||r - g|| <= NN_k(g)],
    with NN_k(x) the distance from x to its k-th nearest neighbour in its own set.
    """
    check_features(real, fake, need_cov=False)
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k={k} needs 1 <= k < the smaller set's size ({min(len(real), len(fake))})")
    real, fake = real.double(), fake.double()  # exact self-distances of 0: a set covers itself
    precision = KnnBalls(real, fake, k, chunk).covered_fraction(_ones(len(real)), _ones(len(fake)))[0].item()
    recall = KnnBalls(fake, real, k, chunk).covered_fraction(_ones(len(fake)), _ones(len(real)))[0].item()
    return precision, recall


def quality_from_features(real: torch.Tensor, fake: torch.Tensor, k: int = 3, kid_subset_size: int = 1000,
                          kid_subsets: int = 100, seed: int = 0) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of two feature sets (N, d) and (M, d)."""
    check_features(real, fake)  # before any work: too few samples for the covariance fails at once
    kid_mean, kid_std = kid_from_features(real, fake, kid_subset_size, kid_subsets, seed)
    precision, recall = precision_recall(real, fake, k)
    return {"fid": fid_from_features(real, fake), "kid_mean": kid_mean, "kid_std": kid_std,
            "precision": precision, "recall": recall, "n_real": len(real), "n_fake": len(fake)}


def check_images(real: torch.Tensor, fake: torch.Tensor) -> None:
    """A clear error unless both are float images (N, C, H, W) in [0, 1] of one per-image shape."""
    for name, x in (("real", real), ("fake", fake)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} images must be a tensor (N, C, H, W); got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} images have dtype {x.dtype}; expected float images in [0, 1]")
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1 or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} images lie in [{lo:.3g}, {hi:.3g}]; expected [0, 1] "
                             "(samples in [-1, 1] go through gen_lib.data.from_signed first)")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real images have shape {tuple(real.shape[1:])} and fake {tuple(fake.shape[1:])}; "
                         "they must match")


def sample_quality(real: torch.Tensor, fake: torch.Tensor, features: Union[str, FeatureMap] = "mnist", *,
                   profile: str = "default", k: int = 3, kid_subset_size: int = 1000, kid_subsets: int = 100,
                   seed: int = 0) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of generated images `fake` against `real`.

    real, fake: float images (N, C, H, W) and (M, C, H, W) in [0, 1]. `features`: a registered name
    (`gen_lib.features.FEATURES`: "mnist" / "fashion", the classifier 04_quality trained under `profile`,
    registered by the study layer, with a clear error saying how to train it when missing; "inception",
    only with its weights on disk) or a callable images -> (N, d). Each set needs at least 2d images.
    Returns {"fid", "kid_mean", "kid_std", "precision", "recall", "n_real", "n_fake"}.
    """
    check_images(real, fake)
    check_image_shape(features, real)
    phi = feature_map(features, profile)
    f_real, f_fake = extract(phi, real), extract(phi, fake)
    return quality_from_features(f_real, f_fake, k=k, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                                 seed=seed)


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, k: int = 3,
                       chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest reference images of each query in pixel space (Euclidean): distances and indices (Q, k).

    Used to show that samples are not copies of training images (a copy sits at distance ~0).
    """
    if queries.shape[1:] != reference.shape[1:]:
        raise ValueError(f"queries have shape {tuple(queries.shape[1:])} and reference {tuple(reference.shape[1:])}")
    ref = reference.flatten(1).float()  # (R, P)
    dists, idx = [], []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i:i + chunk].flatten(1).float(), ref)  # (c, R)
        v, j = d.topk(k, dim=1, largest=False)
        dists.append(v)
        idx.append(j)
    return torch.cat(dists), torch.cat(idx)


# ---------------------------------------------------------------- weighted forms
# Unit weights give the point values above; bootstrap counts or 0/1 half-samples give the replicates of
# gen_lib.intervals (Metric.resampling says which).
def fid_weighted(xr: torch.Tensor, wr: torch.Tensor, xf: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    """FID (R,) of the weighted sets (counts w (R, n), (R, m)), with torchmetrics' (n − 1) covariance."""
    def moments(x, w):
        n = w[0].sum()
        mean = w @ x / n  # (R, d)
        second = torch.stack([x.T @ (x * wi[:, None]) for wi in w])  # (R, d, d)
        return mean, (second - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)

    (mr, sr), (mf, sf) = moments(xr, wr), moments(xf, wf)
    # Tr (S_r S_f)^{1/2} = Σ √λ_i(S_r^{1/2} S_f S_r^{1/2}): a symmetric PSD matrix with the same eigenvalues
    lam, vec = torch.linalg.eigh(sr)
    root = vec @ torch.diag_embed(lam.clamp_min(0).sqrt()) @ vec.transpose(1, 2)
    cross = torch.linalg.eigvalsh(root @ sf @ root).clamp_min(0).sqrt().sum(1)
    fid = (mr - mf).pow(2).sum(1) + sr.diagonal(dim1=1, dim2=2).sum(1) + sf.diagonal(dim1=1, dim2=2).sum(1) - 2 * cross
    return fid.clamp_min(0)


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3  # KID's polynomial kernel (Bińkowski et al., 2018)


def _quadratic_forms(x: torch.Tensor, y: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, block: int) -> torch.Tensor:
    """w_r^T K(x, y) v_r for every replicate r: (R,), the kernel matrix built block by block, never whole."""
    out = torch.zeros(len(wx), dtype=torch.float64)
    for i in range(0, len(x), block):
        kv = _kernel(x[i:i + block], y) @ wy.T  # (b, R)
        out += (wx[:, i:i + block].T * kv).sum(0)
    return out


def kid_weighted(xr: torch.Tensor, wr: torch.Tensor, xf: torch.Tensor, wf: torch.Tensor, block: int) -> torch.Tensor:
    """Unbiased MMD² (R,) with the cubic kernel, all pairs, of the weighted sets.

    Within a set, pairs of copies of one point are left out (they would add the self-similarity
    k(x, x) and push every replicate up by about (E k(x, x) − E k(x, x'))/n), so the within-set
    mean is Σ_{i≠j} w_i w_j k_ij / (n² − Σ w_i²); with unit weights it is the U-statistic.
    """
    def within(x, w):
        diag = ((x * x).sum(1) / x.shape[1] + 1) ** 3  # k(x_i, x_i) (n,)
        q = _quadratic_forms(x, x, w, w, block)
        n2 = w.sum(1) ** 2
        return (q - (w * w) @ diag) / (n2 - (w * w).sum(1))

    cross = _quadratic_forms(xr, xf, wr, wf, block) / (wr.sum(1) * wf.sum(1))
    return within(xr, wr) + within(xf, wf) - 2 * cross


class KnnBalls:
    """The k-NN balls of a set x (n, d) for resampled replicates: each point's `depth` nearest other
    points, and every query point within reach of some ball (the candidates for coverage).

    In a replicate (weights w: unit weights for the point value, 0/1 for the half-samples of
    `gen_lib.intervals`), the radius of point i is the distance to its k-th nearest *drawn* other point,
    read from its neighbour list; a query is covered when it lies within the radius of a drawn centre.
    """

    def __init__(self, x: torch.Tensor, queries: torch.Tensor, k: int, chunk: int):
        self.k, n = k, len(x)
        self.depth = min(n - 1, 10 * k + 10)  # P(a half-sample draws fewer than k of them) < 1e-9
        dist, idx = [], []
        for i in range(0, n, chunk):
            d = torch.cdist(x[i:i + chunk], x)  # (c, n)
            d[torch.arange(len(d)), torch.arange(i, i + len(d))] = math.inf  # not its own neighbour
            v, j = d.topk(self.depth, dim=1, largest=False)  # sorted ascending
            dist.append(v)
            idx.append(j)
        self.dist, self.idx = torch.cat(dist), torch.cat(idx)  # (n, depth)
        reach = self.dist[:, -1]  # the largest radius a replicate can give each centre
        q_idx, c_idx, q_dist = [], [], []
        for i in range(0, len(queries), chunk):
            d = torch.cdist(queries[i:i + chunk], x)  # (c, n)
            q, c = (d <= reach[None, :]).nonzero(as_tuple=True)
            q_idx.append(q + i)
            c_idx.append(c)
            q_dist.append(d[q, c])
        self.q_idx, self.c_idx, self.q_dist = torch.cat(q_idx), torch.cat(c_idx), torch.cat(q_dist)
        self.n_queries = len(queries)

    def covered_fraction(self, w_centres: torch.Tensor, w_queries: torch.Tensor) -> torch.Tensor:
        """Weighted share of queries inside some drawn ball, per replicate: (R,)."""
        out = torch.empty(len(w_centres), dtype=torch.float64)
        for r, (wc, wq) in enumerate(zip(w_centres, w_queries)):
            drawn = wc[self.idx] > 0  # (n, depth)
            enough = drawn.cumsum(1) >= self.k  # (n, depth)
            pos = torch.where(enough[:, -1], enough.int().argmax(1), self.depth - 1)  # k-th drawn (else the last)
            radius = self.dist.gather(1, pos[:, None]).squeeze(1)  # (n,)
            hit = (wc[self.c_idx] > 0) & (self.q_dist <= radius[self.c_idx])
            covered = torch.zeros(self.n_queries, dtype=torch.float64).index_put_((self.q_idx,), hit.double(),
                                                                                  accumulate=True) > 0
            out[r] = (wq * covered).sum() / wq.sum()
        return out


@dataclass(frozen=True)
class Metric:
    """A sample-quality metric in its weighted form: `weighted(xr, wr, xf, wf, k=..., chunk=...)` -> (R,), its value
    for each row of weights wr (R, N) on the real features xr (N, d) and wf (R, M) on the generated xf (M, d)."""

    weighted: Callable[..., torch.Tensor]
    range: tuple[float, float]  # the interval's bounds are clipped to it
    digits: int  # decimals in the report's tables
    column: str  # Table 2's column heading
    # the replicates of its interval (gen_lib.intervals.RESAMPLING): "bootstrap" counts, or "halves", random halves
    # of each set without duplicates (for the k-NN metrics, whose radii duplicates would shrink)
    resampling: str = "bootstrap"


METRICS: dict[str, Metric] = {
    "fid": Metric(lambda xr, wr, xf, wf, **_: fid_weighted(xr, wr, xf, wf), (0.0, math.inf), 2,
                  "FID, bias-corr. [95 %]"),
    "kid": Metric(lambda xr, wr, xf, wf, chunk, **_: kid_weighted(xr, wr, xf, wf, chunk), (-math.inf, math.inf), 4,
                  "KID [95 %]"),
    "precision": Metric(lambda xr, wr, xf, wf, k, chunk: KnnBalls(xr, xf, k, chunk).covered_fraction(wr, wf),
                        (0.0, 1.0), 3, "precision [95 %]", "halves"),
    "recall": Metric(lambda xr, wr, xf, wf, k, chunk: KnnBalls(xf, xr, k, chunk).covered_fraction(wf, wr),
                     (0.0, 1.0), 3, "recall [95 %]", "halves"),
}
