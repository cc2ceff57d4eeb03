"""Contract tests over every registry: priors, datasets, samplers, feature maps. Each test iterates its
registry, so an entry added anywhere (a plugin module named in GEN_LIB_PLUGINS too) is tested without
being named here. float64 where numbers are compared, fixed seeds."""

import inspect
import re
import subprocess
import sys
import tomllib

import pytest
import torch
import torchvision
from torch import nn

from gen_lib.study import config, trained
from gen_lib import data, diffusion, features, priors, samplers
from gen_lib.vae import GaussianEncoder


# ---------------------------------------------------------------- priors


@pytest.mark.parametrize("name", priors.names())
def test_prior_entry_builds_with_its_parameters_and_names_them(name):
    entry = priors.spec(name)
    defaults = entry.defaults()
    assert set(defaults) == set(entry.params)
    label = priors.label(name)  # formats with the parameters: no placeholder left
    assert label and "{" not in label and "{" not in priors.describe(name)
    encoder = GaussianEncoder(2, hidden=16) if entry.needs_encoder else None
    prior = priors.build_prior(name, 2, encoder=encoder, **defaults)
    d = prior()
    assert isinstance(d, torch.distributions.Distribution) and tuple(d.event_shape) == (2,)
    with pytest.raises(ValueError, match=f"prior {name!r} has no parameter"):
        priors.build_prior(name, 2, encoder=encoder, no_such_size=3)


@pytest.mark.parametrize("name", [n for n in priors.names() if priors.spec(n).params])
def test_prior_parameters_come_from_the_configuration(name):
    param, default = next(iter(priors.spec(name).defaults().items()))
    changed = {f"{name}_{param}": default + 1}
    assert priors.params(name, changed)[param] == default + 1
    assert priors.params(name, {})[param] == default  # not in the profile: the factory's default
    assert priors.label(name, changed) != priors.label(name) or str(default) not in priors.spec(name).label


def test_profile_sizes_name_registered_prior_parameters():
    section = tomllib.loads(config.PROFILES_FILE.read_text())["default"]["priors"]
    declared = {f"{n}_{p}" for n in priors.names() for p in priors.spec(n).params}
    sized = {k for k in section if k.split("_")[0] in priors.names()}
    assert sized <= declared, f"stale prior sizes in profiles.toml: {sized - declared}"
    study = {f"{n}_{p}" for n in ("gaussian", "mog", "flow", "vamp") for p in priors.spec(n).params}
    assert study <= sized, f"the study's prior sizes must be in [default.priors]: {study - sized}"
    for n in ("mog", "flow", "vamp"):  # the profile's default is the study's, the factory's own default
        assert priors.params(n, config.resolve("priors", "default")) == priors.spec(n).defaults()


def test_select_and_register_errors():
    assert priors.select("") == priors.select(None) == priors.names()
    assert priors.select(" flow, gaussian ") == ("flow", "gaussian")
    with pytest.raises(ValueError, match="prior='laplace' is unknown; choose one of gaussian, mog, flow, vamp"):
        priors.select("gaussian,laplace")
    with pytest.raises(ValueError, match="twice"):
        priors.select("flow,flow")
    with pytest.raises(ValueError, match="must be a new identifier"):
        priors.register("mog", priors.MoGPrior, "again")
    with pytest.raises(ValueError, match="n_parts"):
        priors.register("mog2", priors.MoGPrior, "MoG", ("n_parts",))
    assert "mog2" not in priors.REGISTRY


# ---------------------------------------------------------------- datasets


@pytest.mark.parametrize("name", list(data.INFO))
def test_dataset_entry_is_complete(name):
    entry = data.info(name)
    assert entry.title and entry.items and entry.source and len(entry.classes) >= 2
    assert hasattr(torchvision.datasets, entry.torchvision_class)
    assert entry.sha256 and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in entry.sha256.values())
    assert len(entry.shape) == 3 and all(isinstance(s, int) and s > 0 for s in entry.shape)
    assert entry.dim == entry.shape[0] * entry.shape[1] * entry.shape[2]
    assert callable(entry.fetch)
    assert config.resolve("priors", "smoke", dataset=name)["dataset"] == name  # the profiles accept it
    assert name in features.feature_names()  # its classifier is a feature map


def test_unknown_dataset_lists_the_registry():
    with pytest.raises(ValueError, match="dataset='cifar' is not valid; choose one of mnist, fashion"):
        data.info("cifar")


# ---------------------------------------------------------------- samplers


