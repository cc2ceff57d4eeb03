"""The VAE's bounds: ELBO <= IWAE_K <= log p(x), checked against numerical integration."""

import math

import pytest
import torch

from gen_lib import data, priors, vae as V
from gen_lib.training import fit

NAMES = priors.names()  # the registry: a prior registered anywhere (a plugin too) is tested


def _binary(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).double()


def _small(name: str, latent_dim: int = 2, likelihood: str = "bernoulli") -> V.VAE:
    torch.manual_seed(0)
    return V.build_vae(name, likelihood=likelihood, latent_dim=latent_dim, hidden=32).double()


@pytest.fixture(scope="module")
def trained():
    """A study-sized VAE (784-512-512-2) per prior, briefly trained on 10,000 binarized MNIST images."""
    x, _ = data.load_mnist("train")
    xb = data.binarize(x[:10000])
    models = {}
    for name in ("gaussian", "flow"):
        torch.manual_seed(0)
        model = V.build_vae(name)
        fit(model, xb, epochs=3, batch_size=128, lr=1e-3, seed=0, config={"test": name}, device="cpu",
            progress=False)
        models[name] = model
    test, _ = data.load_mnist("test")
    return models, data.binarize(test[:12])


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
    for est in (mc, iwae1):
        se = est.std(0) / math.sqrt(5000)
        assert ((est.mean(0) - analytic.mean(0)).abs() < 5 * se + 1e-3).all()
    assert not torch.allclose(mc, analytic)  # two different estimators, equal only in expectation


def test_iwae_non_decreasing_in_k(trained):
    models, x = trained
    torch.manual_seed(0)
    with torch.no_grad():  # average over repeats (1000 draws of K = 1, ..., 1 of K = 1000): compare expectations
        means = [torch.stack([models["gaussian"].iwae(x, k) for _ in range(1000 // k)]).mean().item()
                 for k in (1, 10, 100, 1000)]
    assert all(a <= b + 0.02 for a, b in zip(means, means[1:])), means
    assert means[-1] - means[0] > 0.1, means  # and it does move: the bound tightens


@pytest.mark.slow
@pytest.mark.parametrize("name", ("gaussian", "flow"))
def test_iwae_5000_below_and_close_to_quadrature(trained, name):
    models, x = trained
    model = models[name]
    torch.manual_seed(0)
    with torch.no_grad():
        iwae = model.iwae(x, 5000).double()
        exact, info = V.log_likelihood_quadrature(model, x, return_info=True)
        elbo = torch.stack([model.elbo(x) for _ in range(200)]).mean(0).double()
    assert (info["log_edge_fraction"] < math.log(1e-9)).all()
    assert (iwae - exact).mean() <= 0.02, (iwae - exact)  # a lower bound in expectation
    assert (iwae <= exact + 0.1).all(), (iwae - exact)  # and one draw exceeds it rarely, and by little
    assert (exact - iwae).mean() < 1.0, (exact - iwae)
    assert (elbo <= iwae + 0.05).all()


def test_quadrature_converges_as_grid_is_refined(trained):
    models, x = trained
    est = V.quadrature_convergence(models["flow"], x[:6], grids=(4, 32, 96))
    assert (est[32] - est[96]).abs().max() < 2e-3, est  # float32 decoder sums jitter at ~1e-4
    assert (est[4] - est[96]).abs().max() > (est[32] - est[96]).abs().max()  # coarser is worse


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


def test_continuous_bernoulli_samples_are_images_in_unit_interval():
    model = _small("flow", likelihood="continuous_bernoulli")
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    assert model.elbo(x).shape == (6,)
    images = model.sample_images(10)
    assert images.shape == (10, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        model.elbo(x + 1)


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
