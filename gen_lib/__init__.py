"""gen_lib: deep generative models for MNIST (VAE priors, RealNVP, DDPM) and their metrics.

One concept per module: `data`, `config`, `training`, `cache`, `priors`, `vae`,
`flows`, `unet`, `diffusion`, `classifier`, `metrics`, `plots`, `report`, `run`.
"""

__version__ = "0.1.0"
