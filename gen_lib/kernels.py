"""Three small C kernels for the CPU training step, compiled on this machine: Adam's update in one pass over
memory, the Bernoulli log-likelihood of bf16 logits in one pass, and a diagonal Gaussian mixture's
log-density with its gradient in one pass. Each replaces a chain of torch operations, every one of which reads
and writes its whole tensor (or, for the small ones, costs more to dispatch than to compute).

**Adam** (`adam_step`). The stacked VAE step of `gen_lib.seeds` computes its `Linear` weights' gradients in
bf16 (autocast) and needs bf16 copies of the updated weights for the next forward. With torch's fused Adam
that is three passes over the 5 seeds' 6.7 M parameters, each beyond the L3 cache: convert the gradient to
float32, update (read weight, gradient and both moments, write weight and moments), copy the weight to
bf16. Here it is one pass that reads the bf16 gradient and writes the bf16 copy as it goes: 40 -> 28 bytes
moved per parameter (`make bench` times both). The arithmetic is torch's fused CPU Adam
(`torch.optim.Adam(fused=True)`, no weight decay, no amsgrad), in float32 with torch's order of operations
and fused multiply-adds:

    m <- m + (1 - beta1) (g - m)                                   (one fma, as torch's lerp)
    v <- fma((1 - beta2) g, g, beta2 v)
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

with the bias corrections in float64 from the float32 step counts, which it increments (torch's state["step"]).
On the machine it was written on its results equal torch's bit for bit; the tests hold it to a few float32
roundings of torch's (another CPU's torch may contract differently). `AdamUpdate` prepares the call once for
fixed tensors (their addresses kept), so that a step passes only the gradients: the flow prior's 92 tensors
cost 0.9 ms of Python per step otherwise.

**Bernoulli** (`bernoulli_log_prob`). sum_i x_i l_i - softplus(l_i) per row of bf16 logits, accumulated in
float32, with softplus(l) = max(l, 0) + log1p(exp(-|l|)); its gradient (x - sigmoid(l)) g in bf16. torch's
version (`gen_lib.vae._BernoulliLogLik`) takes about 15 passes over the (B, S, 784) logits for the forward
and backward; these take one each, with glibc's vectorised expf and log1pf (libmvec, within 4 ulp). Used
for bf16 logits only (training under autocast), where those roundings are far below bf16's; evaluation
keeps torch's float32 path; binary data may be bf16 (exact), as `training.fit_seeds` holds it.

**Gaussian mixture** (`mixture_log_prob`). log sum_k w_k N(z; mu_k, diag(sigma_k^2)) at latents (N, S, D) for S
stacked seeds' mixtures of K components (the MoG prior's and the VampPrior's, `priors.GaussianMixture`), in
float32 as torch's `MixtureSameFamily` of `Independent(Normal)` computes it, and its gradient in z, the logits,
the means and the scales (sums over rows in double). torch takes some 40 operations forward and backward on
(N, S, K, D) tensors of 20,000 elements, each paying its dispatch: 427 -> 232 us per 5-seed step for the
MoG prior's KL term (measured).

All are built at first use with the C compiler (`cc`, or $CC) into a temporary folder, for this CPU
(-march=native), and linked to the OpenMP runtime torch has loaded, so that their threads are torch's.
`unavailable()` says why they cannot be used (no compiler, not Linux with glibc's libmvec, no OpenMP runtime
in torch, or GEN_LIB_KERNELS=0 in the environment); the callers then use torch's operations, which give the
same numbers (to float32 round-off) more slowly.
"""

from __future__ import annotations

import ctypes
import functools
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
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
float log1pf(float);  /* both vectorised by glibc's libmvec */