class _LinearEps(nn.Module):
    def forward(self, x, t):
        return 0.5 * x + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_sampler_is_a_step_function_run_by_the_one_loop(name):
    entry = samplers.sampler(name)
    params = inspect.signature(entry.step).parameters
    assert list(params)[:6] == ["x_t", "eps", "t", "t_prev", "schedule", "noise"]
    assert params["clip_denoised"].kind is inspect.Parameter.KEYWORD_ONLY
    assert entry.label.isascii() and entry.label  # it goes into LaTeX
    ddpm = diffusion.DDPM(_LinearEps(), T=20, shape=(1, 3, 3)).double()
    a = ddpm.sample(4, steps=5, method=name, generator=torch.Generator().manual_seed(0))
    b = ddpm.sample(4, steps=5, method=name, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 3, 3) and torch.equal(a, b)  # the generator decides every draw
    assert a.abs().max() <= 1  # the data's range: the last step lands on the clamped x̂_0
    # the last step (t_prev = -1) adds no noise: whatever noise it is given, it returns data in [-1, 1]
    schedule = ddpm.schedule()
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    eps = torch.randn_like(x)
    last = [entry.step(x, eps, 0, -1, schedule, z, clip_denoised=True) for z in (torch.zeros_like(x), torch.ones_like(x))]
    assert torch.equal(last[0], last[1]) and last[0].shape == x.shape and last[0].abs().max() <= 1
    with pytest.raises(ValueError, match=f"sampler {name!r} has no option"):
        ddpm.sample(1, steps=2, method=name, no_such_option=1)


def test_unknown_sampler_lists_the_registry():
    with pytest.raises(ValueError, match="method='euler' is unknown; choose one of ancestral, ddim"):
        diffusion.DDPM(_LinearEps(), T=10).sample(1, method="euler")


# ---------------------------------------------------------------- feature maps


def test_feature_registry():
    assert features.feature_names() == tuple(features.FEATURES)
    assert set(data.INFO) <= set(features.feature_names())  # the study registered every dataset's classifier
    with pytest.raises(ValueError, match="features='vgg' is not a registered feature map; registered: inception, "
                                         "mnist, fashion"):
        features.feature_map("vgg")
    features.register_features("mean_pixel",
                               lambda profile: lambda x: x.flatten(1).mean(1, keepdim=True).repeat(1, 2))
    try:
        phi = features.feature_map("mean_pixel")
        assert phi(torch.rand(3, 1, 28, 28)).shape == (3, 2)
        with pytest.raises(ValueError, match="already registered"):
            features.register_features("mnist", lambda profile: None)
    finally:
        del features.FEATURES["mean_pixel"]


@pytest.mark.parametrize("entry", ["gen_lib.report", "gen_lib.run", "gen_lib.measure", "gen_lib.study.trained"])
def test_every_entry_to_the_pipeline_registers_the_datasets_classifiers(entry):
    """A notebook (through gen_lib.report), the runner and the measurements find features="mnist" in a fresh
    interpreter; the scores alone do not (tests/test_metrics.py)."""
    code = f"import {entry}, gen_lib.data as d, gen_lib.features as f; print(set(d.INFO) <= set(f.feature_names()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr[-2000:]


@pytest.mark.parametrize("name", list(data.INFO))
def test_a_dataset_feature_map_is_its_trained_classifier_for_the_profile(name, monkeypatch):
    from gen_lib.classifier import MNISTClassifier

    loaded, net = [], MNISTClassifier(4, image_shape=data.info(name).shape)

    def load_classifier(dataset, profile):
        loaded.append((dataset, profile))
        return net

    monkeypatch.setattr(trained, "load_classifier", load_classifier)
    phi = features.feature_map(name, profile="smoke")
    assert loaded == [(name, "smoke")] and phi == net.features  # the penultimate layer of the loaded classifier


def test_a_registered_dataset_reaches_the_profiles_the_loader_and_the_feature_maps(monkeypatch):
    import dataclasses

    entry = dataclasses.replace(data.info("mnist"), title="MNIST again")  # same files, another name
    monkeypatch.setitem(data.INFO, "mnist_again", entry)
    assert config.resolve("flow", "smoke", dataset="mnist_again")["dataset"] == "mnist_again"
    x, y = data.load_mnist("test", dataset="mnist_again")
    assert x.shape == (10_000, *entry.shape) and y.shape == (10_000,)
    monkeypatch.setattr(features, "FEATURES", dict(features.FEATURES))  # the registration below is undone
    trained.register_classifier_features()  # what importing the study does for the datasets registered by then
    assert "mnist_again" in features.feature_names()


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 12, 20)])
def test_models_are_built_for_the_dataset_shape(shape):
    from gen_lib import classifier, flows, vae

    x = torch.rand(3, *shape)
    model = vae.build_vae("vamp", likelihood="continuous_bernoulli", hidden=16, image_shape=shape)
    assert model.elbo(x).shape == (3,) and model.sample_images(2).shape == (2, *shape)
    net = classifier.MNISTClassifier(8, n_classes=4, image_shape=shape)
    assert net(x).shape == (3, 4) and net.features(x).shape == (3, 8)
    flow = flows.build_image_flow(2, 8, image_shape=shape)
    assert flow.log_prob(x).shape == (3,) and flow.sample(2).shape == (2, *shape)
    masks = [layer.mask for layer in flow.layers if isinstance(layer, flows.AffineCoupling)]
    assert all(m.numel() == x[0].numel() for m in masks) and torch.equal(masks[0] + masks[1], torch.ones_like(masks[0]))
    ddpm = diffusion.build_ddpm(base_channels=8, channel_mults="1,1,1,1", n_res=1, dropout=0.0, T=10, shape=shape)
    assert ddpm.loss(x * 2 - 1).shape == () and ddpm.sample(2, steps=2, method="ddim").shape == (2, *shape)
