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
from gen_lib.diffusion import DDPM
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


@pytest.mark.slow
def test_exact_trace_converges_to_the_true_nll_at_second_order():
    """Exact trace on grids of S = T/4, T/2, T levels (`ode_levels`: evenly spaced in log σ̄).

    The solver error e_S = ode_nll − (model's NLL + terminal mismatch) shrinks with the grid, on average faster
    than first order would (Heun's is second order, e_S/e_2S → 4). Per image, Richardson bounds it: e_S ≈
    (ode_S − ode_{S/2})/3 for a second-order method, and the test allows the whole difference (a factor 3 of
    margin), at S = 100 (the default)."""
    ddpm, _, mu, s, y, _ = _case()
    true = _model_nll(ddpm, y, mu, s)
    mismatch = _terminal_mismatch(ddpm, mu, s, y)
    T = ddpm.T
    grids = (T // 4, T // 2, T)
    err = {S: (_exact(S) - true - mismatch).abs() for S in (100, *grids)}
    for coarse, fine in zip(grids, grids[1:]):
        assert err[fine].mean() < 0.5 * err[coarse].mean(), (coarse, fine)  # better than first order
    richardson = (_exact(100) - _exact(50)).abs()
    assert (err[100] <= richardson).all(), (err[100] - richardson).max().item()
    # at S = T the grid holds every level near the data end, where doubling S adds none: Richardson does not
    # apply there; the reference accuracy, 0.0003 nats/dim with the model's 1000 levels, does
    assert err[T].mean().item() / D < 3e-4, err[T].mean().item() / D


@pytest.mark.slow
def test_sharp_data_converge_as_well():
    """Pixels of std 0.003, narrower than σ̄_0 = 0.01 (as dequantized MNIST's background, 0.0023): the model's density
    is then dominated by σ̄_0, and the log-density changes by ≈ log(σ̄/σ̄_0) per pixel near the data end, which the
    solver must resolve. The per-image error is within Richardson's bound at S = 50 and 100, and shrinks."""
    ddpm, mu, _ = _gaussian_case()
    s = torch.full_like(mu, 0.003)
    sharp = DDPM(GaussianOptimalEps(mu, s, ddpm.alphas_cumprod), T=ddpm.T, shape=ddpm.shape)
    y = _draw(mu, s, 50, seed=2)
    truth = _model_nll(sharp, y, mu, s) + _terminal_mismatch(sharp, mu, s, y)
    ode = {S: sharp.ode_nll(y, steps=S, exact_trace=True) for S in (25, 50, 100)}
    for S in (50, 100):
        assert ((ode[S] - truth).abs() <= (ode[S] - ode[S // 2]).abs()).all(), S
    assert (ode[100] - truth).abs().mean() < (ode[50] - truth).abs().mean()


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
