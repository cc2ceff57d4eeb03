"""The feature network of the quality metrics: shapes, caching, and >= 99 % MNIST test accuracy."""

import time

import pytest
import torch

from gen_lib import classifier, config, data, metrics, recipes


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
    assert torch.allclose(model.features(x)[:3], model.features(x[:3]), atol=1e-5)  # no batch dependence


def test_missing_classifier_is_a_clear_error(tmp_build):
    with pytest.raises(FileNotFoundError, match=r"no trained mnist classifier for profile 'default'.*"
                                                r"train_classifier.*--only 04_quality"):
        recipes.load_classifier("mnist", "default")


@pytest.mark.slow
def test_trained_classifier_reaches_99_percent_and_serves_as_feature_map(tmp_build):
    cfg = config.resolve("quality", "default")
    t0 = time.perf_counter()
    run = recipes.train_classifier(cfg, progress=False)
    model, info = run.model, run.history[-1]
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
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and same["precision"] == same["recall"] == 1.0
    floor = metrics.sample_quality(real, other, features="mnist", kid_subsets=10)
    noisy = metrics.sample_quality(real, (other + 0.3 * torch.rand_like(other)).clamp(0, 1), features="mnist",
                                   kid_subsets=10)
    assert noisy["fid"] > 5 * floor["fid"] and noisy["kid_mean"] > floor["kid_mean"] + 0.01