static inline float from_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t to_bf16(float f) {  /* round to nearest even, as torch; a NaN stays a NaN */
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

#define ADAM(GRAD, STORE)                                                       \
    _Pragma("omp simd")                                                        \
    for (int64_t i = lo; i < hi; i++) {                                        \
        float g = GRAD;                                                        \
        float m = fmaf(w1, g - exp_avg[i], exp_avg[i]);                         \
        float v = fmaf(w2 * g, g, exp_avg_sq[i] * beta2);                       \
        float p = param[i] + neg_step * m / (sqrtf(v) / bc2_sqrt + eps);        \
        exp_avg[i] = m; exp_avg_sq[i] = v; param[i] = p;                       \
        STORE;                                                                 \
    }

static void adam_range(int64_t lo, int64_t hi, float *restrict param, float *restrict exp_avg,
                       float *restrict exp_avg_sq, const void *grad, int grad_bf16, uint16_t *restrict low,
                       float w1, float beta2, float w2, float eps, float neg_step, float bc2_sqrt) {
    const float *restrict grad32 = (const float *)grad;
    const uint16_t *restrict grad16 = (const uint16_t *)grad;
    if (grad_bf16 && low) { ADAM(from_bf16(grad16[i]), low[i] = to_bf16(p)) }
    else if (grad_bf16) { ADAM(from_bf16(grad16[i]), (void)0) }
    else if (low) { ADAM(grad32[i], low[i] = to_bf16(p)) }
    else { ADAM(grad32[i], (void)0) }
}

/* Tensor k: n[k] elements, its step count step[k] (float32, as torch keeps it) incremented here; the bias
   corrections in double, as torch's fused Adam computes them. Each thread updates its share of every tensor
   (shares of whole cache lines). */
void adam_step(int64_t count, const int64_t *n, float *const *param, float *const *exp_avg, float *const *exp_avg_sq,
               const void *const *grad, const int32_t *grad_bf16, uint16_t *const *low, float *const *step,
               double lr, double beta1_d, double beta2_d, float w1, float beta2, float w2, float eps) {
    float neg_step[count], bc2_sqrt[count];
    for (int64_t k = 0; k < count; k++) {
        float t = *step[k] + 1.0f;
        *step[k] = t;
        neg_step[k] = (float)(-(lr / (1.0 - pow(beta1_d, (double)t))));
        bc2_sqrt[k] = (float)sqrt(1.0 - pow(beta2_d, (double)t));
    }
    #pragma omp parallel
    {
        int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
        for (int64_t k = 0; k < count; k++) {
            int64_t share = ((n[k] + threads - 1) / threads + 15) / 16 * 16;
            int64_t lo = me * share < n[k] ? me * share : n[k], hi = lo + share < n[k] ? lo + share : n[k];
            if (lo < hi)
                adam_range(lo, hi, param[k], exp_avg[k], exp_avg_sq[k], grad[k], grad_bf16[k], low[k], w1, beta2, w2,
                           eps, neg_step[k], bc2_sqrt[k]);
        }
    }
}

/* Logits (bf16) and x (float32, or bf16 with x_bf16): `rows` rows of `p` elements, in memory order. -|l| and l are clamped at -80 and
   +-80, where exp's vector code leaves its fast path; what that drops is below exp(-80) = 2e-35. */
#define BERN_FORWARD(XTYPE, XVAL)                                                               \
    _Pragma("omp parallel for schedule(static)")                                               \
    for (int64_t r = 0; r < rows; r++) {                                                        \
        const uint16_t *lr = logits + r * p;                                                    \
        const XTYPE *xr = (const XTYPE *)x + r * p;                                             \
        float total = 0.0f;                                                                     \
        _Pragma("omp simd reduction(+:total)")                                                 \
        for (int64_t i = 0; i < p; i++) {                                                       \
            float l = from_bf16(lr[i]);                                                         \
            float neg_abs = l > 0.0f ? -l : l;                                                  \
            float softplus = (l > 0.0f ? l : 0.0f) + log1pf(expf(neg_abs < -80.0f ? -80.0f : neg_abs)); \
            total += XVAL * l - softplus;                                                       \
        }                                                                                       \
        out[r] = total;                                                                         \
    }

void bernoulli_forward(int64_t rows, int64_t p, const uint16_t *restrict logits, const void *restrict x,
                       float *restrict out, int32_t x_bf16) {
    if (x_bf16) { BERN_FORWARD(uint16_t, from_bf16(xr[i])) }
    else { BERN_FORWARD(float, xr[i]) }
}

#define BERN_BACKWARD(XTYPE, XVAL)                                                              \
    _Pragma("omp parallel for schedule(static)")                                               \
    for (int64_t r = 0; r < rows; r++) {                                                        \
        const uint16_t *lr = logits + r * p;                                                    \
        const XTYPE *xr = (const XTYPE *)x + r * p;                                             \
        uint16_t *gr = grad + r * p;                                                            \
        float gg = g[r];                                                                        \
        _Pragma("omp simd")                                                                    \
        for (int64_t i = 0; i < p; i++) {                                                       \
            float l = from_bf16(lr[i]);                                                         \
            l = l < -80.0f ? -80.0f : (l > 80.0f ? 80.0f : l);                                  \
            gr[i] = to_bf16((XVAL - 1.0f / (1.0f + expf(-l))) * gg);                            \
        }                                                                                       \
    }

void bernoulli_backward(int64_t rows, int64_t p, const uint16_t *restrict logits, const void *restrict x,
                        const float *restrict g, uint16_t *restrict grad, int32_t x_bf16) {
    if (x_bf16) { BERN_BACKWARD(uint16_t, from_bf16(xr[i])) }
    else { BERN_BACKWARD(float, xr[i]) }
}

/* A diagonal Gaussian mixture's log-density at latents z and its gradient. Rows n < N of z[n*zn + s*zs + d]
   (d < D, contiguous) for seeds s < S, each seed a mixture of K components: logits (S, K), loc and scale (S, K, D),
   all float32 and contiguous. out (N, S) = logsumexp_k lp_k with lp_k = c_k - |u_k|^2 / 2, u_k = (z - loc_k) / scale_k
   and c_k = log_softmax(logits)_k - sum_d log scale_kd - D/2 log(2 pi), as torch's MixtureSameFamily of
   Independent(Normal) computes it (to float32 rounding). */
static void mixture_setup(int64_t S, int64_t K, int64_t D, const float *logits, const float *scale, float *c,
                          float *inv, float *w) {
    for (int64_t s = 0; s < S; s++) {
        const float *ls = logits + s * K;
        float top = -INFINITY, total = 0.0f;
        for (int64_t k = 0; k < K; k++)
            top = ls[k] > top ? ls[k] : top;
        for (int64_t k = 0; k < K; k++)
            total += expf(ls[k] - top);
        for (int64_t k = 0; k < K; k++) {
            float log_w = ls[k] - top - logf(total), log_scale = 0.0f;
            for (int64_t d = 0; d < D; d++) {
                log_scale += logf(scale[(s * K + k) * D + d]);
                inv[(s * K + k) * D + d] = 1.0f / scale[(s * K + k) * D + d];
            }
            c[s * K + k] = log_w - log_scale - 0.9189385332046727f * (float)D;
            if (w) w[s * K + k] = expf(log_w);
        }
    }
}

static inline float mixture_terms(int64_t K, int64_t D, const float *zr, const float *loc, const float *inv,
                                  const float *c, float *lp) {
    float top = -INFINITY;
    for (int64_t k = 0; k < K; k++) {
        float q = 0.0f;
        for (int64_t d = 0; d < D; d++) {
            float u = (zr[d] - loc[k * D + d]) * inv[k * D + d];
            q += u * u;
        }
        lp[k] = c[k] - 0.5f * q;
        top = lp[k] > top ? lp[k] : top;
    }
    return top;
}

void mixture_forward(int64_t N, int64_t S, int64_t K, int64_t D, const float *z, int64_t zn, int64_t zs,
                     const float *logits, const float *loc, const float *scale, float *out) {
    float *c = malloc(sizeof(float) * S * K * (1 + D)), *inv = c + S * K;
    mixture_setup(S, K, D, logits, scale, c, inv, NULL);
    #pragma omp parallel if (N * S * K > 4096)
    {
        float lp[K];
        #pragma omp for schedule(static)
        for (int64_t row = 0; row < N * S; row++) {
            int64_t n = row / S, s = row % S;
            float top = mixture_terms(K, D, z + n * zn + s * zs, loc + s * K * D, inv + s * K * D, c + s * K, lp);
            float total = 0.0f;
            int nan = 0;
            for (int64_t k = 0; k < K; k++) {
                total += expf(lp[k] - top);
                nan |= lp[k] != lp[k];
            }
            /* a NaN stays a NaN; all components at -inf: the density is 0 */
            out[row] = nan ? NAN : top == -INFINITY ? -INFINITY : top + logf(total);
        }
    }
    free(c);
}

/* The gradient of sum_rows g * out, from the forward's out: gz (z's layout), g_logits (S, K), g_loc and g_scale
   (S, K, D). With responsibilities r_k = g exp(lp_k - out): dz = -sum_k r_k u_k / scale_k, dloc_k = sum_rows r_k u_k /
   scale_k, dscale_k = sum_rows r_k (u_k^2 - 1) / scale_k, dlogits_k = sum_rows r_k - softmax_k sum_j sum_rows r_j.
   The sums over rows run in double, per thread, then added up. */
void mixture_backward(int64_t N, int64_t S, int64_t K, int64_t D, const float *z, int64_t zn, int64_t zs,
                      const float *logits, const float *loc, const float *scale, const float *out, const float *g,
                      float *gz, float *g_logits, float *g_loc, float *g_scale) {
    int64_t per = S * K * (1 + 2 * D);
    int threads = N * S * K > 4096 ? omp_get_max_threads() : 1;
    float *c = malloc(sizeof(float) * S * K * (2 + D)), *inv = c + S * K, *w = inv + S * K * D;
    mixture_setup(S, K, D, logits, scale, c, inv, w);
    double *acc = calloc((size_t)(threads * per), sizeof(double));
    #pragma omp parallel num_threads(threads)
    {
        float lp[K];
        double *mine = acc + omp_get_thread_num() * per;
        #pragma omp for schedule(static)
        for (int64_t row = 0; row < N * S; row++) {
            int64_t n = row / S, s = row % S;
            const float *zr = z + n * zn + s * zs, *locs = loc + s * K * D, *invs = inv + s * K * D;
            mixture_terms(K, D, zr, locs, invs, c + s * K, lp);
            float *gzr = gz + n * zn + s * zs;
            for (int64_t d = 0; d < D; d++)
                gzr[d] = 0.0f;
            double *aw = mine + s * K, *al = mine + S * K + s * K * D, *as = mine + S * K * (1 + D) + s * K * D;
            for (int64_t k = 0; k < K; k++) {
                float r = out[row] == -INFINITY ? 0.0f : g[row] * expf(lp[k] - out[row]);
                aw[k] += r;
                for (int64_t d = 0; d < D; d++) {
                    float u = (zr[d] - locs[k * D + d]) * invs[k * D + d], t = r * u * invs[k * D + d];
                    gzr[d] -= t;
                    al[k * D + d] += t;
                    as[k * D + d] += (double)r * (u * u - 1.0f) * invs[k * D + d];
                }
            }
        }
    }
    for (int64_t i = 1; i < threads; i++)
        for (int64_t j = 0; j < per; j++)
            acc[j] += acc[i * per + j];
    for (int64_t s = 0; s < S; s++) {
        double total = 0.0;
        for (int64_t k = 0; k < K; k++)
            total += acc[s * K + k];
        for (int64_t k = 0; k < K; k++)
            g_logits[s * K + k] = (float)(acc[s * K + k] - w[s * K + k] * total);
    }
    for (int64_t j = 0; j < S * K * D; j++) {
        g_loc[j] = (float)acc[S * K + j];
        g_scale[j] = (float)acc[S * K * (1 + D) + j];
    }
    free(acc);
    free(c);
}
"""

_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-fPIC"]
# -fno-math-errno lets sqrtf, expf and log1pf vectorise (it changes no result); -ffp-contract=off keeps the fmas
# exactly where torch has them


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
    """(the library, None), or (None, why not)."""
    if os.environ.get("GEN_LIB_KERNELS", "1") == "0":
        return None, "switched off (GEN_LIB_KERNELS=0)"
    if sys.platform != "linux":
        return None, f"built on Linux only (this is {sys.platform})"
    torch.zeros(2).add_(1)  # make sure torch's CPU library, and with it its OpenMP runtime, is loaded
    runtime = _openmp_runtime()
    if runtime is None:
        return None, "torch has no single OpenMP runtime loaded to share threads with"
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None, "no C compiler (cc; set CC, or install gcc)"
    with tempfile.TemporaryDirectory(prefix="gen_lib_kernels_") as tmp:
        src, obj, lib = Path(tmp, "kernels.c"), Path(tmp, "kernels.o"), Path(tmp, "libkernels.so")
        src.write_text(_SOURCE)
        for cmd in ([cc, *_FLAGS, "-c", str(src), "-o", str(obj)],
                    [cc, "-shared", str(obj), str(runtime), f"-Wl,-rpath,{runtime.parent}", "-lmvec", "-lm", "-o",
                     str(lib)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                return None, f"{' '.join(cmd[:2])} ... failed: {(done.stderr or done.stdout).strip()[-300:]}"
        try:
            lib = ctypes.CDLL(str(lib))  # stays mapped after the folder is removed
        except OSError as e:  # e.g. a temporary folder mounted noexec
            return None, f"the built library does not load: {e}"
    if _openmp_runtime() is None:  # a second runtime was loaded after all: threads would fight
        return None, "the kernels did not share torch's OpenMP runtime"
    for name in ("adam_step", "bernoulli_forward", "bernoulli_backward", "mixture_forward", "mixture_backward"):
        getattr(lib, name).restype = None
    lib.adam_step.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 8 + [ctypes.c_double] * 3 + [ctypes.c_float] * 4
    lib.bernoulli_forward.argtypes = [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3 + [ctypes.c_int32]
    lib.bernoulli_backward.argtypes = [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 4 + [ctypes.c_int32]
    sizes = [ctypes.c_int64] * 4 + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.mixture_forward.argtypes = sizes + [ctypes.c_void_p] * 4
    lib.mixture_backward.argtypes = sizes + [ctypes.c_void_p] * 9
    return lib, None


def unavailable() -> str | None:
    """Why the kernels cannot run here (None when they can). Builds them on the first call (about 0.3 s)."""
    return _load()[1]


def _library():
    lib, why = _load()
    if lib is None:
        raise RuntimeError(f"gen_lib.kernels are unavailable here: {why}")
    return lib


def _check(name: str, t: torch.Tensor | None, numel: int, dtypes: tuple[torch.dtype, ...]) -> int:
    if t is None:
        return 0
    if t.device.type != "cpu" or t.dtype not in dtypes or t.numel() != numel or not t.is_contiguous():
        raise ValueError(f"kernels.adam_step: {name} must be a contiguous CPU tensor of {numel} elements in "
                         f"{' or '.join(str(d) for d in dtypes)}; got {t.dtype} {tuple(t.shape)} on {t.device}"
                         f"{'' if t.is_contiguous() else ', not contiguous'}")
    return t.data_ptr()


def _array(ctype, values):
    return (ctype * len(values))(*values)


class AdamUpdate:
    """`adam_step` prepared for fixed tensors: the parameters, their moments, their step counts and bf16 copies are
    checked once and their addresses kept; each call checks and passes only the gradients. A stacked VAE's
    optimizer step then costs one C call beside the gradients' list (a flow prior has 92 tensors: 0.9 ms of
    Python per step before, measured)."""

    def __init__(self, params: list[torch.Tensor], exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                 lows: list[torch.Tensor | None], steps: list[torch.Tensor]):
        count = len(params)
        if not count == len(exp_avgs) == len(exp_avg_sqs) == len(lows) == len(steps):
            raise ValueError(f"kernels.adam_step: one moment, copy (or None) and step per parameter; got {count} "
                             f"parameters, {len(exp_avgs)}, {len(exp_avg_sqs)}, {len(lows)}, {len(steps)}")
        f32 = (torch.float32,)
        self.n = [p.numel() for p in params]
        pointers = [[_check("param", p, k, f32) for p, k in zip(params, self.n)],
                    [_check("exp_avg", m, k, f32) for m, k in zip(exp_avgs, self.n)],
                    [_check("exp_avg_sq", v, k, f32) for v, k in zip(exp_avg_sqs, self.n)]]
        low = [_check("low", c, k, (torch.bfloat16,)) for c, k in zip(lows, self.n)]
        counts = [_check("step", t, 1, f32) for t in steps]
        if any(t.item() < 0 for t in steps):
            raise ValueError(f"kernels.adam_step: steps={[t.item() for t in steps]}: the updates done so far, from 0")
        self._keep = (params, exp_avgs, exp_avg_sqs, lows, steps)  # the addresses stay valid while this lives
        self._count, self._sizes = count, _array(ctypes.c_int64, self.n)
        self._fixed = [_array(ctypes.c_void_p, a) for a in pointers]
        self._low, self._steps = _array(ctypes.c_void_p, low), _array(ctypes.c_void_p, counts)

    def __call__(self, grads: list[torch.Tensor], *, lr: float, betas: tuple[float, float], eps: float) -> None:
        if len(grads) != self._count:
            raise ValueError(f"kernels.adam_step: one gradient per parameter; got {len(grads)} for {self._count}")
        if any(g is None for g in grads):
            raise ValueError(f"kernels.adam_step: gradient {[g is None for g in grads].index(True)} is None")
        if self._count == 0:
            return
        both = (torch.float32, torch.bfloat16)
        grad = [_check("grad", g, k, both) for g, k in zip(grads, self.n)]
        beta1, beta2 = betas
        _library().adam_step(self._count, self._sizes, *self._fixed, _array(ctypes.c_void_p, grad),
                             _array(ctypes.c_int32, [g.dtype == torch.bfloat16 for g in grads]), self._low, self._steps,
                             lr, beta1, beta2, 1 - beta1, beta2, 1 - beta2, eps)


def adam_step(params: list[torch.Tensor], exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
              grads: list[torch.Tensor], lows: list[torch.Tensor | None], *, lr: float, betas: tuple[float, float],
              eps: float, steps: list[torch.Tensor]) -> None:
    """One Adam update of `params[k]` and its moments in place, from `grads[k]` (float32 or bf16), its step count
    `steps[k]` (a float32 scalar tensor, torch's Adam's state["step"]) incremented, and `lows[k]` (if not None) <-
    `params[k]` rounded to bf16: one pass over each, all tensors in one call (one parallel region). All float32 but
    the gradients and the copies; CPU, contiguous, equal sizes per k. `AdamUpdate` prepares it for repeated calls."""
    AdamUpdate(params, exp_avgs, exp_avg_sqs, lows, steps)(grads, lr=lr, betas=betas, eps=eps)


def _rows(logits: torch.Tensor) -> list[int] | None:
    """The order of `logits`' dimensions that makes it contiguous (rows of its last dimension, in memory order),
    or None if none does."""
    if logits.dim() == 0 or logits.stride(-1) != 1:
        return None
    order = sorted(range(logits.dim() - 1), key=lambda d: -logits.stride(d)) + [logits.dim() - 1]
    return order if logits.permute(order).is_contiguous() else None


def bernoulli_fits(logits: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether `bernoulli_log_prob` runs these: bf16 logits and float32 or bf16 data of one shape and one memory layout on
    the CPU (a stacked step's (B, S, P) views of (S, B, P) memory, or plain (B, P)), where the kernels build."""
    return (logits.dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16) and logits.device.type == "cpu"
            and x.device.type == "cpu" and logits.shape == x.shape and logits.stride() == x.stride()
            and logits.numel() > 0 and _rows(logits) is not None and unavailable() is None)


