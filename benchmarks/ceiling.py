"""The machine's ceiling for a training step: the time PyTorch itself needs for the step's matrix products
and convolutions, run alone.

`record(step)` runs one training step under a `TorchDispatchMode` that notes every GEMM and convolution
(forward and backward: aten mm, addmm, bmm, convolution, convolution_backward) with its operands' shapes,
strides and non-tensor arguments. `replay(calls, dtype)` runs exactly those operations again on random
operands of the same layout in `dtype`, back to back, and returns the best of several rounds in ms.
`ceiling(step)` is the faster of float32 and bf16: what this machine can do for the model's dominant
work at best, whichever precision the training loop uses. A loop's step time divided into it is the
fraction of the ceiling the loop reaches (1.0 would mean everything around the products is free).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_OPS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.convolution.default,
        aten.convolution_backward.default}


class _Spec:
    def __init__(self, t: torch.Tensor):
        self.shape, self.stride, self.dtype, self.device = tuple(t.shape), tuple(t.stride()), t.dtype, t.device


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _OPS:
            spec = lambda a: _Spec(a) if isinstance(a, torch.Tensor) else a  # noqa: E731
            self.calls.append((func, tuple(spec(a) for a in args), {k: spec(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def record(step: Callable[[], None]) -> list[tuple[Any, tuple, dict]]:
    """The GEMMs and convolutions of one call of `step` (run in float32, outside autocast)."""
    rec = _Recorder()
    with rec:
        step()
    return rec.calls


def _materialise(a: Any, dtype: torch.dtype) -> Any:
    if not isinstance(a, _Spec):
        return a
    out_dtype = dtype if a.dtype.is_floating_point else a.dtype
    return torch.empty_strided(a.shape, a.stride, dtype=out_dtype, device=a.device).normal_()


def replay(calls: list[tuple[Any, tuple, dict]], dtype: torch.dtype, rounds: int = 5, min_seconds: float = 0.2) -> float:
    """Milliseconds for running `calls` once in `dtype` (best round; each round repeats the list for at
    least `min_seconds`)."""
    ready = [(f, tuple(_materialise(a, dtype) for a in args), {k: _materialise(v, dtype) for k, v in kw.items()})
             for f, args, kw in calls]
    cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for _, args, _ in ready for a in args)

    def once():
        for f, args, kw in ready:
            f(*args, **kw)

    once()  # warm-up (allocator, kernel selection)
    best = float("inf")
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while True:
            once()
            n += 1
            if cuda:
                torch.cuda.synchronize()
            if time.perf_counter() - t0 >= min_seconds:
                break
        best = min(best, (time.perf_counter() - t0) / n * 1000)
    return best


def ceiling(step: Callable[[], None], dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
            draws: int = 2) -> dict[str, Any]:
    """{"ms": the faster dtype's time, "dtype": its name, "by_dtype": {name: ms}, "ops": count, "gflop": of one step}."""
    calls = record(step)
    # The best of `draws` replays, each on freshly allocated operands: the same bf16 GEMMs ran 1.29 or 1.72 ms
    # depending on where their operands landed in memory (measured); the ceiling is what the machine can do.
    by = {str(d).removeprefix("torch."): min(replay(calls, d) for _ in range(draws)) for d in dtypes}
    best = min(by, key=by.get)
    return {"ms": by[best], "dtype": best, "by_dtype": by, "ops": len(calls), "gflop": _gflop(calls)}


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The best of several `ceiling` results of one step (measured at different times, e.g. between the rounds of
    the loops compared with it: the machine's speed drifts, by 30 % within a minute on a shared one)."""
    by = {d: min(r["by_dtype"][d] for r in results) for d in results[0]["by_dtype"]}
    fastest = min(by, key=by.get)
    return {**results[0], "ms": by[fastest], "dtype": fastest, "by_dtype": by}


def _gflop(calls) -> float:
    total = 0.0
    for f, args, _ in calls:
        if f in (aten.mm.default, aten.bmm.default):
            a, b = args[0], args[1]
            total += 2 * torch.Size(a.shape).numel() * b.shape[-1]
        elif f == aten.addmm.default:
            a, b = args[1], args[2]
            total += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        elif f == aten.convolution.default:  # 2 * output elements * (C_in / groups) * kernel area
            x, w = args[0], args[1]
            out = [(x.shape[2 + i] + 2 * args[4][i] - args[5][i] * (w.shape[2 + i] - 1) - 1) // args[3][i] + 1
                   for i in range(2)]
            total += 2 * x.shape[0] * w.shape[0] * out[0] * out[1] * w.shape[1] * w.shape[2] * w.shape[3]
        elif f == aten.convolution_backward.default:  # input and weight gradients: each about the forward's cost
            g, x, w, mask = args[0], args[1], args[2], args[10]
            fwd = 2 * g.shape[0] * g.shape[1] * g.shape[2] * g.shape[3] * w.shape[1] * w.shape[2] * w.shape[3]
            total += fwd * (int(mask[0]) + int(mask[1]))
    return total / 1e9
