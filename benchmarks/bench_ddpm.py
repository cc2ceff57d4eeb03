"""DDPM speed: U-Net training step fp32 vs bf16 autocast (± channels_last), and time per
sample of DDIM-50/100 against the T = 1000-step ancestral sampler (same network, same machine).

    python -m benchmarks.bench_ddpm [--quick]
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchmarks import ceiling
from gen_lib.study import config, models, sections


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _train_step(cfg: sections.DDPMSection, batch: int, bf16: bool, channels_last: bool):
    """One training step of a fresh U-Net of `cfg` (a function, called repeatedly)."""
    torch.manual_seed(0)
    ddpm = models.build("ddpm", cfg)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ddpm.to(memory_format=fmt)
    opt = torch.optim.Adam(ddpm.parameters(), lr=1e-3)
    x = (torch.rand(batch, 1, 28, 28) * 2 - 1).contiguous(memory_format=fmt)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = ddpm.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    return step


def _train_step_time(cfg: sections.DDPMSection, batch: int, bf16: bool, channels_last: bool, reps: int) -> float:
    return _median_time(_train_step(cfg, batch, bf16, channels_last), reps)


def _sample_time(ddpm, n: int, steps: int, method: str, bf16: bool) -> float:
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    ddpm.sample(n, steps=steps, method=method, generator=g, bf16=bf16)
    return (time.perf_counter() - t0) / n


def run(quick: bool = False) -> list[dict]:
    """Rows for build/bench.md: ratio > 1 means ours (bf16, DDIM) is faster."""
    load = os.getloadavg()[0]
    note = f"{torch.get_num_threads()} threads, load {load:.1f}"
    if quick:  # seconds: a tiny U-Net and T = 100
        cfg = config.resolve("ddpm", "smoke", _plan=False).updated({"T": 100})  # c0 = 8, one block per level
        batch, reps, n, fast, slow = 8, 1, 2, (5, 10), 100
    else:  # the default profile's U-Net at its batch size
        cfg = config.resolve("ddpm", "default")
        batch, reps, n, fast, slow = cfg.batch_size, 5, 16, (50, 100), cfg.T
    rows = []
    fp32 = _train_step_time(cfg, batch, False, False, reps)
    bf16 = _train_step_time(cfg, batch, True, False, reps)
    bf16_cl = _train_step_time(cfg, batch, True, True, reps)
    fp32_cl = _train_step_time(cfg, batch, False, True, reps)
    width = f"c0={cfg.base_channels}, mults {cfg.channel_mults}, n_res {cfg.n_res}"
    settings = {"fp32": (False, False), "bf16": (True, False), "bf16+channels_last": (True, True),
                "fp32+channels_last": (False, True)}
    best_name, best = min(zip(settings, (fp32, bf16, bf16_cl, fp32_cl)), key=lambda kv: kv[1])
    # the fraction of the ceiling: the step's convolutions and GEMMs alone (recorded in fp32), replayed just before
    # and after each measurement of fp32 and of the fastest setting (benchmarks.ceiling.paired)
    top = ceiling.ceiling(_train_step(cfg, batch, False, False), draws=1)
    steps = {name: _train_step(cfg, batch, *settings[name]) for name in dict.fromkeys(("fp32", best_name))}
    for step in steps.values():
        step()  # warm-up
    paired = ceiling.paired(top, {name: (lambda s=step: 1e3 * _median_time(s, 2)) for name, step in steps.items()},
                            rounds=1 if quick else 3)
    ms = {name: statistics.median(paired[name]["ms"]) for name in steps}
    rows.append({"what": f"DDPM U-Net training step ({width}, batch {batch}), as a fraction of the ceiling",
                 "baseline": f"fp32: {ms['fp32']:.0f} ms = {ceiling.spread(paired['fp32']['fraction'])} of the ceiling",
                 "ours": (f"fastest here, {best_name}: {ms[best_name]:.0f} ms = "
                          f"{ceiling.spread(paired[best_name]['fraction'])} of the ceiling"),
                 "ratio": fp32 / best, "unit": "s/step",
                 "note": (f"ceiling {ceiling.spread(paired['ceiling'], '{:.0f}')} ms over the run: the step's {top['ops']} "
                          f"convolutions and GEMMs ({top['gflop']:.1f} GFLOP) alone in {top['dtype']} (first measured: "
                          f"fp32 {top['by_dtype']['float32']:.0f} ms, bf16 {top['by_dtype']['bfloat16']:.0f} ms); "
                          f"fractions: median (min-max) of {len(paired['fp32']['ms'])} rounds, each the median of 2 steps "
                          "against the ceiling replayed just before and after it; the notebooks' choice: gen_lib.study.precision")})
    for name, t in (("bf16 autocast", bf16), ("bf16 autocast + channels_last", bf16_cl)):
        rows.append({"what": f"DDPM U-Net training step ({width}, batch {batch})",
                     "baseline": f"fp32: {fp32:.3f} s", "ours": f"{name}: {t:.3f} s", "ratio": fp32 / t,
                     "unit": "s/step", "note": note + "; target >= 1.8x on a CPU with bf16 (AVX512-BF16/AMX)"})

    torch.manual_seed(0)
    ddpm = models.build("ddpm", cfg).eval()
    use_bf16 = bf16 < fp32
    ancestral = _sample_time(ddpm, n, slow, "ancestral", use_bf16)
    for steps in fast:
        ddim = _sample_time(ddpm, n, steps, "ddim", use_bf16)
        rows.append({"what": f"DDPM sampling time per image ({n} images, {'bf16' if use_bf16 else 'fp32'})",
                     "baseline": f"ancestral {slow} steps: {ancestral * 1e3:.1f} ms",
                     "ours": f"DDIM {steps} steps: {ddim * 1e3:.1f} ms", "ratio": ancestral / ddim,
                     "unit": "ms/image", "note": note + (f"; target DDIM-{fast[1]} >= 10x" if steps == fast[1] else "")})
    fp32_sample = _sample_time(ddpm, n, fast[0], "ddim", False)
    bf16_sample = _sample_time(ddpm, n, fast[0], "ddim", True)
    rows.append({"what": f"DDPM sampling, DDIM-{fast[0]} ({n} images)", "baseline": f"fp32: {fp32_sample * 1e3:.1f} ms",
                 "ours": f"bf16 autocast: {bf16_sample * 1e3:.1f} ms", "ratio": fp32_sample / bf16_sample,
                 "unit": "ms/image", "note": note})
    return rows


if __name__ == "__main__":
    from gen_lib import system

    system.configure_threads()
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(f"{row['what']}: {row['baseline']} vs {row['ours']} -> {row['ratio']:.2f}x ({row['note']})")
