"""Each trained model's step against the machine's matrix ceiling: a float32 2048 x 2048 `torch.mm` at the same
thread count (GFLOP/s), against one training step (forward, backward, fused Adam) of Part 1's VAE, the image flow
and the U-Net at the default profile's sizes, in float32 and in the precision `gen_lib.study.precision` chose
here. The step's FLOPs are counted by torch's FlopCounterMode (matrix products and convolutions); its share of
the ceiling is (FLOPs / step time) / ceiling. A share far below the others' names a model bound by something
other than its matrix work (the elementwise layers, memory traffic, or the kernels of this CPU).

    python -m benchmarks.bench_steps [--quick]
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from gen_lib.study import config, models, precision

SECTION = {"vae": "priors", "flow": "flow", "unet": "ddpm"}


def mm_ceiling(n: int = 2048, rounds: int = 10) -> float:
    """GFLOP/s of a float32 n x n matrix product at torch's thread count, the best of `rounds`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _step_ms(kind: str, bf16: bool, channels_last: bool, steps: int) -> tuple[float, float]:
    """(GFLOP per step, ms per step: the best of `steps` after one warm-up) of a fresh model of `kind`."""
    cfg = config.resolve(SECTION[kind], "default", _plan=False)
    _, section, build_cfg, batch, loss, _ = precision._candidate(kind, cfg)
    torch.manual_seed(0)
    step = precision.trainer(models.build(section, build_cfg), batch, loss, bf16, channels_last)
    with FlopCounterMode(display=False) as counter:
        step()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return counter.get_total_flops() / 1e9, best * 1e3


def run(quick: bool = False) -> list[dict]:
    rows = []
    top = mm_ceiling(512 if quick else 2048, 3 if quick else 10)
    for kind in ("vae", "flow", "unet"):
        cfg = config.resolve(SECTION[kind], "default", _plan=False)
        chosen = precision.choose(kind, cfg)  # this machine's choice (cached in build/precision.json)
        settings = {"float32": (False, kind == "unet" and chosen["channels_last"] and not chosen["bf16"])}
        if chosen["bf16"]:
            settings["chosen: bf16"] = (True, chosen["channels_last"])
        for name, (bf16, cl) in settings.items():
            gflop, ms = _step_ms(kind, bf16, cl, 2 if quick else (5 if kind == "unet" else 20))
            share = gflop / ms * 1e3 / top
            rows.append({"what": f"{kind} step, {name}{', channels_last' if cl else ''}: share of the mm ceiling",
                         "baseline": round(top, 1), "ours": round(gflop / ms * 1e3, 1), "ratio": share,
                         "unit": "GFLOP/s", "note": f"{gflop:.2f} GFLOP in {ms:.1f} ms"})
    return rows


if __name__ == "__main__":
    from gen_lib import system

    system.configure_threads()
    import sys
    for row in run(quick="--quick" in sys.argv):
        print(row)
