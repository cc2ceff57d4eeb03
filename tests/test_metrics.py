"""Contracts of gen_lib.metrics: FID, KID and precision/recall on known feature sets (float64, fixed seed)."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from _bounds import Z, fid_self_roundoff, t_quantile
from gen_lib import intervals, metrics

D = 8


def _mix(d=D):
    return torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=torch.Generator().manual_seed(99),
                                                                dtype=torch.float64)


def _gauss(n, d=D, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ _mix(d) + shift


def _fid_scipy(x, y):
    x, y = x.numpy(), y.numpy()
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    x = _gauss(500)
    assert metrics.fid_from_features(x, x) <= fid_self_roundoff(x)
    fids = [metrics.fid_from_features(x, x + s) for s in (0.1, 0.5, 1.0)]
    # a shift s of every coordinate adds exactly d s^2
    assert fids == pytest.approx([D * s**2 for s in (0.1, 0.5, 1.0)], rel=1e-6)


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_fid_matches_independent_scipy_computation(shift):
    x, y = _gauss(400, seed=1), _gauss(300, shift=shift, seed=2) * 1.3
    assert metrics.fid_from_features(x, y) == pytest.approx(_fid_scipy(x, y), rel=1e-7, abs=1e-9)


class _Identity(torch.nn.Module):
    """torchmetrics' feature hook, handed features we computed: its FID and KID serve as independent references."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, f):
        return f


def test_fid_and_kid_match_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    x, y = _gauss(400, seed=5), _gauss(300, shift=0.4, seed=6) * 1.2
    fid = FrechetInceptionDistance(feature=_Identity(D)).set_dtype(torch.float64)
    kid = KernelInceptionDistance(feature=_Identity(D), subsets=1, subset_size=300)  # every sample: no draw
    for metric, real in ((fid, x), (kid, x[:300])):
        metric.update(real, real=True)
        metric.update(y, real=False)
    # float64 eigenvalue and square-root forms of one formula: agreement to round-off of sums of ~400 terms
    assert metrics.fid_from_features(x, y) == pytest.approx(float(fid.compute()), rel=1e-9)
    # KID's one implementation (the all-pairs unbiased MMD^2 that kid_from_features averages over subsets)
    ours = intervals.quality_intervals_from_features(x[:300], y, n_boot=2, metrics=("kid",))["kid"]
    assert ours == pytest.approx(float(kid.compute()[0]), rel=1e-9)


def _precision_recall_brute(real, fake, k):
    """Improved precision and recall by full distance matrices (the definition, nothing shared with gen_lib)."""
    radius = lambda a: torch.cdist(a, a).sort(1).values[:, k]  # noqa: E731  k-th nearest other point (0 is itself)
    precision = (torch.cdist(fake, real) <= radius(real)[None, :]).any(1).double().mean().item()
    recall = (torch.cdist(real, fake) <= radius(fake)[None, :]).any(1).double().mean().item()
    return precision, recall


def test_precision_recall_match_the_definition(seed):
    real, fake = _gauss(300, seed=10 + seed), _gauss(200, shift=0.3, seed=11 + seed)
    assert metrics.precision_recall(real, fake, k=3) == _precision_recall_brute(real, fake, 3)


def test_fid_is_biased_at_small_n(seed):
    # two samples of one distribution (covariance S): FID >= |m1 - m2|², whose expectation is 2 Tr S / N, so FID's
    # expectation is at least that at N = 32, and it falls with N. Both checked on means over 30 pairs, with
    # the Student-t multiplier of their standard errors (KID's unbiasedness: the next test)
    o, repeats = 100 * seed, 30
    small = [metrics.fid_from_features(_gauss(32, seed=3 + o + 2 * r), _gauss(32, seed=4 + o + 2 * r))
             for r in range(repeats)]
    large = [metrics.fid_from_features(_gauss(4000, seed=3 + o + 2 * r), _gauss(4000, seed=4 + o + 2 * r))
             for r in range(repeats)]
    cov = _mix().T @ _mix()  # exact: the rows are z @ mix, z ~ N(0, I)
    t = t_quantile(repeats - 1)
    mean_small, se_small = np.mean(small), np.std(small, ddof=1) / np.sqrt(repeats)
    assert mean_small + t * se_small > 2 * cov.trace().item() / 32, (small, cov.trace().item())
    diff = np.subtract(small, large)
    assert diff.mean() - t * diff.std(ddof=1) / np.sqrt(repeats) > 0, (small, large)
    assert min(large) > 0


