"""Uncertainty of the sample-quality metrics: a resampling interval on FID, KID, precision and recall.

`sample_quality_intervals` / `quality_intervals_from_features` give each metric of `gen_lib.metrics` an
interval over both evaluated sets: the features are computed once, and each replicate reweights them in
the metrics' weighted forms. FID and KID: bootstrap counts, the basic bootstrap by default, which removes
FID's small-sample bias to first order. Precision and recall: random halves of each set, drawn without
replacement (see `quality_intervals_from_features`), because a bootstrap resample's duplicates shift every
replicate's k-NN radii the same way. (A Student-t interval on the mean of per-image values such as
bits/dim is `gen_lib.stats.mean_ci`.)
"""

from __future__ import annotations

from typing import Union

import torch

from .features import FeatureMap, check_image_shape, extract, feature_map
from .metrics import METRICS, check_features, check_images

INTERVALS = ("basic", "percentile")
RESAMPLING = ("bootstrap", "halves")  # the values of metrics.Metric.resampling


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")


def _weights(n: int, n_boot: int, gen: torch.Generator) -> torch.Tensor:
    """Bootstrap counts (R, n): how often each point is drawn in each of R resamples of size n."""
    idx = torch.randint(n, (n_boot, n), generator=gen)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n_boot, n, dtype=torch.float64))


def _halves(n: int, n_boot: int, gen: torch.Generator) -> torch.Tensor:
    """Half-samples (R, n): weight 1 on a random ⌊n/2⌋ of the n points (drawn without replacement), 0 elsewhere."""
    keep = torch.rand(n_boot, n, generator=gen).argsort(1)[:, : n // 2]
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_(1, keep, 1.0)


def _with_estimate(w: torch.Tensor) -> torch.Tensor:
    """Row 0 unit weights (the estimate itself), rows 1..R the replicates' weights."""
    return torch.cat([torch.ones(1, w.shape[1], dtype=torch.float64), w])


def _ends(est: float, boot: torch.Tensor, level: float, interval: str, resampling: str) -> tuple[float, float]:
    """The interval's ends from the replicates `boot` (R,) of a metric whose estimate is `est`
    (see `quality_intervals_from_features`)."""
    q = torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2], dtype=torch.float64)
    lo, mid, hi = torch.quantile(boot, q).tolist()
    if resampling == "halves":  # the half-samples' deviations from their median, placed around the estimate
        lo, hi = est + lo - mid, est + hi - mid
    return (2 * est - hi, 2 * est - lo) if interval == "basic" else (lo, hi)


def quality_intervals_from_features(real: torch.Tensor, fake: torch.Tensor, n_boot: int = 200, level: float = 0.95,
                                    seed: int = 0, k: int = 3, interval: str = "basic",
                                    metrics: tuple[str, ...] | None = None, chunk: int = 1024,
                                    replicates: bool = False) -> dict:
    """FID, KID, precision and recall of feature sets real (N, d) and fake (M, d), each with an interval.

    Resampling of both evaluated sets: each of `n_boot` replicates reweights the N real and M fake
    feature vectors and recomputes every metric from the features (computed once; a replicate costs
    only the statistics: weighted means and covariances, kernel sums built block by block, and k-NN
    radii read from precomputed neighbour lists). FID and KID: bootstrap resamples (N and M drawn with
    replacement); precision and recall: half-samples (below). The reference's draws depend only on
    `seed` and N, so rows scored against one reference with one seed share them.

    - FID as `metrics.fid_from_features` (float64, (n − 1) covariances): the same formula, weighted.
    - KID as the unbiased MMD² over *all* pairs, (x.y/d + 1)^3 kernel: the estimator that
      `metrics.kid_from_features` averages over random subsets, with the same expectation and less noise.
      Within a set, a replicate leaves out pairs of copies of one point (see `metrics.kid_weighted`).
    - precision and recall as `metrics.precision_recall`, resampled by half-samples: each replicate keeps a random
      ⌊N/2⌋ real and ⌊M/2⌋ fake points, drawn without replacement, and recomputes every k-NN radius among the kept
      points. A bootstrap resample holds about 0.63 N distinct points: the radii of every replicate grow the same
      way, the replicates sit off the estimate by more than their spread, and a basic or percentile interval can
      then miss the estimate itself; no re-centring of bootstrap quantiles (BCa included) removes a shift shared
      by all replicates. A half-sample has no duplicates; its radii are those of a smaller set, so the replicates
      are used only through their deviations from their own median, placed around the estimate: [θ̂ + q_lo − q_½,
      θ̂ + q_hi − q_½] ("percentile") or its reflection [θ̂ − (q_hi − q_½), θ̂ − (q_lo − q_½)] ("basic"). For a
      mean, a half-sample's deviation from the whole set's value has the whole set's sampling variance (the
      finite-population factor 1 − 1/2 offsets the halved size), so no rescaling is needed (the delete-d jackknife
      with d = N/2 of Shao and Wu, 1989, consistent for non-smooth statistics). The interval is for the centre of
      the metric's sampling distribution at these N and M (k-NN precision and recall have no size-free value at a
      fixed k), and it always contains θ̂ (q_lo ≤ q_½ ≤ q_hi). m_bias is then the half-size shift, not a bias of
      θ̂.

    `interval` (FID, KID): "basic" (default) returns [2θ̂ − q_{(1+level)/2}, 2θ̂ − q_{(1−level)/2}] of the
    replicates θ*, "percentile" returns [q_{(1−level)/2}, q_{(1+level)/2}]. FID is biased upwards
    by the noise of the covariance estimates (about d/N); a resample, with its duplicates, is a
    noisier set of about 0.63 N distinct points, so the replicates sit higher again by about that
    bias. The percentile interval therefore lies about one bias above θ̂ (two above the true FID);
    the basic interval reflects the replicates' deviations around θ̂, which removes the bias to
    first order: it is the interval for the FID of the two distributions (N → ∞). When the bias is
    larger than the spread (two nearly equal distributions), it lies below θ̂, as it should. Bounds
    are clipped to each metric's range (FID ≥ 0, precision and recall in [0, 1]); KID is not.

    Returns a flat dict: for each metric m in `metrics`, m (the estimate on the given sets),
    m_low, m_high, m_se (std of the replicates) and m_bias (their mean − the estimate); and
    n_real, n_fake, n_boot, level, interval. With `replicates`, also m_replicates (the R replicates, float64) and
    seed: what `paired` needs to compare two rows scored against the same reference.
    """
    metrics = tuple(METRICS) if metrics is None else metrics
    check_features(real, fake, need_cov="fid" in metrics)
    _check_level(level)
    if interval not in INTERVALS:
        raise ValueError(f"interval={interval!r} is unknown; choose one of {', '.join(INTERVALS)}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics={metrics!r}: choose one or more of {', '.join(METRICS)}")
    if not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot={n_boot!r} must be an integer >= 2 (200 or more for a 95 % interval)")
    if ("precision" in metrics or "recall" in metrics) and not 1 <= k < min(len(real), len(fake)) // 2:
        raise ValueError(f"k={k} needs 1 <= k < half the smaller set's size ({min(len(real), len(fake)) // 2}): "
                         "the intervals' half-samples")
    xr, xf = real.double().cpu(), fake.double().cpu()
    gen, gen_halves = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    wr, wf = _weights(len(xr), n_boot, gen), _weights(len(xf), n_boot, gen)  # (R, N), (R, M)
    hr, hf = _halves(len(xr), n_boot, gen_halves), _halves(len(xf), n_boot, gen_halves)
    draws = {"bootstrap": (wr, wf), "halves": (hr, hf)}
    values = {}
    for name in metrics:
        w_real, w_fake = (_with_estimate(w) for w in draws[METRICS[name].resampling])
        values[name] = METRICS[name].weighted(xr, w_real, xf, w_fake, k=k, chunk=chunk)

    out: dict = {}
    for name, v in values.items():
        est, boot = v[0].item(), v[1:]
        lo, hi = _ends(est, boot, level, interval, METRICS[name].resampling)
        floor, ceil = METRICS[name].range
        out[name] = est
        out[f"{name}_low"], out[f"{name}_high"] = max(lo, floor), min(hi, ceil)
        out[f"{name}_se"], out[f"{name}_bias"] = boot.std().item(), boot.mean().item() - est
    out.update(n_real=len(xr), n_fake=len(xf), n_boot=n_boot, level=level, interval=interval)
    if replicates:  # the reference's weights wr depend only on (seed, N, n_boot): shared by every row so scored
        out.update({f"{name}_replicates": v[1:] for name, v in values.items()}, seed=seed)
    return out


