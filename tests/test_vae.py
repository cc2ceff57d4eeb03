"""The VAE's bounds: ELBO <= IWAE_K <= log p(x), checked against numerical integration.

Monte-Carlo comparisons are made at Z standard errors, each computed in the test from the
draws themselves; quadrature errors are bounded by refining the grid in the same run.
"""

import copy
import math

import pytest
import torch
from torch import nn

from _bounds import Z, t_quantile
from gen_lib import data, priors, quadrature
from gen_lib import vae as V
from gen_lib.training import fit

NAMES = priors.names()  # the registry: a prior registered anywhere (a plugin too) is tested


def _binary(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).double()


def _small(name: str, latent_dim: int = 2, likelihood: str = "bernoulli") -> V.VAE:
    torch.manual_seed(0)
    return V.build_vae(name, likelihood=likelihood, latent_dim=latent_dim, hidden=32).double()


@pytest.fixture(scope="module")
def trained(seed, bf16):
    """A study-sized VAE (784-512-512-2) per prior, briefly trained on 10,000 binarized MNIST images
    (seed GEN_LIB_TEST_SEED, bf16 autocast if GEN_LIB_TEST_BF16=1; evaluated in fp32)."""
    x, _ = data.load_mnist("train")
    xb = data.binarize(x[:10000])
    models = {}
    for name in ("gaussian", "flow"):
        torch.manual_seed(seed)
        model = V.build_vae(name)
        fit(model, xb, epochs=3, batch_size=128, lr=1e-3, seed=seed, config={"test": name}, device="cpu",
            bf16=bf16, progress=False)
        models[name] = model
    test, _ = data.load_mnist("test")
    return models, data.binarize(test[:12])


def _log_weights(model: V.VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x) per image: (k, B), float64."""
    x = x.flatten(1)
    q, p = model.encoder(x), model.prior()
    return model.log_weights(x, q.rsample((k,)), q, p).double()


def _iwae_stderr(log_w: torch.Tensor) -> torch.Tensor:
    """Standard error of IWAE_K = log mean_k w_k from its own K log-weights (K, B) (delta method):
    se = std(w) / (sqrt(K) mean(w)) = sqrt((K sum_k wn_k^2 - 1) / (K - 1)), wn the normalised weights."""
    k = log_w.shape[0]
    wn = torch.softmax(log_w, dim=0)
    return ((k * wn.square().sum(0) - 1) / (k - 1)).clamp_min(0).sqrt()


@pytest.mark.parametrize("name", NAMES)
def test_bounds_have_per_example_shape_and_gradients(name):
    model = _small(name)
    x = _binary()
    elbo, iwae = model.elbo(x), model.iwae(x, 5)
    assert elbo.shape == iwae.shape == (8,)
    assert torch.isfinite(elbo).all() and torch.isfinite(iwae).all()
    model.loss(x).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient on {pname}"


def test_kl_method_per_prior():
    expected = {"gaussian": "analytic", "mog": "mc", "flow": "mc", "vamp": "mc"}
    assert {n: _small(n).kl_method() for n in expected} == expected


@pytest.mark.parametrize("name", ("mog", "flow", "vamp"))
def test_iwae_k1_is_the_mc_elbo_for_the_same_draw(name):
    model, x = _small(name), _binary()
    torch.manual_seed(5)
    elbo = model.elbo(x)
    torch.manual_seed(5)
    assert torch.allclose(model.iwae(x, 1), elbo, atol=1e-10)


def test_iwae_k1_equals_analytic_elbo_in_expectation_and_kl_estimates_agree():
    model = _small("gaussian")
    x = _binary(4).repeat(5000, 1, 1, 1)  # (20000, ...): 5000 draws per image
    with torch.no_grad():
        analytic = model.elbo(x, kl="analytic").view(5000, 4)
        mc = model.elbo(x, kl="mc").view(5000, 4)
        iwae1 = model.iwae(x, 1).view(5000, 4)
    for est in (mc, iwae1):  # independent draws: the difference of means has both standard errors
        se = (est.var(0) / 5000 + analytic.var(0) / 5000).sqrt()
        assert ((est.mean(0) - analytic.mean(0)).abs() < Z * se).all(), (est.mean(0) - analytic.mean(0), se)
    assert not torch.allclose(mc, analytic)  # two different estimators, equal only in expectation


def test_iwae_non_decreasing_in_k(trained):
    models, x = trained
    repeats = {1: 400, 10: 100, 100: 40, 1000: 20}  # independent draws of IWAE_K (mean over the 12 images)
    with torch.no_grad():
        draws = {k: torch.stack([models["gaussian"].iwae(x, k).double().mean() for _ in range(r)])
                 for k, r in repeats.items()}
    mean = {k: d.mean().item() for k, d in draws.items()}
    se = {k: (d.std() / math.sqrt(len(d))).item() for k, d in draws.items()}
    q = t_quantile(min(repeats.values()) - 1)  # standard errors estimated from >= 20 draws: Student-t multiplier
    ks = list(repeats)
    for a, b in zip(ks, ks[1:]):  # E[IWAE_K] is non-decreasing in K (Burda et al., 2016, Theorem 1)
        assert mean[a] <= mean[b] + q * math.hypot(se[a], se[b]), (mean, se)
    assert mean[1000] - mean[1] > q * math.hypot(se[1], se[1000]), (mean, se)  # and it does move: the bound tightens


@pytest.mark.slow
@pytest.mark.parametrize("name", ("gaussian", "flow"))
def test_iwae_5000_below_and_close_to_quadrature(trained, name, seed):
    models, x = trained
    model, k = models[name], 5000
    with torch.no_grad():
        torch.manual_seed(seed)
        iwae = model.iwae(x, k).double()
        torch.manual_seed(seed)  # the same draws again, as log-weights: their spread is IWAE's standard error
        log_w = _log_weights(model, x, k)
        elbos = torch.stack([model.elbo(x) for _ in range(200)]).double()  # (200, B)
        exact = V.log_likelihood_quadrature(model, x, n_grid=64)
        coarse = V.log_likelihood_quadrature(model, x, n_grid=32)
    # model.iwae is logsumexp - log K of these log-weights, up to its float32 round-off: a sum of K terms
    # in (0, 1] (relative error <= K u) and a few roundings of numbers of the size of the result
    u = torch.finfo(torch.float32).eps / 2
    ref = log_w.logsumexp(0) - math.log(k)
    assert ((iwae - ref).abs() <= k * u + 4 * u * ref.abs()).all(), iwae - ref
    se = _iwae_stderr(log_w)  # (B,)
    quad = (exact - coarse).abs().max()  # bounds the 64-grid's error (first-order convergence, see below)
    elbo, elbo_se = elbos.mean(0), elbos.std(0) / math.sqrt(len(elbos))
    n = len(x)
    # below: a lower bound in expectation, and one draw exceeds log p(x) rarely, by a few of its standard errors
    assert (iwae - exact).mean() <= Z * se.square().sum().sqrt() / n + quad, (iwae - exact, se)
    assert (iwae <= exact + Z * se + quad).all(), ((iwae - exact) / se)
    # close: IWAE_5000 is above the ELBO (in expectation) and strictly tighter on average
    gap_se = (se.square() + elbo_se.square()).sqrt()
    assert (elbo <= iwae + Z * gap_se).all(), ((iwae - elbo) / gap_se)
    assert (iwae - elbo).mean() > Z * gap_se.square().sum().sqrt() / n, (iwae - elbo, gap_se)


def _log_integrand(model: V.VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) for images x (B, 784) and latents z (B, M, 2): (B, M), float64."""
    zz = z.transpose(0, 1).to(torch.float32)  # (M, B, 2): sample-first
    return (model.decoder(zz).log_prob(x) + model.prior().log_prob(zz)).double().transpose(0, 1)


