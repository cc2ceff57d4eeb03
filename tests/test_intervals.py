"""Contracts of the uncertainty helpers: gen_lib.intervals' bootstrap intervals on FID, KID, precision
and recall against Gaussian feature sets whose true FID and KID are known in closed form, and
`stats.mean_ci` (float64, fixed seeds). Coverage tolerances are binomial standard errors over the repeats."""

import math
import statistics

import pytest
import torch

from _bounds import Z, t_quantile
from gen_lib import intervals, metrics, stats
from test_metrics import _fid_scipy, _precision_recall_brute

D = 8
A = torch.eye(D, dtype=torch.float64) + 0.3 * torch.randn(D, D, generator=torch.Generator().manual_seed(99),
                                                          dtype=torch.float64)


def _sets(n, seed, scale=1.15, shift=0.15):
    """real = z A (covariance AᵀA), fake = scale · z A + shift: two Gaussians with known FID and KID."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, D, generator=g, dtype=torch.float64) @ A
    fake = torch.randn(n, D, generator=g, dtype=torch.float64) @ A * scale + shift
    return real, fake


def _true_fid(scale, shift):
    # S_f = scale² S_r commutes with S_r: Tr(S_r + S_f − 2 (S_r S_f)^{1/2}) = (1 − scale)² Tr S_r
    return D * shift ** 2 + (1 - scale) ** 2 * (A.T @ A).trace().item()


def _true_kid(scale, shift):
    """MMD² of N(0, S) and N(shift·1, scale² S) for k(x, y) = (x.y/D + 1)^3, from Gaussian moments:
    E k = 1 + 3 E[s] + 3 E[s²] + E[s³], s = x.y/D, with E[s] = m_x.m_y/D, E[s²] = Tr(M_x M_y)/D²
    (M the second moments) and E[s³] = <T_x, T_y>/D³ (T the third-moment tensors)."""
    S = A.T @ A

    def parts(m, cov):
        M = cov + torch.outer(m, m)
        T = (torch.einsum("i,j,k->ijk", m, m, m) + torch.einsum("i,jk->ijk", m, cov)
             + torch.einsum("j,ik->ijk", m, cov) + torch.einsum("k,ij->ijk", m, cov))
        return m, M, T

    def ek(p, q):
        return (1 + 3 * (p[0] @ q[0]) / D + 3 * (p[1] @ q[1]).trace() / D ** 2 + (p[2] * q[2]).sum() / D ** 3).item()

    real = parts(torch.zeros(D, dtype=torch.float64), S)
    fake = parts(torch.full((D,), shift, dtype=torch.float64), scale ** 2 * S)
    return ek(real, real) + ek(fake, fake) - 2 * ek(real, fake)


def _u_stat(real, fake):
    """The unbiased MMD² over all pairs with KID's kernel (x.y/D + 1)^3 (Bińkowski et al., 2018)."""
    k = lambda a, b: (a @ b.T / D + 1) ** 3  # noqa: E731
    n, m = len(real), len(fake)
    return ((k(real, real).sum() - k(real, real).trace()) / (n * (n - 1))
            + (k(fake, fake).sum() - k(fake, fake).trace()) / (m * (m - 1)) - 2 * k(real, fake).mean()).item()


def test_closed_forms():
    """The closed forms the coverage test relies on: FID against torchmetrics' formula on the population
    moments, KID against the mean of 40 independent unbiased estimates (5 standard errors)."""
    from torchmetrics.image.fid import _compute_fid

    S = A.T @ A
    assert _compute_fid(torch.zeros(D, dtype=torch.float64), S, torch.full((D,), 0.15, dtype=torch.float64),
                        1.15 ** 2 * S).item() == pytest.approx(_true_fid(1.15, 0.15), rel=1e-9)
    kids = torch.tensor([_u_stat(*_sets(1000, seed=100 + i)) for i in range(40)])  # 40 independent estimates
    kid, se = kids.mean().item(), kids.std().item() / math.sqrt(40)
    assert abs(kid - _true_kid(1.15, 0.15)) < Z * se, (kid, se, _true_kid(1.15, 0.15))


