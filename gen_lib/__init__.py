"""gen_lib: deep generative models for MNIST (VAE priors, RealNVP, DDPM) and their metrics.

Floors, imports pointing down only (CONTRIBUTING.md, tests/test_layers.py): `paths`, `system`, `stats`;
the models and their numerical methods (`data`, `priors`, `flows`, `unet`, `samplers`, `diffusion`, `diffusion_nll`,
`vae`, `quadrature`, `vae_eval`, `classifier`, `sample_sets`, `seeds`), `training` (one loop: one model or stacked
seeds) and its `checkpoints`; the scores (`features`, `metrics`, `intervals`: feature maps, scores and their
intervals, from tensors, importing nothing of the study); `study` (profiles, precision, run identity, recipes, the
lookups of trained models, cache; it registers each dataset's trained classifier as a feature map); `report` (the
report's sentences, tables, plots, pages, explorers); the runner (`run`, `chunks`, `measure`).

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
