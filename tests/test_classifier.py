"""The feature network of the quality metrics: shapes, caching, and >= 99 % MNIST test accuracy."""

import math
import time

import pytest
import torch

from _bounds import Z, fid_self_roundoff
from gen_lib import classifier, data, metrics
from gen_lib.study import config, recipes


def test_shapes_and_gradients():
    model = classifier.MNISTClassifier(feature_dim=32).double()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    assert model.features(x).shape == (5, 32)
    assert model(x).shape == (5, 10)
    loss = model.loss((x, torch.arange(5)))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_features_are_deterministic_in_eval_mode():
    model = classifier.MNISTClassifier(feature_dim=16).eval()
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(model.features(x), model.features(x))
    # no batch dependence (BatchNorm uses its running statistics): in float64, where another batch size's
    # kernels change only the rounding of sums of <= 3136 terms (relative error <= 3136 u)
    model, x = model.double(), x.double()
    f = model.features(x)
    tol = 3136 * torch.finfo(torch.float64).eps * f.abs().max().item()
    assert (f[:3] - model.features(x[:3])).abs().max().item() <= tol


def test_missing_classifier_is_a_clear_error(tmp_build):
    with pytest.raises(FileNotFoundError, match=r"no trained mnist classifier for profile 'default'.*"
                                                r"train_classifier.*--only 04_quality"):
        recipes.load_classifier("mnist", "default")


@pytest.mark.slow
def test_trained_classifier_reaches_99_percent_and_serves_as_feature_map(tmp_build, monkeypatch, seed):
    if seed:  # the default profile's classifier, its seed shifted by GEN_LIB_TEST_SEED (the whole test sees it)
        load = config._load

        def shifted_seed():
            table = load()
            table["default"]["quality"]["classifier_seed"] += seed
            return table

        monkeypatch.setattr(config, "_load", shifted_seed)
    cfg = config.resolve("quality", "default")
    t0 = time.perf_counter()
    run = recipes.train_classifier(cfg, progress=False)
    info = run.history[-1]
    seconds = time.perf_counter() - t0
    print(f"classifier: {cfg['classifier_epochs']}+{cfg['classifier_decay_epochs']} epochs in {seconds:.0f} s, accuracy {info['test_accuracy']:.4f}")
    assert info["test_accuracy"] >= 0.99  # (time is reported, not asserted: CI machines are shared)

    # the cached model is what features="mnist" uses; its features are standardised on real data
    loaded = recipes.load_classifier("mnist", "default")
    test_x, test_y = data.load_mnist("test")
    assert classifier.accuracy(loaded, test_x, test_y) == pytest.approx(info["test_accuracy"], abs=1e-6)
    f = metrics.extract(loaded.features, test_x[:2000])
    assert f.mean(0).abs().mean() < 0.3 and 0.6 < f.std(0).mean() < 1.5

    real, other = test_x[:1000], test_x[1000:2000]
    same = metrics.sample_quality(real, real, features="mnist", kid_subsets=10)
    roundoff = fid_self_roundoff(metrics.extract(loaded.features, real))  # float64 eigenvalues of 128 x 128
    assert same["fid"] <= roundoff and same["precision"] == same["recall"] == 1.0, (same, roundoff)
    floor = metrics.sample_quality(real, other, features="mnist", kid_subsets=10)
    noisy = metrics.sample_quality(real, (other + 0.3 * torch.rand_like(other)).clamp(0, 1), features="mnist",
                                   kid_subsets=10)
    print(f"fid: same {same['fid']:.3g} (round-off bound {roundoff:.3g}), floor {floor['fid']:.4g}, "
          f"noisy {noisy['fid']:.4g}; kid: floor {floor['kid_mean']:.4g} +- {floor['kid_std']:.3g}, "
          f"noisy {noisy['kid_mean']:.4g} +- {noisy['kid_std']:.3g}")
    # noise is seen: KID (unbiased) moves by many times its spread over subsets, and FID by many times the
    # floor (two samples of one distribution: FID's bias and noise at this N)
    assert noisy["kid_mean"] - floor["kid_mean"] > Z * math.hypot(noisy["kid_std"], floor["kid_std"]), (noisy, floor)
    assert noisy["fid"] > 5 * floor["fid"], (noisy, floor)

    # the bias-corrected FID on unseen real images: held-out training images, which the classifier never saw
    # (the real-data floor's source, SPEC), in five disjoint random pairs of 1,000 against 1,000. The two sets of a
    # pair come from one distribution, so each 95 % basic-bootstrap interval should cover 0; under nominal coverage,
    # P(fewer than 3 of 5 cover) = P(Bin(5, 0.05) >= 3) < 0.0012. (Held-out against *test* images need not cover 0:
    # MNIST's training and test splits come from different mixes of writers.)
    held_x, _ = data.load_mnist("held_out")
    f_held = metrics.extract(loaded.features, held_x[torch.randperm(len(held_x), generator=torch.Generator().manual_seed(seed))])
    covers = []
    for i in range(5):
        q = metrics.quality_intervals_from_features(f_held[2000 * i:2000 * i + 1000], f_held[2000 * i + 1000:2000 * (i + 1)],
                                                    n_boot=200, seed=seed + i, metrics=("fid",))
        covers.append(q["fid_low"] <= 0.0)
        print(f"held-out pair {i}: FID {q['fid']:.3f}, bias-corrected interval [{q['fid_low']:.3f}, {q['fid_high']:.3f}]")
    assert sum(covers) >= 3, covers
