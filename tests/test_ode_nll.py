"""Contracts of DDPM.ode_nll, the probability-flow ODE's −log p_θ(x0) (Song et al., 2021), on Gaussian data whose
optimal ε-network is known in closed form (float64, fixed seeds): then the ODE is the exact flow of the data's
marginals, so the model's density is the data's marginal at the smallest noise level σ̄_0 (where the ODE starts),
N(mu, s² + σ̄_0²), up to the terminal mismatch q(x_T) ≠ N(0, I), computed below in closed form; what remains is the
Heun solver's error."""

import functools
import math

import pytest
import torch
from torch import nn

from _bounds import Z
from gen_lib import diffusion_nll
from gen_lib.diffusion import DDPM
from gen_lib.report.likelihood import refinement
from gen_lib.unet import UNet
from test_diffusion import GaussianOptimalEps  # the optimal ε-network of Gaussian data
from test_nll_bound import _draw, _gaussian_case, _true_nll

N = 200  # images of the Gaussian case
D = 16  # its pixels


class Rotated(nn.Module):
    """The optimal ε of the rotated data x = Q y (y the Gaussian case): ε_x(x_t) = Q ε_y(Qᵀ x_t), Q orthogonal.

    Its Jacobian Q diag(·) Qᵀ is not diagonal (that of the Gaussian case is, and Rademacher probes then give the
    exact trace with no noise); its density is the Gaussian case's at y = Qᵀ x (|det Q| = 1)."""

    def __init__(self, inner: nn.Module, q: torch.Tensor):
        super().__init__()
        self.inner, self.q = inner, q

    def forward(self, x, t):
        y = (x.flatten(1) @ self.q).reshape(x.shape)  # Qᵀ x, row-wise
        return (self.inner(y, t).flatten(1) @ self.q.T).reshape(x.shape)


def _rotation():
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    return q


@functools.lru_cache(maxsize=None)
def _case():
    """(plain DDPM, rotated DDPM, mu, s, y, x = Q y): N images of the Gaussian case, and rotated."""
    ddpm, mu, s = _gaussian_case()
    q = _rotation()
    rotated = DDPM(Rotated(GaussianOptimalEps(mu, s, ddpm.alphas_cumprod), q), T=ddpm.T, shape=ddpm.shape)
    y = _draw(mu, s, N, seed=1)
    x = (y.flatten(1) @ q.T).reshape(y.shape)  # within [-1, 1] for this draw (ode_nll checks it)
    return ddpm, rotated, mu, s, y, x


@functools.lru_cache(maxsize=None)
def _exact(steps):
    """Exact-trace ode_nll of the plain case on its N images (shared by the tests: the expensive runs)."""
    ddpm, _, _, _, y, _ = _case()
    return ddpm.ode_nll(y, steps=steps, exact_trace=True)


def _sigma0(ddpm):
    a = ddpm.alphas_cumprod[0].item()
    return math.sqrt((1 - a) / a)


def _model_nll(ddpm, y, mu, s):
    """−log of the model's exact density: the data's marginal at σ̄_0, N(mu, s² + σ̄_0²) per pixel."""
    return _true_nll(y, mu, torch.sqrt(s ** 2 + _sigma0(ddpm) ** 2))


def _terminal_mismatch(ddpm, mu, s, y):
    """−log p_θ(y) + log q(y) per image for the optimal ε and an exact solver (the ODE's limit).

    The exact flow maps y to x_T and carries q(y) to q_T(x_T) with the Jacobian that ode_nll integrates, so
    log p_θ(y) − log q(y) = log N(x_T; 0, I) − log q_T(x_T). Per pixel, x̄ − mu grows like √(s² + σ̄²), so
    x_T = √ᾱ_T mu + z √v_T with z = (y − mu)/√(s² + σ̄_0²), and q_T = N(√ᾱ_T mu, v_T), v_T = ᾱ_T s² + 1 − ᾱ_T."""
    a_T = ddpm.alphas_cumprod[-1]
    v_T = a_T * s ** 2 + 1 - a_T
    z = (y - mu) / torch.sqrt(s ** 2 + _sigma0(ddpm) ** 2)  # standardised at σ̄_0, where the ODE starts
    x_T = a_T.sqrt() * mu + z * v_T.sqrt()
    log_q_T = -0.5 * torch.log(v_T) - 0.5 * z ** 2  # both densities' 2π terms cancel
    log_n = -0.5 * x_T ** 2
    return (log_q_T - log_n).flatten(1).sum(1)


