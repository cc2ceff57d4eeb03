"""The feature network of the quality metrics: shapes, caching, accuracy against an independent linear model,
and the real-data floor in its features."""

import math
import time

import pytest
import torch

from _bounds import Z, fid_self_roundoff
from gen_lib import classifier, data, features, intervals, metrics
from gen_lib.study import config, precision, recipes, trained


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
        trained.load_classifier("mnist", "default")


def test_lookups_time_nothing_and_create_nothing(tmp_build, monkeypatch):
    """Finding a trained model never times a training step (`precision.settle`) and never creates a run folder."""
    monkeypatch.setattr(precision, "trainer", lambda *a, **k: pytest.fail("a lookup timed a training step"))
    cfg = config.resolve("ddpm", "smoke")
    assert cfg["bf16"] == "auto"  # the machine's choice, not cached in this empty build folder
    folder = trained.run_folder("ddpm", cfg)
    assert folder.parent == tmp_build / "build" / "runs" / "ddpm"
    with pytest.raises(FileNotFoundError, match="run notebook 03_ddpm first"):
        trained.history("ddpm", cfg)
    with pytest.raises(FileNotFoundError, match="no trained fashion classifier for profile 'smoke'"):
        trained.load_classifier("fashion", "smoke")
    assert not (tmp_build / "build" / "runs").exists()  # no run folder, no config.json
    assert not (tmp_build / "build" / "precision.json").exists()  # nothing timed, nothing cached


@pytest.mark.slow
def test_trained_classifier_beats_a_linear_model_and_serves_as_feature_map(tmp_build, monkeypatch, seed):
    if seed:  # the default profile's classifier, its seed shifted by GEN_LIB_TEST_SEED (the whole test sees it)
        load = config._load

        def shifted_seed():
            table = load()
            table["default"]["classifier"]["seed"] += seed
            return table

        monkeypatch.setattr(config, "_load", shifted_seed)
    cfg = config.resolve("classifier", "default")
    t0 = time.perf_counter()
    run = recipes.train_classifier(cfg, progress=False)
    info = run.history[-1]
    seconds = time.perf_counter() - t0
    print(f"classifier: {cfg['epochs']}+{cfg['decay_epochs']} epochs in {seconds:.0f} s, "
          f"accuracy {info['test_accuracy']:.4f}")
    # (time is reported, not asserted: CI machines are shared.) The CNN against an independent model of the same
    # data: least squares from pixels to one-hot labels (~86 % on MNIST). On the same test images the CNN must be
    # right on more of the images where the two disagree, by Z binomial standard errors (a sign test)
    fit_x, fit_y = data.load_mnist("fit")
    test_x, test_y = data.load_mnist("test")
    design = lambda x: torch.cat([x.flatten(1).double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)  # noqa: E731
    a = design(fit_x)
    w = torch.linalg.solve(a.T @ a + 1e-3 * torch.eye(a.shape[1], dtype=torch.float64),
                           a.T @ torch.nn.functional.one_hot(fit_y, 10).double())
    linear_right = (design(test_x) @ w).argmax(1) == test_y
    cnn = trained.load_classifier("mnist", "default")
    with torch.no_grad():
        cnn_right = torch.cat([cnn(test_x[i:i + 1000]).argmax(1) for i in range(0, len(test_x), 1000)]) == test_y
    only_cnn, only_linear = int((cnn_right & ~linear_right).sum()), int((linear_right & ~cnn_right).sum())
    print(f"test accuracy: CNN {cnn_right.double().mean():.4f}, least squares {linear_right.double().mean():.4f}")
    assert cnn_right.double().mean().item() == pytest.approx(info["test_accuracy"], abs=1e-6)
    assert only_cnn - only_linear > Z * math.sqrt(only_cnn + only_linear), (only_cnn, only_linear)

    # the cached model is what features="mnist" uses; its features are standardised on real data
    assert classifier.accuracy(cnn, test_x, test_y) == pytest.approx(info["test_accuracy"], abs=1e-6)
    f = features.extract(cnn.features, test_x[:2000])
    assert f.mean(0).abs().mean() < 0.3 and 0.6 < f.std(0).mean() < 1.5

    real, other = test_x[:1000], test_x[1000:2000]
    same = metrics.sample_quality(real, real, features="mnist", kid_subsets=10)
    roundoff = fid_self_roundoff(features.extract(cnn.features, real))  # float64 eigenvalues of 128 x 128
    assert same["fid"] <= roundoff and same["precision"] == same["recall"] == 1.0, (same, roundoff)
    floor = metrics.sample_quality(real, other, features="mnist", kid_subsets=10)
    noised = (other + 0.3 * torch.rand(other.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
    noisy = metrics.sample_quality(real, noised, features="mnist", kid_subsets=10)
    print(f"fid: same {same['fid']:.3g} (round-off bound {roundoff:.3g}), floor {floor['fid']:.4g}, "
          f"noisy {noisy['fid']:.4g}; kid: floor {floor['kid_mean']:.4g} +- {floor['kid_std']:.3g}, "
          f"noisy {noisy['kid_mean']:.4g} +- {noisy['kid_std']:.3g}")
    # noise is seen: KID (unbiased) moves by Z times its spread over subsets, and FID's 95 % interval lies above
    # the floor's (two samples of one distribution: FID's bias and noise at this N)
    assert noisy["kid_mean"] - floor["kid_mean"] > Z * math.hypot(noisy["kid_std"], floor["kid_std"]), (noisy, floor)
    f_real, f_other, f_noised = (features.extract(cnn.features, x) for x in (real, other, noised))
    q_floor = intervals.quality_intervals_from_features(f_real, f_other, n_boot=200, seed=seed, metrics=("fid",))
    q_noisy = intervals.quality_intervals_from_features(f_real, f_noised, n_boot=200, seed=seed, metrics=("fid",))
    assert q_noisy["fid_low"] > q_floor["fid_high"], (q_noisy, q_floor)

    # the bias-corrected FID on unseen real images: held-out training images, which the classifier never saw
    # (the real-data floor's source, docs/study.md), in five disjoint random pairs of 1,000 against 1,000. The two sets of a
    # pair come from one distribution, so each 95 % basic-bootstrap interval should cover 0; under nominal coverage,
    # P(fewer than 3 of 5 cover) = P(Bin(5, 0.05) >= 3) < 0.0012. (Held-out against *test* images need not cover 0:
    # MNIST's training and test splits come from different mixes of writers.)
    held_x, _ = data.load_mnist("held_out")
    f_held = features.extract(cnn.features, held_x[torch.randperm(len(held_x), generator=torch.Generator().manual_seed(seed))])
    covers = []
    for i in range(5):
        q = intervals.quality_intervals_from_features(f_held[2000 * i:2000 * i + 1000], f_held[2000 * i + 1000:2000 * (i + 1)],
                                                      n_boot=200, seed=seed + i, metrics=("fid",))
        covers.append(q["fid_low"] <= 0.0)
        print(f"held-out pair {i}: FID {q['fid']:.3f}, bias-corrected interval [{q['fid_low']:.3f}, {q['fid_high']:.3f}]")
    assert sum(covers) >= 3, covers