def _student_t(loc: torch.Tensor, chol: torch.Tensor, df: float, k: int):
    """k draws (B, k, 2) of a bivariate Student-t (location loc (B, 2), scale chol chol^T) and their log density."""
    g = torch.randn(loc.shape[0], k, 2, dtype=torch.float64)
    scale = (df / torch.distributions.Chi2(df).sample((loc.shape[0], k, 1)).double()).sqrt()
    z = loc[:, None] + (g * scale) @ chol.transpose(1, 2)
    u = torch.linalg.solve_triangular(chol[:, None], (z - loc[:, None])[..., None], upper=False)[..., 0]
    log_r = (math.lgamma((df + 2) / 2) - math.lgamma(df / 2) - math.log(df * math.pi)
             - chol.diagonal(dim1=1, dim2=2).log().sum(-1, keepdim=True)
             - (df + 2) / 2 * torch.log1p(u.square().sum(-1) / df))
    return z, log_r


@pytest.mark.slow
@pytest.mark.parametrize("name", ("gaussian", "flow"))
def test_quadrature_holds_the_mass(trained, name, seed):
    """Two checks independent of the adaptive search (which stops only when its own edge test passes):

    1. the mass of f(z) = p(x|z) p(z) on a box three times as wide as the final one (same centre and
       cells) lies inside the final box, up to less than float32's resolution of log p(x);
    2. importance sampling from a heavy-tailed Student-t (3 degrees of freedom) fitted to the quadrature's
       posterior, an unbiased estimate of p(x) whatever the box, agrees within its standard error plus the
       quadrature's own error. (Where the posterior sits far from the encoder's mean the box grows, and 32
       cells may not resolve it: the 64-grid is the reference, its error bounded by its change from 32.)
    """
    models, x = trained
    model = models[name]
    torch.manual_seed(seed)
    with torch.no_grad():
        exact, info = V.log_likelihood_quadrature(model, x, n_grid=64, return_info=True)
        quad = (exact - V.log_likelihood_quadrature(model, x, n_grid=32)).abs().max()  # first-order bound
        xf = x.flatten(1).float()
        n = 3 * 24
        t = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1
        u = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)  # (n*n, 2) in (-1, 1)
        centre, half = info["centre"], info["half_width"]
        f = _log_integrand(model, xf, centre[:, None] + 3 * half[:, None] * u)  # (B, n*n)
        outside = ~(u.abs() < 1 / 3).all(-1)  # cells of the wide box outside the final box
        log_outside = f[:, outside].logsumexp(1) - f.logsumexp(1)
        resolution = torch.finfo(torch.float32).eps * exact.abs()  # float32's spacing at log p(x)
        assert (log_outside < resolution.log()).all(), (log_outside, resolution.log())

        m = 32  # the posterior's mean and covariance on the final box's grid
        t = (torch.arange(m, dtype=torch.float64) + 0.5) / m * 2 - 1
        z = centre[:, None] + half[:, None] * torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
        post = torch.softmax(_log_integrand(model, xf, z), 1)  # (B, m*m)
        mean = (post[..., None] * z).sum(1)
        d = z - mean[:, None]
        cov = (post[..., None, None] * d[..., :, None] * d[..., None, :]).sum(1)
        cov = cov + torch.diag_embed((2 * half / m).square() / 12)  # at least a cell's spread
        k = 4000
        zs, log_r = _student_t(mean, torch.linalg.cholesky(2 * cov), 3.0, k)
        log_w = (_log_integrand(model, xf, zs) - log_r).T  # (k, B)
    estimate = log_w.logsumexp(0) - math.log(k)
    se = _iwae_stderr(log_w)
    assert ((estimate - exact).abs() <= Z * se + quad).all(), (estimate - exact, se, quad)