def _mean_se(v):
    return v.mean().item(), v.std().item() / math.sqrt(v.numel())


def _halved(ddpm, y, steps, **kw):
    """(value on `ode_levels(steps)`, value on every other of those levels): Richardson's pair."""
    levels = diffusion_nll.ode_levels(ddpm.alphas_cumprod, steps)
    return (ddpm.ode_nll(y, levels=levels, exact_trace=True, **kw),
            ddpm.ode_nll(y, levels=diffusion_nll.halved(levels), exact_trace=True, **kw))


@pytest.mark.slow
def test_exact_trace_converges_to_the_true_nll_at_second_order():
    """Exact trace on grids of S = T/4, T/2, T levels (`ode_levels`: evenly spaced in log σ̄).

    The solver error e_S = ode_nll − (model's NLL + terminal mismatch) shrinks with the grid, on average faster
    than first order would (Heun's is second order, e_S/e_2S → 4). The allowance of `likelihood.refinement`, 4/3
    of the interval's end of the change from every other level, bounds the mean error at S = 100 (the default)."""
    ddpm, _, mu, s, y, _ = _case()
    true = _model_nll(ddpm, y, mu, s)
    mismatch = _terminal_mismatch(ddpm, mu, s, y)
    T = ddpm.T
    grids = (T // 4, T // 2, T)
    err = {S: (_exact(S) - true - mismatch).abs() for S in (100, *grids)}
    for coarse, fine in zip(grids, grids[1:]):
        assert err[fine].mean() < 0.5 * err[coarse].mean(), (coarse, fine)
    fine, coarse = _halved(ddpm, y, 100)
    torch.testing.assert_close(fine, _exact(100), rtol=0, atol=0)  # `levels` = the same grid as `steps`
    assert (_exact(100) - true - mismatch).mean().abs() <= refinement(coarse, fine)["bound"]
    # at S = T the grid holds every level; the reference accuracy, 0.0003 nats/dim, holds there
    assert err[T].mean().item() / D < 3e-4, err[T].mean().item() / D


@pytest.mark.slow
def test_sharp_data_converge_as_well():
    """Pixels of std 0.003, narrower than σ̄_0 = 0.01 (as dequantized MNIST's background, 0.0023): the model's density
    is then dominated by σ̄_0, and the log-density changes by ≈ log(σ̄/σ̄_0) per pixel near the data end, where the
    grid holds every level and cannot be refined. Richardson on the same levels (`halved`) bounds the mean error
    at S = 50 and 100, and the error shrinks."""
    ddpm, mu, _ = _gaussian_case()
    s = torch.full_like(mu, 0.003)
    sharp = DDPM(GaussianOptimalEps(mu, s, ddpm.alphas_cumprod), T=ddpm.T, shape=ddpm.shape)
    y = _draw(mu, s, 50, seed=2)
    truth = _model_nll(sharp, y, mu, s) + _terminal_mismatch(sharp, mu, s, y)
    err = {}
    for S in (50, 100):
        fine, coarse = _halved(sharp, y, S)
        err[S] = (fine - truth).mean().abs().item()
        assert err[S] <= refinement(coarse, fine)["bound"], (S, err[S], refinement(coarse, fine)["bound"])
    assert err[100] < err[50]


class MixtureOptimalEps(nn.Module):
    """The exact E[ε | x_t] when every pixel of x_0 is drawn independently from the mixture Σ_k π_k N(μ_k, s_k²):
    ε = −√(1 − ᾱ) ∇ log q_t(x_t), q_t = Σ_k π_k N(√ᾱ μ_k, ᾱ s_k² + 1 − ᾱ) per pixel."""

    def __init__(self, pi, mu, s, abar):
        super().__init__()
        self.pi, self.mu, self.s, self.abar = pi, mu, s, abar

    def forward(self, x, t):
        a = self.abar[t].reshape(-1, 1, 1, 1, 1)
        var, centred = a * self.s ** 2 + 1 - a, x[..., None] - a.sqrt() * self.mu  # (B, C, H, W, K)
        r = torch.softmax(torch.log(self.pi) - 0.5 * torch.log(var) - 0.5 * centred ** 2 / var, -1)
        return (1 - a[..., 0]).sqrt() * (r * centred / var).sum(-1)


def _mixture_log_density(x, pi, mu, s, sigma):
    """log of the mixture smoothed by N(0, σ̄²), per pixel: the density of x̄ at σ̄."""
    var = s ** 2 + sigma ** 2
    return torch.logsumexp(torch.log(pi) - 0.5 * torch.log(2 * math.pi * var) - 0.5 * (x[..., None] - mu) ** 2 / var, -1)


def _mixture_flow_end(x0, pi, mu, s, sigma_0, sigma_T, n=4000):
    """x̄ at σ̄_T of the exact flow dx̄/du = −σ̄² ∂ log p_σ̄(x̄) from x̄ = x0 at σ̄_0 (u = log σ̄): classical RK4 on n
    steps of a continuous u, independent of the model's levels."""
    def f(x, u):
        var = s ** 2 + math.exp(2 * u)
        r = torch.softmax(torch.log(pi) - 0.5 * torch.log(var) - 0.5 * (x[..., None] - mu) ** 2 / var, -1)
        return math.exp(2 * u) * (r * (x[..., None] - mu) / var).sum(-1)

    u, h, x = math.log(sigma_0), (math.log(sigma_T) - math.log(sigma_0)) / n, x0.clone()
    for _ in range(n):
        k1 = f(x, u)
        k2 = f(x + h / 2 * k1, u + h / 2)
        k3 = f(x + h / 2 * k2, u + h / 2)
        k4 = f(x + h * k3, u + h)
        x, u = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), u + h
    return x


