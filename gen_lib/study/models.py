"""One build per model of the study: the untrained network that a resolved configuration section describes.

    build("priors", cfg)       Part 1's VAE: binarized data, Bernoulli decoder, the prior cfg["prior"]
    build("quality_vae", cfg)  Part 2's VAE: continuous Bernoulli decoder, the prior cfg["prior"]
    build("flow", cfg)         the RealNVP image flow
    build("ddpm", cfg)         the DDPM (its U-Net and noise schedule)
    build("classifier", cfg)   the CNN whose penultimate layer gives the FID/KID features

Each run is configured by the section of its name (`gen_lib.study.sections`); the fields it marks `model=True`
are passed to the model's constructor by name (`sections.model_args`), so a size is declared once. The recipes
train what `build` returns, `trained.load` fills it with a run's weights, the precision probe times it and the
memory plan sizes it. The image shape and class count come from the dataset (`cfg["dataset"]`). Weights are
drawn from torch's global generator: seed it first for a reproducible start (the recipes do).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .. import data, flows, priors, vae
from ..classifier import MNISTClassifier
from ..diffusion import build_ddpm
from . import sections

_DECODER = {"priors": "bernoulli", "quality_vae": "continuous_bernoulli"}  # the VAEs' runs


def build(section: str, cfg: Mapping[str, Any]) -> nn.Module:
    """The untrained model of `section` sized by `cfg` (a resolved section; "auto" precisions may stay)."""
    if section not in sections.RUNS:
        raise ValueError(f"section={section!r} has no model; choose one of {', '.join(sections.RUNS)}")
    info = data.info(cfg.get("dataset", "mnist"))
    if section in _DECODER:  # Part 1's section names no prior: each of its runs adds one
        if "prior" not in cfg:
            raise ValueError(f"a {section} VAE needs cfg['prior'], the prior's name (gen_lib.priors.REGISTRY)")
        return vae.build_vae(cfg["prior"], likelihood=_DECODER[section], image_shape=info.shape,
                             prior_params=priors.params(cfg["prior"], cfg))
    args = sections.model_args(section, cfg)
    if section == "flow":  # the section's 0 is the flow's None: no logit pre-transform
        return flows.build_image_flow(**{**args, "logit_alpha": args["logit_alpha"] or None}, image_shape=info.shape)
    if section == "ddpm":
        return build_ddpm(**args, shape=info.shape)
    return MNISTClassifier(**args, n_classes=len(info.classes), image_shape=info.shape)