def test_quadrature_converges_as_grid_is_refined(trained):
    """Once the grid resolves the posterior (n = 16: the final box spans about +-sqrt(2 drop) = +-7.7
    standard deviations of a Gaussian peak, so cells of about one), the midpoint rule's error (worst
    image) shrinks with every doubling of n, at least at first order: |E(2n)| <= |E(n)| / 2 gives
    |E(32)| <= |est(16) - est(32)|. (Coarser grids hit or miss the peak: no order there. Per image, the
    error of a ReLU decoder's integrand can stall for one doubling, hence the worst image.) In float64, so
    that round-off (~1e-13) does not blur the discretisation error; the float32 quadrature is checked
    against independent estimates above."""
    models, x = trained
    model = copy.deepcopy(models["flow"]).double()
    est = quadrature.quadrature_convergence(model, x[:6].double(), grids=(16, 32, 64, 128))
    error = {n: (est[n] - est[128]).abs().max().item() for n in (16, 32, 64)}
    assert error[16] > error[32] > error[64], error  # coarser is worse
    change = (est[16] - est[32]).abs().max().item()
    assert error[32] <= change, (error[32], change)


def test_quadrature_exact_when_decoder_ignores_z():
    """If p(x|z) does not depend on z, p(x) = p(x|.) exactly (the prior integrates to 1),
    whatever the encoder says: the adaptive box must grow to the prior's whole support."""
    x = _binary(5)
    for name in ("gaussian", "mog", "vamp"):
        model = _small(name)
        with torch.no_grad():
            model.decoder.net[-1].weight.zero_()
            model.encoder.net[-1].bias[2:].fill_(-3.0)  # narrow posteriors (std ~ 0.05): the box must expand
            exact = model.decoder(torch.zeros(1, 2, dtype=torch.float64)).log_prob(x.view(5, 784))
        est, info = V.log_likelihood_quadrature(model, x, n_grid=64, return_info=True)
        if name != "vamp":  # (the VampPrior's components narrow with the encoder: no need to grow there)
            assert (info["doublings"] > 0).all()
        assert torch.allclose(est, exact, atol=1e-4), (name, est - exact)


def test_brute_force_integration_is_exact_when_decoder_ignores_z():
    """p(x|z) constant in z: p(x) = p(x|.) exactly, so the global grid's error is the prior's mass outside
    the box and the midpoint rule's error on a smooth density (both far below 1e-6 nats here)."""
    x = _binary(1)
    model = _small("gaussian")
    with torch.no_grad():
        model.decoder.net[-1].weight.zero_()
        exact = model.decoder(torch.zeros(1, 2, dtype=torch.float64)).log_prob(x.view(1, 784)).item()
    value, h = quadrature.brute_force_log_px(model, x, n_grid=400)
    assert h > 4 and abs(value - exact) < 1e-6, (value, exact, h)
    with pytest.raises(ValueError, match="one image"):
        quadrature.brute_force_log_px(model, _binary(2))


