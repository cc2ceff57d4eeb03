"""Interactive exploration of the trained models with ipywidgets, on the cached checkpoints only.

Three explorers, one per kind of model, each in its own module and reachable from here:

* `LatentExplorer` (`explore_latent`): the 2-D latent plane of each prior's VAE (01_priors).
* `DiffusionExplorer` and `denoising_trajectory` (`explore_diffusion`): the DDPM's reverse process
  (03_ddpm), ancestral beside DDIM from the same x_T.
* `FlowExplorer` (`explore_flow`): the RealNVP flow (02_flow), samples at a temperature τ and test
  images walked data → base, layer by layer.

The explorers take models; `gen_lib.study.trained` (`load_vaes`, `load_flow`, `load_ddpm`) loads what
notebooks 01_priors, 02_flow and 03_ddpm trained under a profile.
"""

from __future__ import annotations

from .explore_diffusion import DiffusionExplorer, denoising_trajectory
from .explore_flow import FlowExplorer
from .explore_latent import LatentExplorer

__all__ = ["LatentExplorer", "DiffusionExplorer", "FlowExplorer", "denoising_trajectory"]
