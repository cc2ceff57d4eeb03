"""One Adam update per tensor in a single pass over memory: a small C kernel, compiled on this machine.

Why: the stacked VAE step of `gen_lib.seeds` computes its `Linear` weights' gradients in bf16 (autocast) and
needs bf16 copies of the updated weights for the next forward. With torch's fused Adam that is three passes
over the 5 seeds' 6.7 M parameters, each beyond the L3 cache: convert the gradient to float32, update
(read weight, gradient and both moments, write weight and moments), copy the weight to bf16. This kernel
does all three in one pass, reading the bf16 gradient and writing the bf16 copy as it goes: 40 -> 28 bytes
moved per parameter, 0.77 -> 0.47 ms per seed and step for the Gaussian prior's VAE (`make bench`).

The arithmetic is torch's fused CPU Adam (`torch.optim.Adam(fused=True)`, no weight decay, no amsgrad),
in float32 with torch's order of operations and fused multiply-adds:

    m <- m + (1 - beta1) (g - m)                                   (one fma, as torch's lerp)
    v <- fma((1 - beta2) g, g, beta2 v)
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

with the bias corrections in float64. On the machine it was written on, its results equal torch's bit for
bit; the tests hold it to a few float32 roundings of torch's (another CPU's torch may contract differently).

It is built at first use with the C compiler (`cc`, or $CC) into a temporary folder, for this CPU
(-march=native), and linked to the OpenMP runtime torch has loaded, so that its threads are torch's.
`unavailable()` says why it cannot be used (no compiler, not Linux, no OpenMP runtime in torch); the
caller then uses torch's fused Adam, which gives the same numbers more slowly.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float from_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t to_bf16(float f) {  /* round to nearest even, as torch; a NaN stays a NaN */
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

#define ADAM(GRAD, STORE)                                                       \
    _Pragma("omp parallel for simd schedule(static)")                          \
    for (int64_t i = 0; i < n; i++) {                                          \
        float g = GRAD;                                                        \
        float m = fmaf(w1, g - exp_avg[i], exp_avg[i]);                         \
        float v = fmaf(w2 * g, g, exp_avg_sq[i] * beta2);                       \
        float p = param[i] + neg_step * m / (sqrtf(v) / bc2_sqrt + eps);        \
        exp_avg[i] = m; exp_avg_sq[i] = v; param[i] = p;                       \
        STORE;                                                                 \
    }

void adam_step(int64_t n, float *restrict param, float *restrict exp_avg, float *restrict exp_avg_sq,
               const float *restrict grad32, const uint16_t *restrict grad16, uint16_t *restrict low,
               float w1, float beta2, float w2, float eps, float neg_step, float bc2_sqrt) {
    if (grad16 && low) { ADAM(from_bf16(grad16[i]), low[i] = to_bf16(p)) }
    else if (grad16) { ADAM(from_bf16(grad16[i]), (void)0) }
    else if (low) { ADAM(grad32[i], low[i] = to_bf16(p)) }
    else { ADAM(grad32[i], (void)0) }
}
"""

_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-fPIC"]
# -fno-math-errno lets sqrtf vectorise (it changes no result); -ffp-contract=off keeps the fmas exactly where
# torch has them


def _openmp_runtime() -> Path | None:
    """The OpenMP runtime library torch has loaded (libgomp, libomp or libiomp5), from the process's maps."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    found = {Path(m) for m in re.findall(r"(/\S*/lib(?:gomp|omp|iomp5)[\w.-]*\.so[\d.]*)$", maps, re.M)}
    return found.pop() if len(found) == 1 else None


@functools.lru_cache(maxsize=None)
def _load() -> tuple[object | None, str | None]:
    """(the kernel, None), or (None, why not)."""
    if sys.platform != "linux":
        return None, f"built on Linux only (this is {sys.platform})"
    torch.zeros(2).add_(1)  # make sure torch's CPU library, and with it its OpenMP runtime, is loaded
    runtime = _openmp_runtime()
    if runtime is None:
        return None, "torch has no single OpenMP runtime loaded to share threads with"
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None, "no C compiler (cc; set CC, or install gcc)"
    with tempfile.TemporaryDirectory(prefix="gen_lib_adam_") as tmp:
        src, obj, lib = Path(tmp, "adam.c"), Path(tmp, "adam.o"), Path(tmp, "libadam.so")
        src.write_text(_SOURCE)
        for cmd in ([cc, *_FLAGS, "-c", str(src), "-o", str(obj)],
                    [cc, "-shared", str(obj), str(runtime), f"-Wl,-rpath,{runtime.parent}", "-o", str(lib)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                return None, f"{' '.join(cmd[:2])} ... failed: {(done.stderr or done.stdout).strip()[-300:]}"
        kernel = ctypes.CDLL(str(lib)).adam_step  # stays mapped after the folder is removed
    if _openmp_runtime() is None:  # a second runtime was loaded after all: threads would fight
        return None, "the kernel did not share torch's OpenMP runtime"
    kernel.restype = None
    kernel.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 6 + [ctypes.c_float] * 6
    return kernel, None


def unavailable() -> str | None:
    """Why the kernel cannot run here (None when it can). Builds it on the first call (about 0.2 s)."""
    return _load()[1]


def _check(name: str, t: torch.Tensor | None, numel: int, dtypes: tuple[torch.dtype, ...]) -> int | None:
    if t is None:
        return None
    if t.device.type != "cpu" or not t.is_contiguous() or t.dtype not in dtypes or t.numel() != numel:
        raise ValueError(f"fused_adam.step: {name} must be a contiguous CPU tensor of {numel} elements in "
                         f"{' or '.join(str(d) for d in dtypes)}; got {t.dtype} {tuple(t.shape)} on {t.device}"
                         f"{'' if t.is_contiguous() else ', not contiguous'}")
    return t.data_ptr()


def step(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, grad: torch.Tensor,
         low: torch.Tensor | None = None, *, lr: float, betas: tuple[float, float], eps: float, t: int) -> None:
    """Adam's update number `t` of `param` and its moments in place, from `grad` (float32 or bf16), and
    `low` (if given) <- `param` rounded to bf16, in one pass. All float32 but `grad` and `low`; CPU,
    contiguous, same number of elements."""
    kernel, why = _load()
    if kernel is None:
        raise RuntimeError(f"gen_lib.fused_adam is unavailable: {why}")
    n = param.numel()
    ptrs = [_check("param", param, n, (torch.float32,)), _check("exp_avg", exp_avg, n, (torch.float32,)),
            _check("exp_avg_sq", exp_avg_sq, n, (torch.float32,))]
    g32 = _check("grad", grad, n, (torch.float32, torch.bfloat16))
    grads = [g32, None] if grad.dtype == torch.float32 else [None, g32]
    beta1, beta2 = betas
    if t < 1:
        raise ValueError(f"fused_adam.step: t={t}, the update's number, counts from 1")
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t  # float64, as torch
    kernel(n, *ptrs, *grads, _check("low", low, n, (torch.bfloat16,)), 1 - beta1, beta2, 1 - beta2, eps, -(lr / bc1),
           math.sqrt(bc2))