@pytest.mark.slow
def test_allowance_bounds_the_true_error_on_sharp_mixture_data():
    """MNIST-like pixels at the data's sharpness: 75 % background near −1 and 20 % ink near +1, each of std 0.0023
    (a uniform over one 8-bit bin of x0 = 2y − 1), and 5 % mid-grey of std 0.3, with the exact ε. The model's density
    is the mixture smoothed at σ̄_0, log p_σ̄0(x0), plus the terminal mismatch log N(x̄_T; 0, 1/ᾱ_T) − log p_σ̄T(x̄_T)
    at the exact flow's end (a fine RK4 in continuous u): both in closed form. At S = 50 and 100 Richardson's
    allowance on the same levels (`refinement`: 4/3 of the change from every other level) covers the mean's true
    error; halving multiplies the error by at least the 1.75 that the bound needs; and the old check (the change
    from S to 2S levels, which leave the low-noise end as it is) falls short of the error at S = 100."""
    ddpm0, _, _ = _gaussian_case()
    abar = ddpm0.alphas_cumprod
    pi = torch.tensor([0.75, 0.2, 0.05], dtype=torch.float64)
    mu = torch.tensor([-0.99, 0.98, 0.0], dtype=torch.float64)
    s = torch.tensor([0.0023, 0.0023, 0.3], dtype=torch.float64)
    ddpm = DDPM(MixtureOptimalEps(pi, mu, s, abar), T=len(abar), shape=(1, 4, 4))
    g = torch.Generator().manual_seed(3)
    k = torch.multinomial(pi, 50 * D, replacement=True, generator=g)
    x0 = (mu[k] + s[k] * torch.randn(50 * D, generator=g, dtype=torch.float64)).clamp(-1, 1).reshape(50, 1, 4, 4)
    sig = ((1 - abar) / abar).sqrt()
    x_T = _mixture_flow_end(x0, pi, mu, s, sig[0].item(), sig[-1].item())
    a_T = abar[-1].item()
    log_prior = -0.5 * a_T * x_T ** 2 - 0.5 * math.log(2 * math.pi / a_T)  # log N(x̄_T; 0, 1/ᾱ_T)
    truth = -(_mixture_log_density(x0, pi, mu, s, sig[0]) + log_prior
              - _mixture_log_density(x_T, pi, mu, s, sig[-1])).flatten(1).sum(1)
    for S in (50, 100):
        fine, coarse = _halved(ddpm, x0, S)
        err, r = (fine - truth).mean().item(), refinement(coarse, fine)
        assert abs(err) <= r["bound"], (S, err, r["bound"])
        assert abs((coarse - truth).mean().item()) >= r["min_ratio"] * abs(err), S
    fine, _ = _halved(ddpm, x0, 100)
    doubled = ddpm.ode_nll(x0, steps=200, exact_trace=True)
    assert (doubled - fine).mean().abs() < (fine - truth).mean().abs()