class _Bernoulli(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, x):
        order = _rows(logits)
        lp, xp = logits.permute(order), x.permute(order)  # contiguous
        out = torch.empty(lp.shape[:-1], dtype=torch.float32)
        _library().bernoulli_forward(out.numel(), lp.shape[-1], lp.data_ptr(), xp.data_ptr(), out.data_ptr(), x.dtype == torch.bfloat16)
        ctx.save_for_backward(logits, x)
        ctx.order = order
        return out.permute(sorted(range(len(order) - 1), key=order.__getitem__))  # back to the logits' order

    @staticmethod
    def backward(ctx, g):
        logits, x = ctx.saved_tensors
        order = ctx.order
        lp, xp = logits.permute(order), x.permute(order)
        gp = g.float().permute(order[:-1]).contiguous()
        grad = torch.empty_like(lp)  # contiguous, in the permuted order
        _library().bernoulli_backward(gp.numel(), lp.shape[-1], lp.data_ptr(), xp.data_ptr(), gp.data_ptr(),
                                      grad.data_ptr(), x.dtype == torch.bfloat16)
        return grad.permute(sorted(range(len(order)), key=order.__getitem__)), None


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum over the last axis of x l - softplus(l), in float32, for bf16 logits l and float32 or bf16 data x of the same
    shape (`bernoulli_fits`); differentiable in l (gradient x - sigmoid(l), in bf16)."""
    if not bernoulli_fits(logits, x):
        raise ValueError(f"kernels.bernoulli_log_prob needs bf16 logits and float32 or bf16 x of one shape and layout on the "
                         f"CPU; got {logits.dtype} {tuple(logits.shape)} and {x.dtype} {tuple(x.shape)}"
                         + (f" ({unavailable()})" if unavailable() else ""))
    return _Bernoulli.apply(logits, x)



def mixture_fits(z: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether `mixture_log_prob` runs these: float32 (or bf16) tensors on the CPU, where the kernels build; a mixture
    of K components of dimension D (loc and scale (*batch, K, D), logits (*batch, K)) with batch shape () or (S,) and
    latents z (..., *batch, D), z's last dimension contiguous."""
    batch = logits.shape[:-1]
    tensors = (z, logits, loc, scale)
    return (all(t.dtype in (torch.float32, torch.bfloat16) and t.device.type == "cpu" for t in tensors)
            and len(batch) <= 1 and loc.shape == scale.shape == (*batch, logits.shape[-1], z.shape[-1])
            and z.dim() >= len(batch) + 1 and z.shape[z.dim() - 1 - len(batch):-1] == batch and z.stride(-1) == 1
            and z.numel() > 0 and unavailable() is None)


