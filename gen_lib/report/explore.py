"""Interactive exploration of the trained models with ipywidgets, on the cached checkpoints only.

Three explorers, one per kind of model, each in its own module and reachable from here:

* `LatentExplorer` (`explore_latent`): the 2-D latent plane of each prior's VAE (01_priors).
* `DiffusionExplorer` and `denoising_trajectory` (`explore_diffusion`): the DDPM's reverse process
  (03_ddpm), ancestral beside DDIM from the same x_T.
* `FlowExplorer` (`explore_flow`): the RealNVP flow (02_flow), samples at a temperature τ and test
  images walked data → base, layer by layer.

The loaders (`load_vaes`, `load_flow`, `load_ddpm`) resolve the profile's configuration and load what
notebooks 01_priors, 02_flow and 03_ddpm trained with it (`recipes.load`: the same run folder); they
never train. A missing checkpoint is an error that names the notebook to run first.
"""

from __future__ import annotations

import torch

from .. import flows, priors, vae
from ..diffusion import DDPM
from ..study import config, recipes
from .explore_diffusion import DiffusionExplorer, denoising_trajectory
from .explore_flow import FlowExplorer
from .explore_latent import LatentExplorer


def load_vaes(profile: str, dataset: str = "mnist", seed: int = 0,
              names: tuple[str, ...] | None = None) -> dict[str, vae.VAE]:
    """The VAE of every prior (seed `seed`) that 01_priors trained under `profile`, in eval mode on the CPU."""
    cfg = config.resolve("priors", profile, dataset=dataset)
    if not 0 <= seed < cfg["seeds"]:
        raise ValueError(f"seed={seed}: profile {profile!r} trains seeds 0..{cfg['seeds'] - 1}")
    return {name: recipes.load("priors", {**cfg, "prior": name, "seed": seed})
            for name in names or priors.select(cfg.get("priors"))}


def load_flow(profile: str, dataset: str = "mnist", device: torch.device | str = "cpu") -> flows.ImageFlow:
    """The image flow that 02_flow trained under `profile`, in float32 and eval mode."""
    return recipes.load("flow", config.resolve("flow", profile, dataset=dataset), device=device)


def load_ddpm(profile: str, dataset: str = "mnist", device: torch.device | str = "cpu") -> DDPM:
    """The DDPM that 03_ddpm trained under `profile`, with the EMA weights it samples from, in eval mode."""
    return recipes.load("ddpm", config.resolve("ddpm", profile, dataset=dataset), device=device)


__all__ = ["LatentExplorer", "DiffusionExplorer", "FlowExplorer", "load_vaes", "load_flow", "load_ddpm",
           "denoising_trajectory"]