def test_estimates_are_the_point_metrics():
    real, fake = _sets(300, seed=1)
    out = intervals.quality_intervals_from_features(real, fake, n_boot=20)
    assert out["fid"] == pytest.approx(_fid_scipy(real, fake), rel=1e-7, abs=1e-9)  # an independent computation
    assert (out["precision"], out["recall"]) == _precision_recall_brute(real, fake, 3)
    assert out["kid"] == pytest.approx(_u_stat(real, fake), rel=1e-9)
    assert out["n_real"] == out["n_fake"] == 300 and out["n_boot"] == 20 and out["interval"] == "basic"


@pytest.mark.slow
def test_intervals_cover_the_true_fid_and_kid_at_the_nominal_rate():
    scale, shift, repeats = 1.15, 0.15, 200
    fid, kid = _true_fid(scale, shift), _true_kid(scale, shift)
    hits = {"fid": 0, "kid": 0, "fid_percentile": 0}
    for r in range(repeats):
        real, fake = _sets(500, seed=1000 + r, scale=scale, shift=shift)
        out = intervals.quality_intervals_from_features(real, fake, n_boot=200, seed=r, metrics=("fid", "kid"))
        hits["fid"] += out["fid_low"] <= fid <= out["fid_high"]
        hits["kid"] += out["kid_low"] <= kid <= out["kid_high"]
        pct = intervals.quality_intervals_from_features(real, fake, n_boot=200, seed=r, metrics=("fid",),
                                                      interval="percentile")
        hits["fid_percentile"] += pct["fid_low"] <= fid <= pct["fid_high"]
    se = math.sqrt(0.95 * 0.05 / repeats)  # binomial standard error of a coverage of 95 % over the repeats
    for name in ("fid", "kid"):  # nominal coverage, within the suite's Z binomial standard errors
        assert abs(hits[name] / repeats - 0.95) < Z * se, hits
    # why "basic": FID's small-sample bias (here about the size of its spread) shifts the percentile
    # interval upwards once more, so it misses the true FID more often than 5 % of the time, by more than Z se
    assert hits["fid_percentile"] / repeats < 0.95 - Z * se, hits


@pytest.mark.slow
def test_interval_contains_the_estimate_and_shrinks_with_n():
    # 16 times the data: widths fall like 1/4. Each width is itself noisy (the data, 200 bootstrap quantiles), so
    # the check is over 10 independent data sets: the mean log width ratio is below 0 by the Student-t multiplier
    # of its own standard error
    repeats, logs = 10, {name: [] for name in metrics.METRICS}
    for r in range(repeats):
        real, fake = _sets(3200, seed=20 + r, scale=1.2, shift=0.2)
        small = intervals.quality_intervals_from_features(real[:200], fake[:200], n_boot=200, seed=r)
        large = intervals.quality_intervals_from_features(real, fake, n_boot=200, seed=r)
        for name in metrics.METRICS:
            for out in (small, large):
                assert out[f"{name}_low"] <= out[name] <= out[f"{name}_high"], (name, out)
            width = lambda o: o[f"{name}_high"] - o[f"{name}_low"]  # noqa: E731
            logs[name].append(math.log(width(large) / width(small)))
    for name, values in logs.items():
        mean, se = statistics.fmean(values), statistics.stdev(values) / math.sqrt(repeats)
        assert mean + t_quantile(repeats - 1) * se < 0, (name, mean, se)


def test_kid_replicates_are_centred_on_the_estimate():
    """Copies of one point in a resample are not paired with each other: otherwise their self-similarity
    k(x, x) would lift every replicate by about 2 (E k(x, x) − E k(x, x'))/n (0.06 here)."""
    real, fake = _sets(400, seed=3)
    out = intervals.quality_intervals_from_features(real, fake, n_boot=200, seed=0, metrics=("kid",))
    assert abs(out["kid_bias"]) < Z * out["kid_se"] / math.sqrt(200)


def test_equal_distributions_fid_interval_lies_below_the_biased_estimate():
    real, _ = _sets(400, seed=4)
    other, _ = _sets(400, seed=5)
    out = intervals.quality_intervals_from_features(real, other, n_boot=200, seed=0, metrics=("fid",))
    assert out["fid"] > 0 and out["fid_bias"] > 0  # pure small-sample bias, and more of it in the replicates
    assert out["fid_low"] == 0.0  # clipped at the metric's floor: the interval contains the true FID, 0


