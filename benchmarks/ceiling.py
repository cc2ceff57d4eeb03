"""The machine's ceiling for a training step: the time PyTorch itself needs for the step's matrix products
and convolutions, run alone.

`record(step)` runs one training step under a `TorchDispatchMode` that notes every GEMM and convolution
(forward and backward: aten mm, addmm, bmm, convolution, convolution_backward) with its operands' shapes,
strides and non-tensor arguments. `replay(calls, dtype)` runs exactly those operations again on random
operands of the same layout in `dtype`, back to back, and returns the best of several rounds in ms.
`ceiling(step)` is the faster of float32 and bf16: what this machine can do for the model's dominant
work at best, whichever precision the training loop uses. A loop's step time divided into it is the
fraction of the ceiling the loop reaches (1.0 would mean everything around the products is free).
`paired(top, loops, rounds)` measures that fraction with the ceiling replayed just before and just after each
loop, so that the machine's drifting speed cancels.
"""

from __future__ import annotations

import statistics
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
    # random storage viewed with the recorded strides (also the overlapping ones of an expanded tensor, e.g. the
    # gradient of a sum, which a tensor of those strides could not be filled through)
    size = 1 + sum((n - 1) * st for n, st in zip(a.shape, a.stride)) if all(a.shape) else 0
    return torch.empty(size, dtype=out_dtype, device=a.device).normal_().as_strided(a.shape, a.stride)


def _prepare(calls: list[tuple[Any, tuple, dict]], dtype: torch.dtype) -> Callable[[], None]:
    """A function running `calls` once in `dtype` on random operands of the recorded layouts (allocated here)."""
    ready = [(f, tuple(_materialise(a, dtype) for a in args), {k: _materialise(v, dtype) for k, v in kw.items()})
             for f, args, kw in calls]
    cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for _, args, _ in ready for a in args)

    def once():
        for f, args, kw in ready:
            f(*args, **kw)
        if cuda:
            torch.cuda.synchronize()
    once()  # warm-up (allocator, kernel selection)
    return once


def _best_ms(once: Callable[[], None], rounds: int, min_seconds: float) -> float:
    best = float("inf")
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while True:
            once()
            n += 1
            if time.perf_counter() - t0 >= min_seconds:
                break
        best = min(best, (time.perf_counter() - t0) / n * 1000)
    return best


def replay(calls: list[tuple[Any, tuple, dict]], dtype: torch.dtype, rounds: int = 5, min_seconds: float = 0.2) -> float:
    """Milliseconds for running `calls` once in `dtype` (best round; each round repeats the list for at
    least `min_seconds`)."""
    return _best_ms(_prepare(calls, dtype), rounds, min_seconds)


def ceiling(step: Callable[[], None], dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
            draws: int = 2) -> dict[str, Any]:
    """{"ms": the faster dtype's time, "dtype": its name, "by_dtype": {name: ms}, "ops": count, "gflop": of one step,
    "calls": the recorded operations}."""
    calls = record(step)
    by = {str(d).removeprefix("torch."): min(replay(calls, d) for _ in range(draws)) for d in dtypes}
    best = min(by, key=by.get)
    return {"ms": by[best], "dtype": best, "by_dtype": by, "ops": len(calls), "gflop": _gflop(calls), "calls": calls}


def paired(top: dict[str, Any], loops: dict[str, Callable[[], float]], rounds: int,
           min_seconds: float = 0.1) -> dict[str, Any]:
    """Each loop's step time against the ceiling measured just before and just after it.

    Why: this machine's speed drifts. The same 17 bf16 GEMMs replayed in 1.28 ms for minutes and then in
    1.65-1.9 ms for minutes (measured; placement in memory made no difference), a shared host's state. A
    fraction whose two times come from different minutes (or a best-of-many ceiling against a best-of-few
    loop) measures the drift as much as the loop. Here each round runs the ceiling (`top` from `ceiling`, in
    its faster dtype), then each loop in turn, replaying the ceiling after each; a loop's fraction in that
    round is the mean of the two replays around it divided by its time.

    `loops`: name -> a function that runs the loop and returns its time per step in ms. Returns
    {"ceiling": [every replay's ms], name: {"ms": [per round], "fraction": [per round]}}.
    """
    once = _prepare(top["calls"], getattr(torch, top["dtype"]))
    before = _best_ms(once, 2, min_seconds)
    out: dict[str, Any] = {"ceiling": [before], **{name: {"ms": [], "fraction": []} for name in loops}}
    for _ in range(rounds):
        for name, loop in loops.items():
            ms = loop()
            after = _best_ms(once, 2, min_seconds)
            out["ceiling"].append(after)
            out[name]["ms"].append(ms)
            out[name]["fraction"].append((before + after) / 2 / ms)
            before = after
    return out


def spread(values: list[float], fmt: str = "{:.0%}") -> str:
    """'median (min-max)' of `values`, each formatted by `fmt`."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


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
