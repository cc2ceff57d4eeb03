"""Contract tests of gen_lib.diffusion and gen_lib.samplers: schedule, forward process, loss, and every sampler
against a Gaussian whose optimal ε-network is known in closed form (float64, fixed seeds)."""

import math

import pytest
import torch
from torch import nn

from _bounds import Z
from gen_lib.diffusion import DDPM, alphas_cumprod, linear_beta_schedule
from gen_lib.samplers import SAMPLERS, sampling_timesteps
from gen_lib.training import autocast
from gen_lib.unet import UNet

T = 1000


class GaussianOptimalEps(nn.Module):
    """The exact E[ε | x_t] when x_0 ~ N(mu, s²) per pixel, independently.

    x_t = √ᾱ x_0 + √(1−ᾱ) ε is jointly Gaussian with ε, so
    E[ε | x_t] = √(1−ᾱ) (x_t − √ᾱ mu) / (ᾱ s² + 1 − ᾱ).
    """

    def __init__(self, mu, s, abar):
        super().__init__()
        self.mu, self.s, self.abar = mu, s, abar

    def forward(self, x, t):
        a = self.abar[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.s ** 2 + 1 - a)


def _gaussian_ddpm(T=T):
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand(1, 8, 8, generator=g, dtype=torch.float64) - 0.5)  # means in [-0.5, 0.5]
    s = 0.1 + 0.4 * torch.rand(1, 8, 8, generator=g, dtype=torch.float64)  # std in [0.1, 0.5]
    abar = alphas_cumprod(linear_beta_schedule(T))
    return DDPM(GaussianOptimalEps(mu, s, abar), T=T, shape=(1, 8, 8)), mu, s


def _standardised(ddpm, mu, s, seed, **kw):
    x = ddpm.sample(4096, generator=torch.Generator().manual_seed(seed), clip_denoised=False, dtype=torch.float64,
                    **kw)
    return (x - mu) / s  # N(0, 1) if the sampler is right: 4096 · 64 = 262,144 values


def test_schedule_constants_against_independent_values():
    ddpm = DDPM(nn.Identity(), T=T)
    assert ddpm.betas.dtype == ddpm.alphas_cumprod.dtype == torch.float64
    assert ddpm.betas.shape == ddpm.alphas_cumprod.shape == (T,)
    for t in (0, 499, 999):
        beta = 1e-4 + (0.02 - 1e-4) * t / (T - 1)
        abar = math.prod(1 - (1e-4 + (0.02 - 1e-4) * s / (T - 1)) for s in range(t + 1))
        assert ddpm.betas[t].item() == pytest.approx(beta, rel=1e-12)
        assert ddpm.alphas_cumprod[t].item() == pytest.approx(abar, rel=1e-10)
    # hand-checked values: ᾱ_0 = 1 − 1e-4, ᾱ_499 ≈ exp(−Σβ) ≈ 0.0786, ᾱ_999 ≈ 4.04e-5
    assert ddpm.alphas_cumprod[0].item() == pytest.approx(0.9999, rel=1e-12)
    assert ddpm.alphas_cumprod[499].item() == pytest.approx(0.07858, rel=1e-3)
    assert ddpm.alphas_cumprod[999].item() == pytest.approx(4.036e-5, rel=1e-3)


def test_q_sample_matches_closed_form_statistically(seed):
    ddpm = DDPM(nn.Identity(), T=T, shape=(1, 4, 4))
    x0 = torch.full((20000, 1, 4, 4), 0.7, dtype=torch.float64)
    g = torch.Generator().manual_seed(2 + seed)
    for t in (0, 250, 999):
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        xt = ddpm.q_sample(x0, torch.full((20000,), t), noise)
        abar = ddpm.alphas_cumprod[t].item()
        n = xt.numel()  # standard errors of a Gaussian sample's mean and variance: sqrt(var / n), var sqrt(2 / n)
        assert abs(xt.mean().item() - 0.7 * abar ** 0.5) < Z * ((1 - abar) / n) ** 0.5
        assert abs(xt.var().item() / (1 - abar) - 1) < Z * (2 / (n - 1)) ** 0.5