def test_deterministic_with_a_seed_and_wrapper_on_images():
    real, fake = _sets(200, seed=5)
    a = intervals.quality_intervals_from_features(real, fake, n_boot=30, seed=1)
    b = intervals.quality_intervals_from_features(real, fake, n_boot=30, seed=1)
    c = intervals.quality_intervals_from_features(real, fake, n_boot=30, seed=2)
    assert a == b
    assert all(a[m] == c[m] for m in metrics.METRICS) and a["fid_high"] != c["fid_high"]
    # images -> features once -> the same intervals
    images = lambda f: torch.sigmoid(f.float()).repeat(1, 98).reshape(-1, 1, 28, 28)  # noqa: E731
    phi = lambda x: torch.logit(x.flatten(1)[:, :D].double())  # noqa: E731
    via_images = intervals.sample_quality_intervals(images(real), images(fake), features=phi, n_boot=30, seed=1)
    direct = intervals.quality_intervals_from_features(phi(images(real)).float(), phi(images(fake)).float(),
                                                     n_boot=30, seed=1)
    assert via_images == direct


def test_mean_ci_covers_the_mean_at_the_nominal_rate():
    g = torch.Generator().manual_seed(0)
    repeats, hits = 2000, 0
    for _ in range(repeats):
        v = 3.0 + 2.0 * torch.randn(10, generator=g, dtype=torch.float64)
        out = stats.mean_ci(v)
        hits += out["low"] <= 3.0 <= out["high"]
    assert abs(hits / repeats - 0.95) < Z * math.sqrt(0.95 * 0.05 / repeats)  # the t interval is exact for normal data
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    out = stats.mean_ci(v, level=0.9)
    assert out["mean"] == 2.5 and out["se"] == pytest.approx(v.std().item() / 2) and out["n"] == 4
    assert out["high"] - out["mean"] == pytest.approx(2.3533636 * out["se"], rel=1e-6)  # t_{0.95, 3}


def test_bad_input():
    real, fake = _sets(100, seed=6)
    with pytest.raises(ValueError, match="level=1.5"):
        intervals.quality_intervals_from_features(real, fake, level=1.5)
    with pytest.raises(ValueError, match="interval='bca' is unknown"):
        intervals.quality_intervals_from_features(real, fake, interval="bca")
    with pytest.raises(ValueError, match=r"metrics=\('is',\)"):
        intervals.quality_intervals_from_features(real, fake, metrics=("is",))
    with pytest.raises(ValueError, match="n_boot=1"):
        intervals.quality_intervals_from_features(real, fake, n_boot=1)
    with pytest.raises(ValueError, match="k=100"):
        intervals.quality_intervals_from_features(real, fake, k=100)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        intervals.quality_intervals_from_features(real, fake[:, :4])
    with pytest.raises(ValueError, match="too few"):
        intervals.quality_intervals_from_features(real[:10], fake)
    with pytest.raises(ValueError, match="NaN"):
        stats.mean_ci(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_ci(torch.tensor([1.0]))


def test_paired_difference_shares_the_reference_draws():
    """Rows scored against one reference with one seed reweight it alike, so the difference of their replicates is
    the paired bootstrap: a row against itself differs by exactly 0 (p = 1); rows scored otherwise are refused."""
    g = torch.Generator().manual_seed(0)
    real, a, b = (torch.randn(300, 4, generator=g, dtype=torch.float64) for _ in range(3))
    b = b + 0.3
    ra, rb, ra2 = (intervals.quality_intervals_from_features(real, x, n_boot=200, seed=1, metrics=("fid",),
                                                             replicates=True) for x in (a, b, a))
    d = intervals.paired(rb, ra)
    assert d["raw"] == rb["fid"] - ra["fid"] and d["low"] < d["mean"] < d["high"] and 0 < d["p"] <= 1
    same = intervals.paired(ra, ra2)
    assert same["raw"] == same["low"] == same["high"] == 0.0 and same["p"] == 1.0
    other = intervals.quality_intervals_from_features(real, a, n_boot=200, seed=2, metrics=("fid",), replicates=True)
    with pytest.raises(ValueError, match="scored alike"):
        intervals.paired(rb, other)
    with pytest.raises(ValueError, match="replicates=True"):
        intervals.paired(rb, intervals.quality_intervals_from_features(real, a, n_boot=200, seed=1, metrics=("fid",)))


def test_precision_recall_replicates_are_half_samples_without_duplicates():
    h = intervals._halves(11, 50, torch.Generator().manual_seed(0))
    assert set(h.unique().tolist()) == {0.0, 1.0} and (h.sum(1) == 5).all()  # ⌊11/2⌋ distinct points each
    assert len({tuple(row.tolist()) for row in h}) > 40  # random halves, not one
    assert {metrics.METRICS[m].resampling for m in ("precision", "recall")} == {"halves"}
    assert {metrics.METRICS[m].resampling for m in ("fid", "kid")} == {"bootstrap"}


def _blur(x, s=1.0):
    r = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-r ** 2 / (2 * s * s))
    k = k / k.sum()
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, 7), padding=(0, 3))
    return torch.nn.functional.conv2d(x, k.view(1, 1, 7, 1), padding=(3, 0)).clamp(0, 1)