def test_halved_keeps_both_ends_and_every_other_level():
    assert diffusion_nll.halved([0, 1, 2, 3, 4]) == [0, 2, 4]
    assert diffusion_nll.halved([0, 1, 2, 5]) == [0, 2, 5]  # an odd number of steps: the last stays whole
    assert diffusion_nll.halved([0, 9]) == [0, 9]
    with pytest.raises(ValueError, match="at least two"):
        diffusion_nll.halved([3])
    ddpm = DDPM(nn.Identity(), T=10, shape=(1, 4, 4))
    for bad in ([1, 9], [0, 5], [0, 5, 5, 9], [0]):
        with pytest.raises(ValueError, match="levels must increase from 0 to T - 1 = 9"):
            ddpm.ode_nll(torch.zeros(2, 1, 4, 4), levels=bad)


def test_ode_sample_follows_the_flow_of_gaussian_data():
    """The exact ε of the Gaussian case (float32 in, float32 out): the exact flow maps x̄_T = x_T/√ᾱ_T to
    x̄_0 = mu + (x̄_T − mu) √(s² + σ̄_0²)/√(s² + σ̄_T²) per pixel; Heun's draws on Table 3's levels follow it within
    Richardson's allowance per pixel (plus float32 round-off), from the same x_T as the generator gives. With ε ≡ 0
    the state stays x_T/√ᾱ_T, far outside [-1, 1]: nothing is clamped. The network's mode is restored."""
    ddpm, mu, s = _gaussian_case()

    class Float32(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t):
            assert x.dtype == torch.float32
            return self.inner(x.double(), t).float()

    model = DDPM(Float32(ddpm.network), T=ddpm.T, shape=ddpm.shape)
    model.train()
    levels = diffusion_nll.ode_levels(ddpm.alphas_cumprod, 100)
    x = diffusion_nll.ode_sample(model, 300, levels=levels, generator=torch.Generator().manual_seed(0), batch=128)
    half = diffusion_nll.ode_sample(model, 300, levels=diffusion_nll.halved(levels),
                                    generator=torch.Generator().manual_seed(0))
    assert x.shape == (300, 1, 4, 4) and x.dtype == torch.float32 and model.network.training
    abar = ddpm.alphas_cumprod
    x_T = torch.randn((300, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float32).double()
    sig0, sigT = _sigma0(ddpm), math.sqrt((1 - abar[-1].item()) / abar[-1].item())
    exact = mu + (x_T / abar[-1].sqrt() - mu) * torch.sqrt(s ** 2 + sig0 ** 2) / torch.sqrt(s ** 2 + sigT ** 2)
    assert ((x.double() - exact).abs() <= 4 / 3 * (x - half).double().abs() + 1e-5).all()

    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    zero = DDPM(Zero(), T=50, beta_start=1e-3, beta_end=0.2, shape=(1, 4, 4))
    z = diffusion_nll.ode_sample(zero, 4, steps=7, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn((4, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, x_T / zero.alphas_cumprod[-1].sqrt().float())
    assert z.abs().max() > 1


def test_one_bin_cost_and_its_measurement_on_data():
    """`one_bin_bits` against a direct convolution (midpoint rule over the bin for the smoothed density): about 1.75
    bits at σ̄_0 = 0.01; no cost without smoothing. `smoothing_bits`: data whose pixels are all 0 pay `one_bin_bits`
    per pixel; data spread evenly over every bin pay almost nothing (only the two end bins lose mass)."""
    w, sy = 1 / 256, 0.005
    y = (torch.arange(400, dtype=torch.float64) + 0.5) / 400 * w
    v = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000 * w
    dens = (torch.exp(-0.5 * ((y[:, None] - v) / sy) ** 2) / (sy * math.sqrt(2 * math.pi))).mean(1)  # ∫ N(y − v)/w dv
    direct = (math.log(1 / w) - dens.log().mean().item()) / math.log(2)
    assert abs(diffusion_nll.one_bin_bits(0.01) - direct) < 1e-3 and 1.7 < direct < 1.8
    assert diffusion_nll.one_bin_bits(1e-6) < 1e-3

    zeros = torch.zeros(20_000, 1, 4, 4)
    r = diffusion_nll.smoothing_bits(zeros, zeros[:50], 0.01)
    assert r["zero"] == 1.0 and abs(r["bits"] - r["one_bin"]) < 0.02  # the half count per empty bin: a little
    spread = (torch.arange(256).float() / 255).reshape(256, 1, 1, 1).expand(256, 1, 4, 4)  # every bin, every pixel
    assert diffusion_nll.smoothing_bits(spread, spread, 0.01)["bits"] < 0.02
def test_exact_trace_is_invariant_to_rotating_the_data():
    """tr(Q J Qᵀ) = tr J and the rotated flow is the rotated plain flow: the same value to round-off. The
    bound: float64 round-off u = 2⁻⁵³ per operation, about D of them per product, over 2S evaluations, relative
    to the largest terms summed (the value and D/2 |log ᾱ_T| ≈ 81 nats), with a factor 100 for the different
    orders of summation of the autograd's and the rotation's products."""
    ddpm, rotated, _, _, y, x = _case()
    S = 10
    a = ddpm.ode_nll(y, steps=S, exact_trace=True)
    b = rotated.ode_nll(x, steps=S, exact_trace=True)
    bound = 100 * 2 * S * D * 2.0 ** -53 * (a.abs().max().item() + 0.5 * D * -math.log(ddpm.alphas_cumprod[-1].item()))
    assert (a - b).abs().max().item() <= bound, ((a - b).abs().max().item(), bound)


def test_hutchinson_estimate_is_unbiased():
    """Rademacher probes on the rotated case (non-diagonal Jacobian: the estimate is noisy), S = 100.

    Against the exact trace on the same grid (the plain case's: the trace is invariant, test above) the
    per-image differences have mean 0 within 3 of their standard errors. Against the true NLL, the mean
    differs by the Hutchinson noise (3 standard errors) plus the solver's error, bounded as Richardson does
    by the mean |ode_100 − ode_50| (a factor 3 over its second-order estimate), plus the terminal mismatch."""
    ddpm, rotated, mu, s, y, x = _case()
    S = 100
    hutch = rotated.ode_nll(x, steps=S, generator=torch.Generator().manual_seed(0))
    mean, se = _mean_se(hutch - _exact(S))
    assert se > 0, se  # the probes do add noise here
    assert abs(mean) < Z * se, (mean, se)

    true = _model_nll(ddpm, y, mu, s)
    mean, se = _mean_se(hutch - true)
    solver = (_exact(S) - _exact(S // 2)).abs().mean().item()
    mismatch = _terminal_mismatch(ddpm, mu, s, y).mean().abs().item()
    assert abs(mean) < Z * se + solver + mismatch, (mean, se, solver, mismatch)


def test_zero_network_default_steps_and_probe_reproducibility():
    """ε ≡ 0: x̄ = x0 all the way and no divergence, so −log p = −log N(√ᾱ_T x0; 0, I) − D/2 log ᾱ_T exactly.
    steps=None is min(100, T) steps; the same generator gives the same probes (and the value), another one not."""

    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    zero = DDPM(Zero(), T=50, beta_start=1e-3, beta_end=0.2, shape=(1, 4, 4))
    x0 = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    a_T = zero.alphas_cumprod[-1].item()
    expected = 0.5 * a_T * x0.flatten(1).pow(2).sum(1) + 0.5 * D * math.log(2 * math.pi) - 0.5 * D * math.log(a_T)
    for steps in (None, 1, 7):
        torch.testing.assert_close(zero.ode_nll(x0, steps=steps), expected, rtol=1e-12, atol=1e-12)

    _, rotated, _, _, _, x = _case()
    x = x[:8]
    def run(steps, seed):
        return rotated.ode_nll(x, steps=steps, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(None, 0), run(100, 0))
    assert not torch.equal(run(100, 0), run(100, 1))
    small = DDPM(rotated.network, T=50, shape=(1, 4, 4))  # the network ignores this schedule: only the grid matters
    assert torch.equal(small.ode_nll(x, generator=torch.Generator().manual_seed(0)),
                       small.ode_nll(x, steps=50, generator=torch.Generator().manual_seed(0)))


def test_bad_input():
    ddpm = DDPM(nn.Identity(), T=10, shape=(1, 4, 4))
    for steps in (0, 11, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match=rf"steps={steps!r} must be None"):
            ddpm.ode_nll(torch.zeros(2, 1, 4, 4), steps=steps)
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 1, 28, 28\); expected \(B, 1, 4, 4\)"):
        ddpm.ode_nll(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"x0 has shape \(16,\)"):
        ddpm.ode_nll(torch.zeros(16))
    with pytest.raises(ValueError, match=r"x0 lies in \[-1, 1\.5\]"):
        ddpm.ode_nll(torch.tensor([-1.0, 1.5]).repeat(8).reshape(1, 1, 4, 4))
    with pytest.raises(ValueError, match="exact_trace=1"):
        ddpm.ode_nll(torch.zeros(2, 1, 4, 4), exact_trace=1)


def test_unet_mode_restored_no_parameter_grads_and_the_networks_dtype():
    """A small U-Net with dropout, in train mode, called under no_grad as the likelihood table does: evaluated in
    eval mode (the same generator gives the same value: no dropout noise), its mode restored, no .grad on any
    parameter, its input in its own dtype (float32) while the result is float64."""
    torch.manual_seed(0)
    net = UNet(1, 8, (1, 2, 2, 2), n_res=1, dropout=0.5)
    with torch.no_grad():
        net.conv_out.weight.normal_(0.0, 0.1)  # zero at init: ε would not depend on x (no divergence to take)
    ddpm = DDPM(net, T=20, shape=(1, 8, 8))
    ddpm.train()
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append((args[0].dtype, args[0].requires_grad)))
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a = ddpm.ode_nll(x0, steps=3, generator=torch.Generator().manual_seed(0))
    b = ddpm.ode_nll(x0, steps=3, generator=torch.Generator().manual_seed(0))
    exact = ddpm.ode_nll(x0[:1], steps=1, exact_trace=True)
    assert a.shape == (3,) and a.dtype == torch.float64 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert exact.shape == (1,) and torch.isfinite(exact).all()
    assert ddpm.network.training and all(m.training for m in net.modules())
    assert all(p.grad is None for p in ddpm.parameters())
    assert {dtype for dtype, _ in seen} == {torch.float32}
    assert any(grad for _, grad in seen)  # the divergence's evaluations do take the input's gradient