def test_loss_is_zero_for_a_network_that_returns_the_true_noise():

    class Oracle(nn.Module):  # inverts q_sample given x0: ε = (x_t − √ᾱ x_0) / √(1 − ᾱ)
        def forward(self, x, t):
            a = ddpm.alphas_cumprod[t].reshape(-1, 1, 1, 1)
            return (x - a.sqrt() * self.x0) / (1 - a).sqrt()

    oracle = Oracle()
    ddpm = DDPM(oracle, T=T)
    oracle.x0 = torch.rand(16, 1, 28, 28, dtype=torch.float64) * 2 - 1
    assert ddpm.loss(oracle.x0).item() < 1e-20
    zero = DDPM(ZeroNet(), T=T)
    n = oracle.x0.numel()  # mean of n values ε², each of mean 1 and variance 2: the loss can fail
    assert zero.loss(oracle.x0).item() == pytest.approx(1.0, abs=Z * (2 / n) ** 0.5)


class ZeroNet(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def _exact_moments(ddpm, mu, s, method, steps=T, variance="beta", start=0.0):
    """Per-pixel mean and variance of the sampler's output, propagated exactly.

    With the optimal ε of a Gaussian, every update is affine in x plus Gaussian noise,
    x ← A x + B + σ z, so from x_T ~ N(`start`, 1): m ← A m + B, v ← A² v + σ². Written from the
    equations of Ho et al. (Algorithm 2) and Song et al. (Eq. 12), independently of the sampler.
    """
    abar = ddpm.alphas_cumprod
    m, v = torch.full_like(mu, start), torch.ones_like(mu)
    taus = sampling_timesteps(ddpm.T, steps).tolist()
    for i, t in enumerate(taus):
        a = abar[t].item()
        a_prev = abar[taus[i + 1]].item() if i + 1 < len(taus) else 1.0
        c = (1 - a) ** 0.5 / (a * s ** 2 + 1 - a)  # ε = c (x − √a mu)
        if method == "ddim":  # x ← √a' (x − √(1−a) ε)/√a + √(1−a') ε
            A = (a_prev / a) ** 0.5 * (1 - (1 - a) ** 0.5 * c) + (1 - a_prev) ** 0.5 * c
            B = ((a_prev / a) ** 0.5 * (1 - a) ** 0.5 - (1 - a_prev) ** 0.5) * c * a ** 0.5 * mu
            var = 0.0
        else:  # x ← (x − β/√(1−a) ε)/√(1−β) + σ z, β = 1 − a/a'
            beta = 1 - a / a_prev
            A = (1 - beta / (1 - a) ** 0.5 * c) / (1 - beta) ** 0.5
            B = beta / (1 - a) ** 0.5 * c * a ** 0.5 * mu / (1 - beta) ** 0.5
            var = 0.0 if i + 1 == len(taus) else (beta if variance == "beta" else beta * (1 - a_prev) / (1 - a))
        m, v = A * m + B, A ** 2 * v + var
    return m, v


def _step_moments(ddpm, mu, s, method, steps=T, start=None, **options):
    """Per-pixel mean and variance of a registered sampler's output, propagated exactly through its own step.

    With the optimal ε of a Gaussian every step is affine, x ← A x + B + σ z, so three calls of the step
    (x = 0 or 1, z = 0 or 1) give A, B and σ, and from x_T ~ N(0, 1) (or `start` = (mean, variance)):
    m ← A m + B, v ← A² v + σ².
    """
    schedule, taus, step = ddpm.schedule(), sampling_timesteps(ddpm.T, steps).tolist(), SAMPLERS[method].step
    zero, one = torch.zeros(1, *mu.shape, dtype=torch.float64), torch.ones(1, *mu.shape, dtype=torch.float64)
    m, v = (torch.zeros_like(mu), torch.ones_like(mu)) if start is None else start
    for i, t in enumerate(taus):
        t_prev = taus[i + 1] if i + 1 < len(taus) else -1

        def f(x, z):
            return step(x, ddpm.network(x, torch.tensor([t])), t, t_prev, schedule, z, clip_denoised=False,
                        **options)[0]

        B = f(zero, zero)
        A, sigma = f(one, zero) - B, f(zero, one) - B
        m, v = A * m + B, A ** 2 * v + sigma ** 2
    return m, v


def _q_T(ddpm, mu, s):
    """Mean and variance of q(x_T) = N(√ᾱ_T mu, ᾱ_T s² + 1 − ᾱ_T), where a perfect start would draw x_T."""
    a_T = ddpm.alphas_cumprod[-1].item()
    return a_T ** 0.5 * mu, a_T * s ** 2 + 1 - a_T


def _true_reverse_variance(ddpm, s, t):
    """Var[x_{t-1} | x_t] of the forward process itself when x_0 ~ N(mu, s²) (x_{-1} = x_0): x_{t-1} and
    x_t = √α_t x_{t-1} + √β_t n are jointly Gaussian, so it is V' β_t / (α_t V' + β_t), V' = Var x_{t-1}."""
    a_prev = ddpm.alphas_cumprod[t - 1].item() if t > 0 else 1.0
    beta = ddpm.betas[t].item()
    v_prev = a_prev * s ** 2 + 1 - a_prev
    return v_prev * beta / ((1 - beta) * v_prev + beta)


def _roundoff(steps, scale=1.0):
    """A float64 bound for S affine steps of a few roundings each on numbers of size `scale`."""
    return 64 * steps * torch.finfo(torch.float64).eps * scale


# every registered sampler (a new one is tested without being named here), and the ancestral one with σ² = β̃
SAMPLER_CASES = [pytest.param(name, {}, id=name) for name in SAMPLERS] + \
    [pytest.param("ancestral", {"variance": "beta_tilde"}, id="ancestral-beta_tilde")]


@pytest.mark.slow
@pytest.mark.parametrize("method, options", SAMPLER_CASES)
def test_every_sampler_reproduces_a_gaussian(method, options, seed):
    ddpm, mu, s = _gaussian_ddpm()
    z = _standardised(ddpm, mu, s, 1 + seed, method=method, **options)
    mean, var, n = z.mean().item(), z.var().item(), z.numel()
    m, v = _step_moments(ddpm, mu, s, method, **options)
    if method in ("ancestral", "ddim"):  # the papers' samplers: their steps are the equations, written independently
        m_eq, v_eq = _exact_moments(ddpm, mu, s, method, variance=options.get("variance", "beta"))
        assert torch.allclose(m, m_eq, atol=1e-10) and torch.allclose(v, v_eq, atol=1e-10)
    exact_mean, exact_var = ((m - mu) / s).mean().item(), (v / s ** 2).mean().item()
    # 1) the loop runs the step: Monte-Carlo within Z standard errors of a Gaussian sample's mean and variance
    # (the pixels' exact means differ by < 0.01, a negligible spread against these errors)
    assert abs(mean - exact_mean) < Z * (exact_var / n) ** 0.5, (mean, exact_mean)
    assert abs(var - exact_var) < Z * exact_var * (2 / (n - 1)) ** 0.5, (var, exact_var)
    # 2) the mean is exact: with the optimal ε, E[x_{t-1}] = √ᾱ_{t-1} mu whenever E[x_t] = √ᾱ_t mu (every update
    # is linear in x_t, x̂_0 and ε̂), so from q(x_T)'s mean it ends at mu up to round-off, and from N(0, I) the error
    # is the start's offset −√ᾱ_T mu carried through the sampler's affine map (its gain A = m(1) − m(0))
    m_true, v_true = _step_moments(ddpm, mu, s, method, start=_q_T(ddpm, mu, s), **options)
    assert ((m_true - mu) / s).abs().max().item() < _roundoff(T, 1 / s.min().item())
    gain = _step_moments(ddpm, mu, s, method, start=(torch.ones_like(mu), torch.ones_like(mu)))[0] - \
        _step_moments(ddpm, mu, s, method, start=(torch.zeros_like(mu), torch.ones_like(mu)))[0]
    offset = gain * (0 - _q_T(ddpm, mu, s)[0])
    assert ((m - mu - offset) / s).abs().max().item() < _roundoff(T, 1 / s.min().item())
    # 3) the variance converges with the number of steps: its error at S = T is below that at S = T / 10
    v_coarse = _step_moments(ddpm, mu, s, method, steps=T // 10, start=_q_T(ddpm, mu, s), **options)[1]
    assert ((v_true / s ** 2).mean() - 1).abs() < ((v_coarse / s ** 2).mean() - 1).abs()
    if method == "ancestral":
        # 4) Ho et al.'s two variances bracket the truth (Sec. 3.2): the reverse step's true variance
        # Var[x_{t-1} | x_t] lies between β̃_t (its value given x_0) and β_t (s <= 1), and m ← A m + B, v ← A² v + σ²
        # is monotone in every σ², so from q(x_T) σ² = β̃ ends below s² and σ² = β above s² less the last step's
        # true variance (Algorithm 2 adds no noise at t = 1)
        last = _true_reverse_variance(ddpm, s, 0)
        tol = _roundoff(T)
        if options.get("variance") == "beta_tilde":
            assert (v_true - s ** 2).max().item() <= tol
        else:
            assert (v_true - (s ** 2 - last)).min().item() >= -tol


@pytest.mark.slow
def test_ddim_discretisation_error_shrinks_with_steps(seed):
    ddpm, mu, s = _gaussian_ddpm()
    a_T = ddpm.alphas_cumprod[-1].item()
    all_steps, errors = (10, 25, 50, 100, 250, 500, 1000), []
    for steps in all_steps:
        m, v = _exact_moments(ddpm, mu, s, "ddim", steps)
        errors.append(abs((v / s ** 2).mean().item() - 1))  # DDIM under-disperses
        # the mean is exact but for the start: N(0, I) instead of q(x_T) = N(√ᾱ_T mu, ·) offsets it by the
        # sampler's gain times −√ᾱ_T mu (the map is affine, its gain m(start = 1) − m(start = 0))
        gain = _exact_moments(ddpm, mu, s, "ddim", steps, start=1.0)[0] - m
        assert ((m - mu + gain * a_T ** 0.5 * mu) / s).abs().max().item() < _roundoff(steps, 1 / s.min().item())
    # DDIM is a first-order scheme: the error falls with every refinement, and the observed order
    # log(e_S / e_S') / log(S' / S) rises towards 1 as S grows (the asymptotic regime)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    orders = [math.log(e0 / e1) / math.log(s1 / s0)
              for (s0, e0), (s1, e1) in zip(zip(all_steps, errors), zip(all_steps[1:], errors[1:]))]
    assert all(a < b for a, b in zip(orders, orders[1:])), orders
    assert abs(orders[-1] - 1) < abs(orders[0] - 1), orders
    # the sampler is the exact map of its own discretisation: DDIM is deterministic and, here, affine per
    # pixel, x_0 = A x_T + B, so replaying its draw of x_T gives its output up to float64 round-off
    # (S steps of a few roundings each, on numbers of the size of max |x|, with gains of order 1)
    for steps in (10, 100):
        z = _standardised(ddpm, mu, s, 1 + seed, method="ddim", steps=steps)
        b, _ = _exact_moments(ddpm, mu, s, "ddim", steps)
        a = _exact_moments(ddpm, mu, s, "ddim", steps, start=1.0)[0] - b
        x_T = torch.randn(z.shape, generator=torch.Generator().manual_seed(1 + seed), dtype=torch.float64)
        expected = (a * x_T + b - mu) / s
        tol = _roundoff(steps, (1 + x_T.abs().max().item()) / s.min().item())
        assert (z - expected).abs().max().item() < tol, (steps, (z - expected).abs().max().item(), tol)


def test_ancestral_is_algorithm_2_exactly():
    """T = 3, ε_θ = 0: replay Ho et al.'s Algorithm 2 with the same random draws (noise at t = 2, 1; none at 0)."""
    ddpm = DDPM(ZeroNet(), T=3, beta_start=0.1, beta_end=0.3, shape=(1, 2, 2))
    out = ddpm.sample(5, generator=torch.Generator().manual_seed(3), clip_denoised=False, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64)
    for t in (2, 1, 0):
        beta = ddpm.betas[t].item()
        z = torch.randn(x.shape, generator=g, dtype=torch.float64) if t > 0 else 0.0
        x = (x - 0.0) / (1 - beta) ** 0.5 + beta ** 0.5 * z
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def test_sampling_timesteps():
    assert sampling_timesteps(1000, 1000).tolist() == list(range(999, -1, -1))
    assert sampling_timesteps(1000, 10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert sampling_timesteps(1000, 1).tolist() == [999]


def test_samples_are_in_range_shape_and_reproducible():
    torch.manual_seed(0)
    ddpm = DDPM(UNet(base_channels=8), T=50)
    torch.nn.init.normal_(ddpm.network.conv_out.weight, std=0.5)
    for method in ("ancestral", "ddim"):
        a = ddpm.sample(3, steps=5, method=method, generator=torch.Generator().manual_seed(0))
        b = ddpm.sample(3, steps=5, method=method, generator=torch.Generator().manual_seed(0))
        assert a.shape == (3, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
        assert torch.equal(a, b)
    x, traj = ddpm.sample(2, steps=4, method="ddim", return_trajectory=True)
    assert traj.shape == (5, 2, 1, 28, 28) and torch.equal(traj[-1], x)


def test_training_reduces_the_loss(seed, bf16):
    """30 Adam steps (under bf16 autocast if GEN_LIB_TEST_BF16=1) lower the expected loss: on a fixed
    probe of 8 draws of (t, ε) per image, the per-example losses before and after, paired, differ by
    more than Z standard errors of their mean difference."""
    torch.manual_seed(seed)
    ddpm = DDPM(UNet(base_channels=8), T=100)
    x0 = torch.rand(32, 1, 28, 28) * 2 - 1
    g = torch.Generator().manual_seed(seed + 9)
    probe_x = x0.repeat(8, 1, 1, 1)  # (256, 1, 28, 28)
    probe_t = torch.randint(0, ddpm.T, (len(probe_x),), generator=g)
    probe_eps = torch.randn(probe_x.shape, generator=g)

    @torch.no_grad()
    def per_example_loss():  # ‖ε − ε_θ(x_t, t)‖² / D per probe example, in fp32
        eps = ddpm.network(ddpm.q_sample(probe_x, probe_t, probe_eps), probe_t)
        return (eps - probe_eps).square().flatten(1).mean(1)

    before = per_example_loss()
    opt = torch.optim.Adam(ddpm.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(30):
        with autocast(torch.device("cpu"), bf16):
            loss = ddpm.loss(x0, generator=g)
        opt.zero_grad()
        loss.float().backward()
        opt.step()
    drop = before - per_example_loss()
    assert drop.mean() > Z * drop.std() / len(drop) ** 0.5, (drop.mean(), drop.std())


def test_bad_input():
    ddpm = DDPM(ZeroNet(), T=T)
    x0 = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"t in \[0, 1000\] is out of range"):
        ddpm.q_sample(x0, torch.tensor([0, 1000]), torch.randn_like(x0))
    with pytest.raises(ValueError, match=r"t in \[-1, 3\] is out of range"):
        ddpm.q_sample(x0, torch.tensor([-1, 3]), torch.randn_like(x0))
    with pytest.raises(ValueError, match="int64"):
        ddpm.q_sample(x0, torch.tensor([0.0, 1.0]), torch.randn_like(x0))
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 1, 32, 32\)"):
        ddpm.loss(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x0 lies in \[0, 2\]"):
        ddpm.loss(torch.full((2, 1, 28, 28), 2.0).index_fill_(0, torch.tensor([0]), 0.0))
    with pytest.raises(ValueError, match="method='euler' is unknown"):
        ddpm.sample(2, method="euler")
    with pytest.raises(ValueError, match="steps=0"):
        ddpm.sample(2, steps=0)
    with pytest.raises(ValueError, match="steps=1001"):
        ddpm.sample(2, steps=1001, method="ddim")
    with pytest.raises(ValueError, match="variance='fixed' is unknown"):
        ddpm.sample(2, variance="fixed")
    with pytest.raises(ValueError, match="beta_start"):
        DDPM(ZeroNet(), beta_start=0.03, beta_end=0.02)
