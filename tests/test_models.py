"""`gen_lib.study.models.build`: the one place a configuration section becomes a network."""

import pytest
import torch

from gen_lib import classifier, diffusion, flows, vae
from gen_lib.study import config, models


def test_every_section_builds_the_model_its_configuration_sizes():
    quality, classifier_cfg = config.resolve("quality_vae", "smoke"), config.resolve("classifier", "smoke")
    flow_cfg, ddpm_cfg = config.resolve("flow", "smoke"), config.resolve("ddpm", "smoke")
    part1 = models.build("priors", {**config.resolve("priors", "smoke"), "prior": "mog"})
    assert isinstance(part1, vae.VAE) and part1.decoder.likelihood == "bernoulli"
    assert part1.prior.means.shape[0] == config.resolve("priors", "smoke")["mog_n_components"]
    part2 = models.build("quality_vae", quality)
    assert isinstance(part2, vae.VAE) and part2.decoder.likelihood == "continuous_bernoulli"
    flow = models.build("flow", flow_cfg)
    couplings = [layer for layer in flow.layers if isinstance(layer, flows.AffineCoupling)]
    assert len(couplings) == flow_cfg["n_layers"] and any(isinstance(layer, flows.ActNorm) for layer in flow.layers)
    ddpm = models.build("ddpm", ddpm_cfg)
    assert isinstance(ddpm, diffusion.DDPM) and ddpm.T == ddpm_cfg["T"]
    assert ddpm.network.base_channels == ddpm_cfg["base_channels"]
    net = models.build("classifier", classifier_cfg)
    assert isinstance(net, classifier.MNISTClassifier)
    assert net.features(torch.rand(2, 1, 28, 28)).shape == (2, classifier_cfg["feature_dim"])


def test_bad_section_or_missing_prior_is_a_clear_error():
    with pytest.raises(ValueError, match="section='gan'.*priors, flow, ddpm, quality_vae, classifier"):
        models.build("gan", {})
    with pytest.raises(ValueError, match=r"cfg\['prior'\]"):
        models.build("priors", config.resolve("priors", "smoke"))