class _Mixture(torch.autograd.Function):
    """z (N, S, D) float32 (any strides, the last 1), logits (S, K), loc and scale (S, K, D) contiguous -> (N, S)."""

    @staticmethod
    def forward(ctx, z, logits, loc, scale):
        (n, s, d), k = z.shape, logits.shape[-1]
        out = torch.empty(n, s, dtype=torch.float32)
        _library().mixture_forward(n, s, k, d, z.data_ptr(), z.stride(0), z.stride(1), logits.data_ptr(),
                                   loc.data_ptr(), scale.data_ptr(), out.data_ptr())
        ctx.save_for_backward(z, logits, loc, scale, out)
        return out

    @staticmethod
    def backward(ctx, g):
        z, logits, loc, scale, out = ctx.saved_tensors
        (n, s, d), k = z.shape, logits.shape[-1]
        g = g.float().contiguous()
        gz, g_logits, g_loc, g_scale = torch.empty_like(z), torch.empty_like(logits), torch.empty_like(loc), \
            torch.empty_like(scale)
        _library().mixture_backward(n, s, k, d, z.data_ptr(), z.stride(0), z.stride(1), logits.data_ptr(),
                                    loc.data_ptr(), scale.data_ptr(), out.data_ptr(), g.data_ptr(), gz.data_ptr(),
                                    g_logits.data_ptr(), g_loc.data_ptr(), g_scale.data_ptr())
        return gz, g_logits, g_loc, g_scale


