"""Every "profile -> trained model" lookup of the study, in one place: where a trained run lives and how to
load it, found without training, without timing a step and without creating a folder.

- `trained_path`, `run_folder`, `history`, `load`: the checkpoint, folder, per-epoch history and model of the run
  that a recipe of `gen_lib.study.recipes` trained under a resolved configuration (the same run folder).
- `load_vaes`, `load_flow`, `load_ddpm`: what notebooks 01_priors, 02_flow and 03_ddpm trained under a profile
  (the explorers' models, and 04_quality's).
- `load_classifier`: the feature classifier that 04_quality trained for a dataset under a profile. Importing
  this module registers each dataset's classifier as the feature map of the dataset's name in
  `gen_lib.features` (so `gen_lib.metrics.sample_quality(real, fake, features="mnist")` finds it);
  `gen_lib.study.plan` (so `gen_lib.report`), `gen_lib.run` and `gen_lib.measure` import it.

A model that was never trained, or whose training stopped early, is a FileNotFoundError naming the notebook (and
recipe) that trains it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .. import checkpoints, data, features, flows, priors, vae
from ..diffusion import DDPM
from ..training import default_device
from . import cache, config, models, recipes, sections


def trained_path(section: str, cfg: Mapping[str, Any]) -> Path:
    """The checkpoint a trained run of `section` under `cfg` has. An "auto" precision is read from this machine's
    cached choice; one not settled here yet is tried both ways (a build folder may come from another machine).
    The settled run's path when no checkpoint exists."""
    cfg = recipes.settled(section, cfg, measure=False)
    autos = [k for k in recipes.IDENTITY[section] if cfg.get(k) == config.AUTO]  # precisions not settled here
    options = [dict(zip(autos, values)) for values in itertools.product((False, True), repeat=len(autos))]
    paths = [cache.run_path(section, recipes.run_key(section, {**cfg, **o}, measure=False)) / "model.pt"
             for o in options]
    return next((p for p in paths if p.exists()), paths[0])


def run_folder(section: str, cfg: Mapping[str, Any]) -> Path:
    """`build/runs/<section>/<hash>/`, the folder of the trained run of `section` under `cfg`, where results
    computed from its model are cached (not created here: the recipe that trained the model did)."""
    return trained_path(section, cfg).parent


def _how(section: str, cfg: Mapping[str, Any]) -> str:
    notebook, recipe = sections.TRAINED_BY[section]
    profile, dataset = cfg.get("profile", "default"), cfg.get("dataset", "mnist")
    return (f"train it with gen_lib.study.recipes.{recipe}, or run notebook {notebook} first "
            f"(python -m gen_lib.run --profile {profile} --dataset {dataset} --only {notebook} --no-pdf)")


def load(section: str, cfg: Mapping[str, Any], *, device: torch.device | str = "cpu", ema: bool = True) -> nn.Module:
    """The trained model of `section` under the resolved configuration `cfg` (as its recipe trained it: the same
    run folder), in eval mode on `device` (the weights in the dtypes `models.build` gives them, whatever the
    training precision); a DDPM with its EMA weights unless `ema=False`.

    Raises FileNotFoundError naming the notebook (and recipe) to run when the model was not trained, or its
    training stopped before the configured epochs.
    """
    if section not in sections.TRAINED_BY:
        raise ValueError(f"section={section!r} has no recipe; choose one of {', '.join(sections.TRAINED_BY)}")
    profile, dataset = cfg.get("profile", "default"), cfg.get("dataset", "mnist")
    what = "classifier" if section == "classifier" else f"{section} model"
    path = trained_path(section, cfg)
    if not path.exists():
        raise FileNotFoundError(f"no trained {dataset} {what} for profile {profile!r} at {path}; "
                                f"{_how(section, cfg)}")
    ckpt = checkpoints.load_checkpoint(path)  # the folder is the configuration's: its hash names it
    epochs = sum(cfg[k] for k in recipes.EPOCHS[section])
    if ckpt.get("epoch", epochs) < epochs:
        raise FileNotFoundError(f"the {dataset} {what} at {path} stopped after {ckpt['epoch']} of {epochs} epochs "
                                f"(an interrupted run); {_how(section, cfg)}")
    model = models.build(section, cfg)
    model.load_state_dict(ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"])
    return model.to(device).eval()


def history(section: str, cfg: Mapping[str, Any]) -> list[dict[str, float]]:
    """The per-epoch history that the trained run of `section` under `cfg` stored in its checkpoint."""
    path = trained_path(section, cfg)
    if not path.exists():
        raise FileNotFoundError(f"no trained {section} run at {path}; run notebook {sections.TRAINED_BY[section][0]} first")
    return checkpoints.load_checkpoint(path)["history"]


# ---------------------------------------------------------------- by profile


def load_vaes(profile: str, dataset: str = "mnist", seed: int = 0,
              names: tuple[str, ...] | None = None) -> dict[str, vae.VAE]:
    """The VAE of every prior (seed `seed`) that 01_priors trained under `profile`, in eval mode on the CPU."""
    cfg = config.resolve("priors", profile, dataset=dataset)
    if not 0 <= seed < cfg["seeds"]:
        raise ValueError(f"seed={seed}: profile {profile!r} trains seeds 0..{cfg['seeds'] - 1}")
    return {name: load("priors", {**cfg, "prior": name, "seed": seed})
            for name in names or priors.select(cfg.get("priors"))}


def load_flow(profile: str, dataset: str = "mnist", device: torch.device | str = "cpu") -> flows.ImageFlow:
    """The image flow that 02_flow trained under `profile`, in float32 and eval mode."""
    return load("flow", config.resolve("flow", profile, dataset=dataset), device=device)


def load_ddpm(profile: str, dataset: str = "mnist", device: torch.device | str = "cpu") -> DDPM:
    """The DDPM that 03_ddpm trained under `profile`, with the EMA weights it samples from, in eval mode."""
    return load("ddpm", config.resolve("ddpm", profile, dataset=dataset), device=device)


def load_classifier(dataset: str = "mnist", profile: str = "default") -> nn.Module:
    """The classifier that notebook 04_quality trained for `dataset` under `profile`, on this process's device."""
    return load("classifier", config.resolve("classifier", profile, dataset=dataset), device=default_device())


def classifier_features(dataset: str) -> features.FeatureBuilder:
    """The feature-map builder of `dataset`'s name: profile -> the penultimate layer of its trained classifier."""

    def trained_classifier_features(profile: str = "default") -> features.FeatureMap:
        return load_classifier(dataset, profile).features

    return trained_classifier_features


def register_classifier_features() -> None:
    """Register each dataset of `gen_lib.data.INFO` whose name is not yet a feature map as its classifier's
    features. Runs when this module is imported (plugins have registered their datasets by then)."""
    for dataset in data.INFO:
        if dataset not in features.FEATURES:
            features.register_features(dataset, classifier_features(dataset))


register_classifier_features()