@pytest.mark.slow
def test_precision_recall_intervals_contain_their_estimate_on_rows_like_table2(monkeypatch):
    """Rows like Table 2's: N = 1,000 images of each kind against N random test images, in a 128-d PCA of the
    pixels: held-out images (the floor), blurred ones (like the VAE's parameter λ(z)), pixel draws from those
    (like x ~ p(x|z)) and noisy ones. The half-sample interval contains the estimate on every row; bootstrap
    resamples, whose duplicates enlarge every k-NN radius, put it outside on at least one (why the halves)."""
    import dataclasses

    from gen_lib import data

    g = torch.Generator().manual_seed(0)
    fit, _ = data.load_mnist("fit")
    held, _ = data.load_mnist("held_out")
    test, _ = data.load_mnist("test")
    x = fit[:10_000].flatten(1).double()
    mean = x.mean(0)
    basis = torch.linalg.svd(x - mean, full_matrices=False)[2][:128].T
    feat = lambda images: (images.flatten(1).double() - mean) @ basis  # noqa: E731
    pick = lambda images, n=1000: images[torch.randperm(len(images), generator=g)[:n]]  # noqa: E731
    base = pick(fit[10_000:])
    rows = {"floor": pick(held), "blurred": _blur(base), "drawn": torch.bernoulli(_blur(base), generator=g),
            "noisy": (base + 0.15 * torch.randn(base.shape, generator=g)).clamp(0, 1)}
    ref = feat(pick(test))
    pr = ("precision", "recall")
    misses = 0
    for name, images in rows.items():
        f = feat(images)
        out = intervals.quality_intervals_from_features(ref, f, n_boot=200, seed=0, metrics=pr)
        for m in pr:
            assert out[f"{m}_low"] <= out[m] <= out[f"{m}_high"], (name, m, out)
        with monkeypatch.context() as patch:
            for m in pr:
                patch.setitem(metrics.METRICS, m, dataclasses.replace(metrics.METRICS[m], resampling="bootstrap"))
            boot = intervals.quality_intervals_from_features(ref, f, n_boot=200, seed=0, metrics=pr)
        misses += sum(not boot[f"{m}_low"] <= boot[m] <= boot[f"{m}_high"] for m in pr)
    assert misses >= 1


@pytest.mark.slow
def test_precision_recall_intervals_cover_the_centre_of_their_sampling_distribution():
    """The half-sample interval is for the centre of the estimate's distribution at the given N (k-NN precision and
    recall have no size-free value at a fixed k): over independent pairs of sets it covers the mean estimate at
    least at the nominal rate, and its width matches the estimate's own spread (not a wider stand-in)."""
    repeats = 100
    out = [intervals.quality_intervals_from_features(*_sets(300, seed=3000 + r), n_boot=200, seed=r,
                                                     metrics=("precision", "recall")) for r in range(repeats)]
    se = math.sqrt(0.95 * 0.05 / repeats)
    for m in ("precision", "recall"):
        est = torch.tensor([o[m] for o in out], dtype=torch.float64)
        centre, spread = est.mean().item(), est.std().item()
        hits = sum(o[f"{m}_low"] <= centre <= o[f"{m}_high"] for o in out)
        assert hits / repeats > 0.95 - Z * se, (m, hits)
        width = statistics.fmean(o[f"{m}_high"] - o[f"{m}_low"] for o in out) / (2 * 1.96)
        assert 0.7 * spread < width < 1.5 * spread, (m, width, spread)
