"""Flow training speed: one Adam step of the study's image flow (20 couplings, hidden 256,
batch 128) in fp32 vs bf16 autocast, extrapolated to an epoch of the 50,000 "fit" images, and the
difference the autocast makes to the log-likelihood (bits/dim) of the same weights.

The two precisions step in turn (A, B, A, B, ...) so that a shared, loaded machine slows
both alike; the ratio is the median of the paired wall times. Process CPU time per step
is reported beside it (less sensitive to other programs on the machine).

    python -m benchmarks.bench_flow [--quick]
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import torch

from benchmarks import ceiling
from gen_lib import data, training
from gen_lib.flows import bits_per_dim, build_image_flow


def _setup(device: torch.device, n_layers: int, hidden: int):
    torch.manual_seed(0)
    flow = build_image_flow(n_layers, hidden).to(device)
    return flow, torch.optim.Adam(flow.parameters(), lr=1e-3)


def _step(flow, opt, y: torch.Tensor, bf16: bool, device: torch.device) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    with training.autocast(device, bf16):
        loss = flow.loss(y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(quick: bool = False) -> list[dict]:
    device = training.default_device()
    x_all, _ = data.load_mnist("train")
    batch = 128
    if quick:  # a small flow, a few steps: seconds
        steps, warmup, n_layers, hidden = 3, 1, 4, 64
    else:
        steps, warmup, n_layers, hidden = 25, 3, 20, 256
    models = {False: _setup(device, n_layers, hidden), True: _setup(device, n_layers, hidden)}
    gen = torch.Generator().manual_seed(0)
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for i in range(warmup + steps):
        y = data.dequantize(x_all[(i * batch) % 50_000:][:batch], generator=gen).to(device)
        for bf16 in ((False, True) if i % 2 == 0 else (True, False)):
            t = _step(*models[bf16], y, bf16, device)
            if i >= warmup:
                times[bf16].append(t)
    # the fp32-trained weights scored on one held-out batch, fp32 vs bf16 autocast
    flow = models[False][0]
    y = data.dequantize(x_all[-batch:], generator=gen).to(device)
    with torch.no_grad():
        lp32 = flow.log_prob(y)
        with training.autocast(device, True):
            lp16 = flow.log_prob(y)
    gap = (bits_per_dim(lp16) - bits_per_dim(lp32)).abs().mean().item()

    torch.manual_seed(0)  # the ceiling: one step's GEMMs alone (benchmarks.ceiling), on a fresh copy
    y = data.dequantize(x_all[:batch], generator=gen).to(device)
    top = ceiling.ceiling(lambda m=_setup(device, n_layers, hidden): _step(*m, y, False, device), draws=1)

    def loop(bf16: bool):  # a fresh copy's median of 3 steps in ms, for the fraction of the ceiling around it
        m = _setup(device, n_layers, hidden)
        _step(*m, y, bf16, device)  # warm-up (kernel selection)
        return lambda: 1e3 * statistics.median(_step(*m, y, bf16, device)[0] for _ in range(3))
    paired = ceiling.paired(top, {"fp32": loop(False), "bf16": loop(True)}, rounds=1 if quick else 5)
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    ratio = statistics.median(a[0] / b[0] for a, b in zip(times[False], times[True]))
    per_epoch = math.ceil(50_000 / batch)
    load = open("/proc/loadavg").read().split()[0] if sys.platform.startswith("linux") else "?"
    note = (f"{n_layers} couplings, hidden {hidden}, batch {batch}; {steps} interleaved step pairs after {warmup}; "
            f"{device.type}, {torch.get_num_threads()} threads, load {load}; median CPU time/step fp32 "
            f"{cpu[False] * 1e3:.0f} ms, bf16 {cpu[True] * 1e3:.0f} ms (ratio {cpu[False] / cpu[True]:.2f}); "
            f"|bf16 - fp32| log-likelihood of the same weights {gap:.4f} bits/dim")
    return [{
        "what": f"flow training epoch ({per_epoch} steps of {batch}, extrapolated from the median step)",
        "baseline": f"fp32: {wall[False] * per_epoch:.0f} s/epoch ({wall[False] * 1e3:.0f} ms/step)",
        "ours": f"bf16 autocast: {wall[True] * per_epoch:.0f} s/epoch ({wall[True] * 1e3:.0f} ms/step)",
        "ratio": ratio,
        "unit": "s/epoch",
        "note": note,
    }, {
        "what": f"flow training step ({n_layers} couplings, hidden {hidden}, batch {batch}), as a fraction of the ceiling",
        "baseline": (f"fp32: {statistics.median(paired['fp32']['ms']):.0f} ms = "
                     f"{ceiling.spread(paired['fp32']['fraction'])} of the ceiling"),
        "ours": (f"bf16 autocast: {statistics.median(paired['bf16']['ms']):.0f} ms = "
                 f"{ceiling.spread(paired['bf16']['fraction'])} of the ceiling"),
        "ratio": ratio, "unit": "ms/step",
        "note": (f"ceiling {ceiling.spread(paired['ceiling'], '{:.1f}')} ms over the run: the step's {top['ops']} GEMMs "
                 f"({top['gflop']:.2f} GFLOP) alone in {top['dtype']} (first measured: fp32 "
                 f"{top['by_dtype']['float32']:.1f} ms, bf16 {top['by_dtype']['bfloat16']:.1f} ms); fractions: median "
                 f"(min-max) of {len(paired['fp32']['ms'])} rounds, each the median of 3 steps against the ceiling "
                 "replayed just before and after it (benchmarks.ceiling.paired)"),
    }]


if __name__ == "__main__":
    from gen_lib import system

    system.configure_threads()
    for row in run(quick="--quick" in sys.argv):
        print(row)