def mixture_log_prob(z: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log sum_k softmax(logits)_k N(z; loc_k, diag(scale_k^2)) in float32, in one pass over the latents and
    components (`mixture_fits`): shape z.shape[:-1]; differentiable in all four. torch's `MixtureSameFamily` of
    `Independent(Normal)` computes the same function in about 30 operations, each a pass over (..., K, D)."""
    if not mixture_fits(z, logits, loc, scale):
        raise ValueError(f"kernels.mixture_log_prob needs float32 (or bf16) CPU tensors: logits (*batch, K), loc and scale "
                         f"(*batch, K, D), z (..., *batch, D) with batch () or (S,); got z {tuple(z.shape)}, logits "
                         f"{tuple(logits.shape)}, loc {tuple(loc.shape)}, scale {tuple(scale.shape)}"
                         + (f" ({unavailable()})" if unavailable() else ""))
    stacked = logits.dim() == 2
    logits, loc, scale = (t.float().contiguous() for t in (logits, loc, scale))
    if not stacked:
        logits, loc, scale = logits[None], loc[None], scale[None]
    lead = z.shape[:z.dim() - 1 - stacked]
    rows = z.float().reshape(-1, logits.shape[0], z.shape[-1])  # (N, S, D): a view where the layout allows
    return _Mixture.apply(rows, logits, loc, scale).reshape(*lead, *logits.shape[:stacked])