@pytest.mark.slow
def test_brute_force_agrees_with_the_quadrature_on_trained_models(trained):
    """Two independent integrations of the same p(x|z) p(z) on a trained model: the global grid, whose own
    error shows in its change from n/2 to n, and the adaptive quadrature (64 against 32 bounds its error); in
    float32, so both carry the round-off of a 784-term log-likelihood (<= 784 eps |log p(x)| each)."""
    models, x = trained
    for name in ("gaussian", "flow"):
        model = models[name]
        quad64 = V.log_likelihood_quadrature(model, x[:1], n_grid=64).item()
        quad32 = V.log_likelihood_quadrature(model, x[:1], n_grid=32).item()
        fine, h = quadrature.brute_force_log_px(model, x[:1], n_grid=600)
        coarse, _ = quadrature.brute_force_log_px(model, x[:1], n_grid=300, half_width=h)
        roundoff = 2 * 784 * torch.finfo(torch.float32).eps * abs(quad64)
        assert abs(fine - quad64) <= abs(fine - coarse) + abs(quad64 - quad32) + roundoff, (name, fine, coarse, quad64)


def test_continuous_bernoulli_samples_are_images_in_unit_interval():
    model = _small("flow", likelihood="continuous_bernoulli")
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    assert model.elbo(x).shape == (6,)
    images = model.sample_images(10)
    assert images.shape == (10, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        model.elbo(x + 1)


def test_three_outputs_share_z_and_are_mean_parameter_and_draw():
    model = _small("flow", likelihood="continuous_bernoulli")
    out = {o: model.sample_images(200, generator=torch.Generator().manual_seed(3), output=o) for o in V.OUTPUTS}
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=torch.Generator().manual_seed(3))))
    z = model.prior().sample((200,))  # the z that sample_images draws from that generator
    px = model.decoder(z).base_dist
    lam, mean = px.probs.reshape(out["mean"].shape), px.mean.reshape(out["mean"].shape)
    assert torch.equal(out["parameter"], lam.clamp(0, 1)) and torch.equal(out["mean"], mean.clamp(0, 1))
    # the continuous Bernoulli's mean lies between lambda and 1/2 (it is pulled towards the middle)
    assert ((out["mean"] - 0.5).abs() <= (out["parameter"] - 0.5).abs() + 1e-6).all()
    # a draw is a draw: its pixels scatter around the mean with the distribution's variance (Z standard errors on the average)
    d = out["draw"]
    assert 0 <= d.min() and d.max() <= 1
    resid = (d - mean).pow(2) - px.variance.reshape(d.shape)
    assert resid.mean().abs() < Z * resid.std() / resid.numel() ** 0.5
    with pytest.raises(ValueError, match="output='probs'.*mean, parameter, draw"):
        model.sample_images(2, output="probs")


def test_bernoulli_log_likelihood_is_the_sum_over_pixels_of_x_l_minus_softplus_l():
    model = _small("gaussian").double()
    x = _binary().reshape(-1, 784).double()
    z = torch.randn(7, len(x), 2, dtype=torch.float64)
    logits = model.decoder.net(z)  # (7, B, 784)
    want = (x * logits - torch.logaddexp(logits, torch.zeros_like(logits))).sum(-1)
    # float64 round-off of sums of 784 terms of size |l| + softplus(l): a few hundred u of their absolute sum
    bound = 1e3 * 2.0 ** -53 * (logits.abs() + torch.logaddexp(logits, torch.zeros_like(logits))).sum(-1)
    got = model.log_px(z, x)
    assert got.shape == (7, len(x)) and ((got - want).abs() <= bound).all()


@pytest.mark.parametrize("call, match", [
    (lambda: V.build_vae("laplace"), "laplace"),
    (lambda: V.build_vae("gaussian", likelihood="gaussian"), "likelihood='gaussian'"),
    (lambda: V.log_likelihood_quadrature(_small("gaussian", latent_dim=3), _binary()), "latent_dim=3"),
    (lambda: _small("gaussian").elbo(_binary() * 0.5), "binary.*0.5"),
    (lambda: _small("gaussian").iwae(_binary(), 0), "k=0"),
    (lambda: _small("gaussian").elbo(_binary(), kl="exact"), "kl='exact'"),
    (lambda: _small("mog").elbo(_binary(), kl="analytic"), "no analytic KL"),
])
def test_bad_input_raises_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_bound_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = V.build_vae("flow")
    x = (torch.rand(16, 784) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        elbo = model.elbo(x)
        loss = model.loss(x, check=False)
    assert elbo.dtype == torch.float32 and loss.dtype == torch.float32 and torch.isfinite(elbo).all()
