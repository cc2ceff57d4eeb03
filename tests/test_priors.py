"""Contract tests over every prior of gen_lib.priors, in float64 with a fixed seed."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from _bounds import Z
from gen_lib import priors
from gen_lib.vae import GaussianEncoder

NAMES = priors.names()  # the registry: a prior registered anywhere (a plugin too) is tested


def _make(name: str) -> torch.nn.Module:
    """A prior in float64 with its parameters moved away from their initial values
    (the flow starts as the identity; a test on it alone could not fail)."""
    torch.manual_seed(0)
    encoder = GaussianEncoder(2, hidden=32).double() if priors.spec(name).needs_encoder else None
    prior = priors.build_prior(name, 2, encoder=encoder).double()
    scale = 0.1 if name == "flow" else 0.3  # ten perturbed layers compound: keep the flow's mass on the grid
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(scale * torch.randn_like(p))
    return prior


def _grid(half: float, n: int):
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * half - half
    z = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    return z, (2 * half / n) ** 2


@pytest.mark.parametrize("name", NAMES)
def test_event_shape_and_sample_shape(name):
    d = _make(name)()
    assert isinstance(d, torch.distributions.Distribution)
    assert tuple(d.event_shape) == (2,)
    assert d.sample((7,)).shape == (7, 2)
    assert d.log_prob(torch.zeros(3, 5, 2, dtype=torch.float64)).shape == (3, 5)


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one_and_matches_samples(name):
    """Mass and entropy by a midpoint rule on [-24, 24]^2 (1200^2 cells), whose error is bounded by its
    change from [-12, 12]^2 at the same cells (tails) and from 600^2 cells (discretisation), plus the
    float64 round-off of the sums; E[-log p(s)] over samples s against the entropy, by its standard error."""
    d = _make(name)()
    with torch.no_grad():
        mass, entropy = {}, {}
        for half, n in ((24.0, 1200), (12.0, 600), (24.0, 600)):
            z, cell = _grid(half, n)
            logp = d.log_prob(z)
            mass[half, n] = (logp.exp().sum() * cell).item()
            entropy[half, n] = (-(logp.exp() * logp).sum() * cell).item()  # -E_p log p on the grid
        s = d.sample((40_000,))
        lp = d.log_prob(s)
        se = (lp.std() / math.sqrt(len(lp))).item()
    ref, others = (24.0, 1200), ((12.0, 600), (24.0, 600))
    roundoff = 1200**2 * torch.finfo(torch.float64).eps  # a sum of 1200^2 terms, relative
    mass_err = max(abs(mass[ref] - mass[o]) for o in others) + roundoff
    assert abs(mass[ref] - 1.0) <= mass_err, f"{name}: density integrates to {mass[ref]} (+- {mass_err:.2g})"
    entropy_err = max(abs(entropy[ref] - entropy[o]) for o in others) + roundoff * abs(entropy[ref])
    # if sample() drew from another density than log_prob() describes, E[-log p(s)] would be off
    assert abs(-lp.mean().item() - entropy[ref]) < Z * se + entropy_err, (name, -lp.mean().item(), entropy[ref])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    prior = _make(name)
    z = torch.randn(64, 2, dtype=torch.float64)
    params = dict(prior.named_parameters())
    if name == "gaussian":
        assert not params  # N(0, I) is fixed
        return
    (-prior().log_prob(z).mean()).backward()
    for pname, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient on {pname}"


def test_flow_prior_has_ten_coupling_layers_alternating():
    prior = priors.FlowPrior(2)
    layers = list(prior.flow.layers)
    assert len(layers) == 10
    assert all(layer.s_net[0].out_features == 8 for layer in layers)
    masks = torch.stack([layer.mask for layer in layers])
    assert torch.equal(masks[0::2], masks[0].expand(5, 2)) and torch.equal(masks[1::2], 1 - masks[0].expand(5, 2))


def test_flow_prior_inverse_and_log_det():
    prior = _make("flow")
    z = torch.randn(16, 2, dtype=torch.float64) * 2
    u, log_det = prior.flow.data_to_base(z)
    assert torch.allclose(prior.flow.base_to_data(u), z, atol=1e-10)
    for i in range(4):
        jac = jacobian(lambda v: prior.flow.data_to_base(v[None])[0][0], z[i])  # (2, 2)
        assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_det[i], atol=1e-10)
    assert not torch.allclose(log_det, torch.zeros_like(log_det))  # the perturbed flow is not the identity


def test_vamp_uses_pseudo_inputs_in_unit_interval():
    prior = _make("vamp")
    u = prior.pseudo_inputs()
    assert u.shape == (16, 784) and u.min() >= 0 and u.max() <= 1
    # the encoder's weights belong to the VAE, not a second time to its prior
    assert {n for n, _ in prior.named_parameters()} == {"pseudo_logits", "logits"}


@pytest.mark.parametrize("bad", [
    lambda: priors.build_prior("laplace"),
    lambda: priors.build_prior("vamp"),
    lambda: priors.MoGPrior(2, n_components=0),
    lambda: priors.GaussianPrior(0),
])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_unknown_prior_names_value():
    with pytest.raises(ValueError, match="laplace.*gaussian, mog, flow, vamp"):
        priors.build_prior("laplace")
