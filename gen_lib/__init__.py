"""gen_lib: deep generative models for MNIST (VAE priors, RealNVP, DDPM) and their metrics.

One concept per module: `data`, `config`, `training`, `recipes`, `cache`, `priors`, `vae`,
`flows`, `unet`, `diffusion`, `sampling`, `classifier`, `metrics`, `stats`, `plots`, `report`, `run`;
the CPU training step's speed: `seeds` (a prior's seeds as one stacked model), `kernels` (two small C
kernels compiled on the machine), `precision` (bf16 or float32, measured per machine).

Plugins: GEN_LIB_PLUGINS may name modules (comma-separated, importable from PYTHONPATH) that are
imported with gen_lib, so that what they register (a prior, a sampler, a dataset, a feature map)
is in the registries of every process that imports gen_lib: the notebooks' kernels, the tests,
the runner. CONTRIBUTING.md shows one.
"""

import importlib as _importlib
import os as _os

__version__ = "0.1.0"

for _name in filter(None, (n.strip() for n in _os.environ.get("GEN_LIB_PLUGINS", "").split(","))):
    _importlib.import_module(_name)