def paired(a: dict, b: dict, metric: str = "fid", level: float = 0.95) -> dict[str, float]:
    """The difference a − b of one metric between two rows scored against the same reference features with the
    same seed and sizes (`quality_intervals_from_features(..., replicates=True)`), by the paired bootstrap.

    Both rows' replicates reweight the reference with the same bootstrap counts, so the replicates of the
    difference, d* = θ*_a − θ*_b, carry the reference's noise once, not twice as two marginal intervals do.
    Returns {"raw": d̂, "mean": 2 d̂ − mean(d*) (bias-corrected, as the table's FID), "low", "high": the basic
    interval, "p": the two-sided bootstrap p-value of d = 0}, p = min(1, 2 (1 + #{d* − d̂ beyond d̂}) / (R + 1))
    from the centred replicates (never 0; below α exactly when the basic 1 − α interval excludes 0).
    """
    _check_level(level)
    key = f"{metric}_replicates"
    if key not in a or key not in b:
        raise ValueError(f"paired needs {key}: score both rows with replicates=True")
    same = ("n_real", "n_fake", "n_boot", "seed")
    if any(a[s] != b[s] for s in same):
        raise ValueError(f"paired needs rows scored alike ({', '.join(same)}); got "
                         f"{[a[s] for s in same]} and {[b[s] for s in same]}")
    est, boot = a[metric] - b[metric], a[key] - b[key]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(boot.double(), q).tolist()
    beyond = int(((boot - est) >= abs(est)).sum()) if est >= 0 else int(((boot - est) <= -abs(est)).sum())
    return {"raw": est, "mean": 2 * est - boot.mean().item(), "low": 2 * est - hi, "high": 2 * est - lo,
            "p": min(1.0, 2 * (1 + beyond) / (len(boot) + 1))}


def sample_quality_intervals(real: torch.Tensor, fake: torch.Tensor, features: Union[str, FeatureMap] = "mnist", *,
                             profile: str = "default", n_boot: int = 200, level: float = 0.95, seed: int = 0,
                             k: int = 3, interval: str = "basic",
                             metrics: tuple[str, ...] | None = None) -> dict:
    """`metrics.sample_quality` with a bootstrap interval on every metric: images (N, C, H, W) and (M, C, H, W)
    in [0, 1], features computed once, then `quality_intervals_from_features` (see there for the
    interval and why it is the basic bootstrap by default)."""
    check_images(real, fake)
    check_image_shape(features, real)
    phi = feature_map(features, profile)
    return quality_intervals_from_features(extract(phi, real), extract(phi, fake), n_boot=n_boot, level=level,
                                           seed=seed, k=k, interval=interval, metrics=metrics)
