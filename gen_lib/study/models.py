"""One build per model of the study: the untrained network that a resolved configuration section describes.

    build("priors", cfg)       Part 1's VAE: binarized data, Bernoulli decoder, the prior cfg["prior"]
    build("quality_vae", cfg)  Part 2's VAE: continuous Bernoulli decoder, the prior cfg["vae_prior"]
    build("flow", cfg)         the RealNVP image flow
    build("ddpm", cfg)         the DDPM (its U-Net and noise schedule)
    build("classifier", cfg)   the CNN whose penultimate layer gives the FID/KID features ([quality] section)

The recipes train what `build` returns, `trained.load` fills it with a run's weights, the precision probe
times it and the memory plan sizes it, so a model's shape is decided in one place. The image shape and
class count come from the dataset (`cfg["dataset"]`). Weights are drawn from torch's global generator:
seed it first for a reproducible start (the recipes do).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .. import data, flows, priors, vae
from ..classifier import MNISTClassifier
from ..diffusion import DDPMConfig, build_ddpm
from . import config

SECTIONS = ("priors", "quality_vae", "flow", "ddpm", "classifier")
PRIOR_KEY = {"priors": "prior", "quality_vae": "vae_prior"}  # the VAEs' sections -> the key naming their prior
_DECODER = {"priors": "bernoulli", "quality_vae": "continuous_bernoulli"}


def build(section: str, cfg: Mapping[str, Any]) -> nn.Module:
    """The untrained model of `section` sized by `cfg` (a resolved section; "auto" precisions may stay)."""
    if section not in SECTIONS:
        raise ValueError(f"section={section!r} has no model; choose one of {', '.join(SECTIONS)}")
    info = data.info(cfg.get("dataset", "mnist"))
    if section in PRIOR_KEY:
        key = PRIOR_KEY[section]
        if key not in cfg:
            raise ValueError(f"a {section} VAE needs cfg[{key!r}], the prior's name (gen_lib.priors.REGISTRY)")
        name = cfg[key]
        return vae.build_vae(name, likelihood=_DECODER[section], image_shape=info.shape,
                             prior_params=priors.params(name, cfg))
    if section == "flow":
        return flows.build_image_flow(cfg["n_layers"], cfg["hidden"], cfg["logit_alpha"] or None,
                                      image_shape=info.shape, actnorm=cfg["actnorm"])
    if section == "ddpm":
        return build_ddpm(config.make(DDPMConfig, dict(cfg)), shape=info.shape)
    return MNISTClassifier(cfg["feature_dim"], n_classes=len(info.classes), image_shape=info.shape)
