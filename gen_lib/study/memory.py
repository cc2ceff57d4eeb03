"""The memory plan: upper bounds on the peak memory of each evaluation phase, computed from a
profile's chunk and batch sizes, so that a profile can be checked before any time is spent.

The phases whose size grows with the protocol (the `paper` profile: IWAE with K = 5000 on all
10,000 test images, 1000-step ancestral sampling of 10,000 images, FID at N = 10,000) are
chunked or batched; a phase's peak is then set by one chunk or batch, not by K or N. The bounds
are deliberately loose (every intermediate tensor counted as alive at once) and are checked in
the tests against the budgets below: 8 GiB on a CPU, 40 GiB on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import data
from ..vae import IWAE_CHUNK  # decoder evaluations per chunk in `vae_eval.evaluate` (K_c * B <= IWAE_CHUNK)
from . import config, models

CPU_BUDGET = 8 * 2**30
GPU_BUDGET = 40 * 2**30
FEATURE_BATCH = 1000  # images per batch of `features.extract`
PAIRWISE_CHUNK = 1024  # rows per chunk of the pairwise distances (precision/recall, nearest neighbours)


def iwae_chunk_bytes(chunk: int = IWAE_CHUNK, input_dim: int = 784, hidden: int = 512, latent_dim: int = 2,
                     prior_width: int = 64) -> int:
    """Upper bound on one IWAE chunk of `chunk` decoder evaluations (float32, no gradients):
    z and the prior's work (`prior_width` floats per sample: the VampPrior's 16 components, the flow
    prior's 10 layers of width 8), two hidden layers, the logits and two elementwise temporaries of the
    Bernoulli log-probability, all alive at once."""
    return 4 * chunk * (latent_dim + prior_width + 2 * hidden + 3 * input_dim)


@torch.no_grad()
def activation_bytes_per_example(network: nn.Module, *example: torch.Tensor) -> int:
    """Sum of the sizes of every module's output in one forward pass, per example: an upper bound on
    the activations alive at once in a no-grad forward (a U-Net keeps its skip connections, never all)."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in network.modules() if m is not network]
    try:
        network.eval()
        network(*example)
    finally:
        for h in handles:
            h.remove()
    return total // example[0].shape[0]


def fid_bytes(n: int, d: int) -> int:
    """FID/KID/precision/recall at N = n with d-dim features: two feature sets in float64, covariances and
    their matrix square root (a few d x d), and one chunk of pairwise distances to n points."""
    return 8 * (2 * n * d + 8 * d * d + PAIRWISE_CHUNK * n)


def plan(profile: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, int]:
    """Upper bounds in bytes of the peak of each large phase under `profile`: the keys are
    `iwae`, `sampling`, `features` and `fid`."""

    overrides = overrides or {}
    ddpm_cfg = config.resolve("ddpm", profile, **overrides.get("ddpm", {}))  # sizes: no timing
    quality = config.resolve("quality", profile, **overrides.get("quality", {}))
    classifier = config.resolve("classifier", profile, **overrides.get("classifier", {}))
    info = data.info(ddpm_cfg["dataset"])
    ddpm = models.build("ddpm", ddpm_cfg)
    x = torch.zeros(2, *info.shape)
    unet = activation_bytes_per_example(ddpm.network, x, torch.zeros(2, dtype=torch.long))
    weights = sum(p.numel() * p.element_size() for p in ddpm.parameters())
    net = models.build("classifier", classifier)
    n = max(quality["n_eval"], quality["fid_curve_max"])
    return {
        "iwae": iwae_chunk_bytes(input_dim=info.dim),
        # one batch of x_t, its noise and the U-Net's activations, plus the weights (and their EMA copy)
        "sampling": ddpm_cfg["sample_batch"] * (unet + 3 * 4 * info.dim) + 2 * weights,
        "features": FEATURE_BATCH * activation_bytes_per_example(net, x),  # the logits' forward includes the features
        "fid": fid_bytes(n, classifier["feature_dim"]),
    }