@pytest.mark.parametrize("n,repeats", [(20, 200), (200, 40), (2000, 12)])
def test_kid_is_unbiased_for_two_halves_of_one_set(n, repeats, seed):
    # over independent sets, KID of two halves averages to 0 at any size, while the biased V-statistic
    # MMD^2 of the same halves sits clearly above 0, and so does KID once one half is shifted. Means are
    # compared by their standard errors, with the Student-t multiplier of `repeats` draws.
    kernel = lambda a, b: (a @ b.T / D + 1) ** 3  # noqa: E731  torchmetrics' default kernel
    size = min(1000, n // 2)
    kids, biased, shifted = [], [], []
    for r in range(repeats):
        x = torch.randn(2 * n, D, generator=torch.Generator().manual_seed(r + 1000 * seed), dtype=torch.float64)
        kids.append(metrics.kid_from_features(x[:n], x[n:], subsets=5, seed=r)[0])
        shifted.append(metrics.kid_from_features(x[:n], x[n:] + 0.5, subsets=5, seed=r)[0])
        a, b = x[:size], x[n:n + size]
        biased.append((kernel(a, a).mean() + kernel(b, b).mean() - 2 * kernel(a, b).mean()).item())
    q = t_quantile(repeats - 1)
    (mean, se), (mean_b, se_b), (mean_s, se_s) = [(np.mean(v), np.std(v, ddof=1) / np.sqrt(repeats))
                                                  for v in (kids, biased, shifted)]
    assert abs(mean) < q * se, (mean, se)
    assert mean_b - mean > q * np.hypot(se, se_b), (mean_b, mean, se_b, se)
    assert mean_s - mean > q * np.hypot(se, se_s), (mean_s, mean, se_s, se)


def test_precision_recall_of_a_set_with_itself_and_a_far_set():
    x = _gauss(300, seed=7)
    assert metrics.precision_recall(x, x, k=3) == (1.0, 1.0)
    assert metrics.precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


def test_precision_recall_see_mode_dropping(seed):
    # fake covers only one of the two real modes: against a fake set of both modes (the reference, same
    # size), precision stays as high and recall halves. Each is a fraction of 400 points: binomial errors.
    o = 100 * seed
    real = torch.cat([_gauss(200, seed=8 + o), _gauss(200, shift=20.0, seed=9 + o)])
    fake = _gauss(400, seed=10 + o)
    both = torch.cat([_gauss(200, seed=11 + o), _gauss(200, shift=20.0, seed=12 + o)])
    precision, recall = metrics.precision_recall(real, fake, k=3)
    precision_ref, recall_ref = metrics.precision_recall(real, both, k=3)
    se = lambda p: np.sqrt(p * (1 - p) / 400)  # noqa: E731
    assert precision > precision_ref - Z * np.hypot(se(precision), se(precision_ref)), (precision, precision_ref)
    assert abs(recall - recall_ref / 2) < Z * np.hypot(se(recall), se(recall_ref) / 2), (recall, recall_ref)
    assert recall <= 0.5  # no fake point lies near the dropped mode: its 200 real points are never covered


def test_sample_quality_with_a_callable_feature_map():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(200, 1, 28, 28, generator=g)
    phi = lambda x: x.flatten(1)[:, :D]  # noqa: E731  (N, 8) features
    out = metrics.sample_quality(real, real.clone(), features=phi, kid_subsets=10)
    assert set(out) >= {"fid", "kid_mean", "kid_std", "precision", "recall"}
    assert out["fid"] <= fid_self_roundoff(phi(real)) and out["precision"] == out["recall"] == 1.0
    darker = metrics.sample_quality(real, real * 0.5, features=phi, kid_subsets=10)
    assert darker["fid"] > 0.1 and darker["kid_mean"] > 0.01


# ---------------------------------------------------------------- bad input

def _imgs(n=100):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_rejects_images_of_different_shapes():
    with pytest.raises(ValueError, match=r"\(1, 28, 28\).*\(1, 32, 32\)"):
        metrics.sample_quality(_imgs(), torch.rand(100, 1, 32, 32), features=lambda x: x.flatten(1)[:, :D])


@pytest.mark.parametrize("scale,shown", [(2.0, "2"), (255.0, "255")])
def test_rejects_images_outside_unit_range(scale, shown):
    with pytest.raises(ValueError, match=rf"fake images lie in \[.*, {shown}.*\]; expected \[0, 1\]"):
        metrics.sample_quality(_imgs(), _imgs() * scale + 1e-3, features=lambda x: x.flatten(1)[:, :D])
    with pytest.raises(ValueError, match=r"real images lie in \[-1.*expected \[0, 1\]"):
        metrics.sample_quality(_imgs() * 2 - 1, _imgs(), features=lambda x: x.flatten(1)[:, :D])


def test_rejects_too_few_samples_for_the_covariance():
    with pytest.raises(ValueError, match=r"30 real and 30 fake .* at least 64 \(2d\)"):
        metrics.fid_from_features(_gauss(30, d=32), _gauss(30, d=32))


def test_rejects_unknown_feature_name():
    from gen_lib.study import trained  # noqa: F401  (registers the datasets' classifiers)

    with pytest.raises(ValueError, match=r"features='vgg' is not a registered feature map; registered: "
                                         r"inception, mnist, fashion\. .*import gen_lib\.study\.trained"):
        metrics.sample_quality(_imgs(), _imgs(), features="vgg")


def test_scores_without_the_study_take_callables_and_name_how_mnist_is_registered():
    """In a process that never imported the study, a callable scores as usual and "mnist" is one clear error
    that says which import registers it."""
    code = ("import sys, torch\n"
            "from gen_lib import metrics\n"
            "x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))\n"
            "phi = lambda im: im.flatten(1)[:, :4]\n"
            "print(metrics.sample_quality(x, x, features=phi, kid_subsets=2)['fid'] < 1e-6)\n"
            "try:\n"
            "    metrics.sample_quality(x, x, features='mnist')\n"
            "except ValueError as err:\n"
            "    print(err)\n"
            "print(any(m.startswith('gen_lib.study') for m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "True" and out[-1] == "False", out
    assert out[1].startswith("features='mnist' is not a registered feature map; registered: inception.")
    assert "import gen_lib.study.trained" in out[1]


def test_a_dataset_classifier_checks_the_image_shape_of_its_registry_entry():
    with pytest.raises(ValueError, match=r"features='mnist' is the mnist classifier, which takes images of shape "
                                         r"\(1, 28, 28\); got \(1, 32, 32\)"):
        metrics.sample_quality(torch.rand(64, 1, 32, 32), torch.rand(64, 1, 32, 32), features="mnist")


def test_inception_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="inception.*cannot be downloaded here"):
        metrics.sample_quality(_imgs(), _imgs(), features="inception")


def test_missing_classifier_says_how_to_train_it(tmp_build):
    from gen_lib.study import trained  # noqa: F401  (registers the datasets' classifiers)

    with pytest.raises(FileNotFoundError, match=r"no trained mnist classifier for profile 'smoke'.*04_quality"):
        metrics.sample_quality(_imgs(), _imgs(), features="mnist", profile="smoke")


def test_rejects_mismatched_feature_dimensions():
    with pytest.raises(ValueError, match="real d=8, fake d=4"):
        metrics.precision_recall(_gauss(50), _gauss(50, d=4))
