"""Batched, seeded, timed sampling from any model: the one loop behind every set of samples that a
notebook saves or shows (the flow's, the DDPM's for each sampler and step count, the VAE's).

A model is given as a function `sample(n, generator) -> images (n, C, H, W)`; `draw` calls it in
batches of at most `batch_size` (so memory is bounded by one batch, whatever n), with one generator
seeded by `seed` for the whole run (so the same seed gives the same images), and measures the wall
time per image. The result is a plain dict, so `cache.memo` can keep it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

Sampler = Callable[[int, torch.Generator], torch.Tensor]


@torch.no_grad()
def draw(sample: Sampler, n: int, *, batch_size: int, seed: int, device: torch.device | str = "cpu"
         ) -> dict[str, Any]:
    """n images from `sample(k, generator)` in batches of at most `batch_size`, the generator on `device`
    seeded by `seed`: {"images": (n, C, H, W) float32 on the CPU, "seconds_per_sample": wall time / n}."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n={n} and batch_size={batch_size} must be >= 1")
    generator = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    images = torch.cat([sample(min(batch_size, n - i), generator).float().cpu() for i in range(0, n, batch_size)])
    return {"images": images, "seconds_per_sample": (time.perf_counter() - t0) / n}
