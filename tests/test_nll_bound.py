"""Contracts of DDPM.nll_bound (Ho et al., Eq. 5) and its bits/dim: a replay of the paper's terms with
torch.distributions, and Gaussian data whose true density and the optimal ε-network are known (float64)."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from _bounds import Z, t_quantile
from gen_lib import data, flows, vae_eval
from gen_lib import vae as V
from gen_lib.diffusion import DDPM, alphas_cumprod, linear_beta_schedule
from gen_lib.diffusion_nll import bound_bits_per_dim, dataset_bits_per_dim
from gen_lib.unet import UNet
from test_diffusion import GaussianOptimalEps  # the optimal ε-network of Gaussian data

T = 1000


def _gaussian_case():
    """16 independent pixels N(mu, s²), mu in [-0.3, 0.3], s in [0.05, 0.2]: [-1, 1] holds > 3.5 s around mu."""
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand(1, 4, 4, generator=g, dtype=torch.float64) - 0.5) * 0.6
    s = 0.05 + 0.15 * torch.rand(1, 4, 4, generator=g, dtype=torch.float64)
    ddpm = DDPM(GaussianOptimalEps(mu, s, alphas_cumprod(linear_beta_schedule(T))), T=T, shape=(1, 4, 4))
    return ddpm, mu, s


def _draw(mu, s, n, seed):
    """n draws of the data, redrawing the rare ones outside [-1, 1] (a truncation of < 3e-4 of the
    mass per pixel: its effect on the log-density, < 3e-4 nats per pixel, is far below the test's error)."""
    g = torch.Generator().manual_seed(seed)
    x = mu + s * torch.randn(n, *mu.shape, generator=g, dtype=torch.float64)
    while (bad := (x.abs() > 1).flatten(1).any(1)).any():
        x[bad] = mu + s * torch.randn(int(bad.sum()), *mu.shape, generator=g, dtype=torch.float64)
    return x


def _true_nll(x, mu, s):
    return (0.5 * math.log(2 * math.pi) + torch.log(s) + 0.5 * ((x - mu) / s) ** 2).flatten(1).sum(1)


def _gap(ddpm, mu, s):
    """E_data[bound] − H(data) for the optimal ε, summed over pixels, by a route independent of the bound's terms.

    The bound's expectation is H(data) + KL(q(x_{0:T}) ‖ p_θ(x_{0:T})), and the joint KL splits into
    KL(q(x_T) ‖ N(0, 1)) + Σ_{t=1..T} E KL(q(x_{t−1} | x_t) ‖ p_θ(x_{t−1} | x_t)). For Gaussian data the
    optimal ε makes μ_θ = E[x_{t−1} | x_t] exactly, so each step costs only the variance mismatch
    KL(N(0, v_t) ‖ N(0, β_t)) with v_t = Var(x_{t−1} | x_t) = β̃_t + c_t² Var(x_0 | x_t): the price of σ_t² = β_t.
    """
    betas, abar = ddpm.betas, ddpm.alphas_cumprod
    s2 = s ** 2
    v_T = abar[-1] * s2 + 1 - abar[-1]  # q(x_T) = N(√ᾱ_T mu, v_T)
    gap = 0.5 * (v_T + abar[-1] * mu ** 2 - 1 - torch.log(v_T))
    for i in range(ddpm.T):
        a, b = abar[i], betas[i]
        a_prev = abar[i - 1] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        c = a_prev.sqrt() * b / (1 - a)  # coefficient of x_0 in the posterior mean
        var_x0 = s2 * (1 - a) / (a * s2 + 1 - a)  # Var(x_0 | x_t)
        v = b * (1 - a_prev) / (1 - a) + c ** 2 * var_x0
        gap = gap + 0.5 * (torch.log(b / v) + v / b - 1)
    return gap.sum().item()


class Affine(nn.Module):
    def forward(self, x, t):  # depends on t: checks the step indexing
        return 0.5 * x + 0.1 * t.reshape(-1, 1, 1, 1)


class Zero(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def _mean_se(v):
    return v.mean().item(), v.std().item() / math.sqrt(v.numel())


def test_terms_replay_ho_et_al_eq5_with_torch_distributions():
    """T = 3, a fixed ε-network: L_T + L_2 + L_1 + L_0 written from the paper with torch.distributions'
    Normal KL and log-density, on the same draws (steps 0, 1, 2 in that order, one draw per step)."""
    net = Affine()
    ddpm = DDPM(net, T=3, beta_start=0.1, beta_end=0.3, shape=(1, 2, 2))
    x0 = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    out = ddpm.nll_bound(x0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(3, 5, 1, 2, 2, generator=g, dtype=torch.float64)  # step-major, as nll_bound draws them
    betas = [0.1, 0.2, 0.3]
    alphas = [1 - b for b in betas]
    abar = [math.prod(alphas[:k + 1]) for k in range(3)]
    expected = kl_divergence(Normal(abar[2] ** 0.5 * x0, (1 - abar[2]) ** 0.5), Normal(0.0, 1.0)).flatten(1).sum(1)
    for k in range(3):  # paper's t = k + 1
        x_t = abar[k] ** 0.5 * x0 + (1 - abar[k]) ** 0.5 * noise[k]
        eps = net(x_t, torch.full((5,), k))
        mu_theta = (x_t - betas[k] / (1 - abar[k]) ** 0.5 * eps) / alphas[k] ** 0.5  # Ho et al., Eq. 11
        p = Normal(mu_theta, betas[k] ** 0.5)
        if k == 0:
            expected = expected - p.log_prob(x0).flatten(1).sum(1)  # L_0
        else:  # L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)), Ho et al., Eq. 6-7
            mu_tilde = (abar[k - 1] ** 0.5 * betas[k] * x0 + alphas[k] ** 0.5 * (1 - abar[k - 1]) * x_t) / (1 - abar[k])
            beta_tilde = (1 - abar[k - 1]) / (1 - abar[k]) * betas[k]
            expected = expected + kl_divergence(Normal(mu_tilde, beta_tilde ** 0.5), p).flatten(1).sum(1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_bound_on_gaussian_data_lies_above_the_true_nll_by_the_variance_gap():
    ddpm, mu, s = _gaussian_case()
    x = _draw(mu, s, 4000, seed=1)
    d = ddpm.nll_bound(x, generator=torch.Generator().manual_seed(2), batch=2**15) - _true_nll(x, mu, s)
    mean, se = _mean_se(d)  # Monte-Carlo error over data and diffusion noise
    gap = _gap(ddpm, mu, s)
    D = mu.numel()
    # an upper bound: above the true NLL on average, within Z Monte-Carlo standard errors
    assert mean > -Z * se, (mean, se)
    # and a close one: the excess is the KL of the σ_t² = β_t choice, computed independently above
    assert abs(mean - gap) < Z * se, (mean, se, gap)
    # which is positive (a KL) and below the worst case of its steps t >= 1, v_t = β̃_t (Var(x_0 | x_t) = 0), plus
    # the first step (v_0 = Var(x_0 | x_1) = s² β_0 / (α_0 s² + β_0)) and L_T
    abar, beta0 = ddpm.alphas_cumprod, ddpm.betas[0].item()
    ratio = (1 - abar[:-1]) / (1 - abar[1:])  # β̃_t / β_t for t = 1 .. T − 1
    v0 = s ** 2 * beta0 / ((1 - beta0) * s ** 2 + beta0)
    v_T = abar[-1] * s ** 2 + 1 - abar[-1]
    worst = (D * 0.5 * (ratio - 1 - torch.log(ratio)).sum()
             + (0.5 * (torch.log(beta0 / v0) + v0 / beta0 - 1)).sum()
             + (0.5 * (v_T + abar[-1] * mu ** 2 - 1 - torch.log(v_T))).sum()).item()
    assert 0 < gap < worst, (gap, worst)


def test_stratified_estimate_over_t_is_unbiased():
    ddpm, mu, s = _gaussian_case()
    x = _draw(mu, s, 4000, seed=4)
    d = ddpm.nll_bound(x, generator=torch.Generator().manual_seed(5), n_t=20, batch=2**15) - _true_nll(x, mu, s)
    mean, se = _mean_se(d)  # the strata's sampling noise is part of each example's value, so of se
    assert abs(mean - _gap(ddpm, mu, s)) < Z * se, (mean, se)


def test_bits_per_dim_on_the_flows_scale():
    D = 16
    # the uniform density on [-1, 1]^D, −log p(x0) = D ln 2, is the uniform density on y in [0, 1]^D: 8 bits/dim
    nll = torch.full((3,), D * math.log(2.0), dtype=torch.float64)
    torch.testing.assert_close(bound_bits_per_dim(nll, dim=D), torch.full((3,), 8.0, dtype=torch.float64))
    # in general: flows.bits_per_dim of log p(y) = −nll + D ln 2 (Jacobian of y -> 2y − 1)
    nll = torch.tensor([-30.0, 0.0, 12.5], dtype=torch.float64)
    torch.testing.assert_close(bound_bits_per_dim(nll, dim=D), flows.bits_per_dim(-nll + D * math.log(2.0), dim=D))


def test_dataset_bits_per_dim_scores_the_flows_dequantized_images(monkeypatch):
    ddpm = DDPM(Zero(), T=5)
    images = torch.randint(0, 256, (7, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float() / 255
    seen, bound = [], ddpm.nll_bound

    def spy(x0, **kw):  # what the bound is asked to score, and what it returns
        seen.append((x0, bound(x0, **kw)))
        return seen[-1][1]

    monkeypatch.setattr(ddpm, "nll_bound", spy)
    out = dataset_bits_per_dim(ddpm, images, seed=3, batch_size=4)
    assert out.shape == (7,) and [x.shape[0] for x, _ in seen] == [4, 3]
    # independently: the flow's y = (255 x + u) / 256, u the seed's uniform stream over the images in order, mapped
    # to [-1, 1]; bits/dim on the flow's scale, −log p(y) / (D ln 2) + 8 with log p(y) = −nll + D ln 2
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(torch.cat([x for x, _ in seen]), 2 * (images * 255 + u) / 256 - 1, rtol=0, atol=1e-6)
    nll = torch.cat([b for _, b in seen]).double()
    torch.testing.assert_close(out.double(), nll / (784 * math.log(2)) + 7, rtol=1e-12, atol=0)


def test_shape_dtype_determinism_and_mode():
    torch.manual_seed(0)
    ddpm = DDPM(UNet(base_channels=8), T=20)
    ddpm.train()
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    for n_t in (None, 5):
        a = ddpm.nll_bound(x0, generator=torch.Generator().manual_seed(0), n_t=n_t, batch=16)
        b = ddpm.nll_bound(x0, generator=torch.Generator().manual_seed(0), n_t=n_t, batch=16)
        c = ddpm.nll_bound(x0, generator=torch.Generator().manual_seed(1), n_t=n_t, batch=16)
        assert a.shape == (3,) and a.dtype == torch.float64 and torch.isfinite(a).all()
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert ddpm.network.training  # evaluated with dropout off, the mode restored after


def test_bad_input():
    ddpm = DDPM(Zero(), T=10, shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"x0 lies in \[-1, 1\.5\]"):
        ddpm.nll_bound(torch.tensor([-1.0, 1.5]).repeat(8).reshape(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 1, 28, 28\); expected \(B, 1, 4, 4\)"):
        ddpm.nll_bound(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"x0 has shape \(16,\)"):
        ddpm.nll_bound(torch.zeros(16))
    for n_t in (0, 10, 2.5):
        with pytest.raises(ValueError, match=rf"n_t={n_t}"):
            ddpm.nll_bound(torch.zeros(2, 1, 4, 4), n_t=n_t)
    with pytest.raises(ValueError, match="batch=0"):
        ddpm.nll_bound(torch.zeros(2, 1, 4, 4), batch=0)


# -- the continuous-Bernoulli VAE on the same scale ---------------------------------------------------------

def _images(n, seed=0):
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)).double() / 255


def _cb_vae(prior="gaussian"):
    torch.manual_seed(0)
    return V.build_vae(prior, likelihood="continuous_bernoulli", hidden=32).double()


def test_vae_bits_per_dim_is_exact_when_the_encoder_is_the_prior_and_the_decoder_ignores_z():
    """Then every importance weight is p(y|z) p(z)/q(z|y) = p(y): IWAE_K = log p(y) for any K, and
    log p(y) is the continuous Bernoulli density, written here from its closed form (Loaiza-Ganem &
    Cunningham, 2019): y log λ + (1 − y) log(1 − λ) + log C(λ), C(λ) = 2 artanh(1 − 2λ)/(1 − 2λ)."""
    model = _cb_vae()
    with torch.no_grad():
        model.decoder.net[-1].weight.zero_()  # logits = the (random) bias, whatever z
        model.encoder.net[-1].weight.zero_()
        model.encoder.net[-1].bias.copy_(torch.tensor([0.0, 0.0] + [math.log(math.expm1(1 - 1e-5))] * 2))  # N(0, I)
    images = _images(6)
    out = vae_eval.dataset_bits_per_dim(model, images, k=3, seed=2, batch_size=4)
    gen = torch.Generator().manual_seed(2)  # the flows' dequantization, batch by batch
    y = torch.cat([data.dequantize(images[i:i + 4].float(), generator=gen) for i in (0, 4)]).double().flatten(1)
    lam = torch.sigmoid(model.decoder.net[-1].bias.detach())  # (784,)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    log_p = (y * torch.log(lam) + (1 - y) * torch.log1p(-lam) + log_c).sum(1)
    torch.testing.assert_close(out, -(log_p - 784 * math.log(256)) / (784 * math.log(2)), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_vae_bits_per_dim_bounds_the_quadrature_value_from_above():
    model = _cb_vae()
    with torch.no_grad():
        model.encoder.net[-1].bias[2:].fill_(-2.0)  # posteriors of std ~0.13, narrower than the true ones: a real gap
    images = _images(6, seed=1)
    exact = vae_eval.dataset_bits_per_dim(model, images, method="quadrature")  # near-exact log p(y), 2-D latent
    y = data.dequantize(images.float(), generator=torch.Generator().manual_seed(0)).double()  # the same y
    finer = flows.bits_per_dim(V.log_likelihood_quadrature(model, y, n_grid=48), dim=784)
    grid_error = (exact - finer).abs().max().item()  # the quadrature's own error, from a finer grid
    bounds = {}
    for k in (1, 100):  # on the same y as the exact value, 40 independent importance draws per image and K
        torch.manual_seed(k)
        with torch.no_grad():
            bounds[k] = torch.cat([flows.bits_per_dim(model.iwae(y.to(model._dtype()), k).double(), dim=784)
                                   for _ in range(40)])
    exact = exact.repeat(40)  # each draw's value is an upper bound in expectation, image by image
    t = t_quantile(len(exact) - 1)  # one-sided checks on means of 240 differences
    for k, bound in bounds.items():
        mean, se = _mean_se(bound - exact)
        assert mean > -t * se - grid_error, (k, mean, se)  # an upper bound, within Monte-Carlo error
    # and a tighter one with more importance samples (paired over the same images)
    mean, se = _mean_se(bounds[1] - bounds[100])
    assert mean > t * se, (mean, se)


def test_vae_bits_per_dim_bad_input():
    torch.manual_seed(0)
    binary = V.build_vae("gaussian", hidden=32)
    with pytest.raises(ValueError, match="likelihood='continuous_bernoulli'"):
        vae_eval.dataset_bits_per_dim(binary, _images(2))
    with pytest.raises(ValueError, match="method='exact' is unknown"):
        vae_eval.dataset_bits_per_dim(_cb_vae(), _images(2), method="exact")
