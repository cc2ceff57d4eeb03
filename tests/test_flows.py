"""Contract tests over every flow: the study's image flow, a small image flow, and the 2-D
flow prior (built here from AffineCoupling, independent of gen_lib.priors). float64, fixed seed."""

import math

import pytest
import torch

from _bounds import Z
from gen_lib import checkpoints, data, flows, training
from gen_lib.study import recipes
from gen_lib.flows import (AffineCoupling, Flow, ImageFlow, LogitTransform, bits_per_dim, build_image_flow,
                           checkerboard_mask, dataset_bits_per_dim, mean_and_stderr)


def _randomize(flow: Flow, scale: float = 0.3) -> Flow:
    # Couplings start as the identity (zero last layers): perturb every parameter, or the
    # contract would hold trivially.
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * scale)
    return flow


def _prior_2d() -> Flow:
    masks = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    return Flow([AffineCoupling(masks[k % 2], 8) for k in range(10)], (2,))


FLOWS = {
    "prior_2d": (_prior_2d, (2,)),
    "image_small": (lambda: build_image_flow(n_layers=4, hidden=16, image_shape=(1, 4, 4)), (1, 4, 4)),
    "image_small_nologit": (lambda: build_image_flow(n_layers=4, hidden=16, logit_alpha=None,
                                                     image_shape=(1, 4, 4)), (1, 4, 4)),
    "image_study": (build_image_flow, (1, 28, 28)),
}


def _data(name: str, shape: tuple[int, ...], n: int = 5) -> torch.Tensor:
    if name.startswith("image"):
        return torch.rand(n, *shape, dtype=torch.float64)  # dequantized images in [0, 1]
    return torch.randn(n, *shape, dtype=torch.float64) * 2.0


@pytest.fixture(params=list(FLOWS))
def flow_case(request):
    torch.manual_seed(0)
    build, shape = FLOWS[request.param]
    scale = 0.01 if request.param == "image_study" else 0.3  # 20 wide layers: keep the map tame
    flow = _randomize(build().double(), scale)
    return request.param, flow, _data(request.param, shape)


def test_invertible(flow_case):
    _, flow, x = flow_case
    z, _ = flow.data_to_base(x)
    assert z.shape == x.shape
    assert not torch.allclose(z, x)  # the flow does something
    assert torch.allclose(flow.base_to_data(z), x, atol=1e-9, rtol=0)


def test_log_prob_is_base_plus_log_det(flow_case):
    _, flow, x = flow_case
    z, log_det = flow.data_to_base(x)
    lp = flow.log_prob(x)
    assert lp.shape == (x.shape[0],) and log_det.shape == (x.shape[0],)
    assert torch.allclose(lp, flow.base_log_prob(z) + log_det, atol=1e-10)
    assert torch.allclose(flow().log_prob(x), lp, atol=1e-10)  # the Distribution view agrees
    base = torch.distributions.Normal(0.0, 1.0).log_prob(z.reshape(len(z), -1)).sum(-1)
    assert torch.allclose(flow.base_log_prob(z), base, atol=1e-10)


def test_log_det_matches_autograd_jacobian(flow_case):
    name, flow, x = flow_case
    if name == "image_study":
        pytest.skip("784 x 784 Jacobians: checked on the small image flow of the same code")
    for xi in x[:3]:
        jac = torch.autograd.functional.jacobian(
            lambda v: flow.data_to_base(v.reshape(1, *xi.shape))[0].flatten(), xi.flatten())
        _, log_det = flow.data_to_base(xi.unsqueeze(0))
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        assert torch.allclose(log_det[0], logabs, atol=1e-8), (name, log_det.item(), logabs.item())


def test_gradient_reaches_every_parameter(flow_case):
    name, flow, x = flow_case
    flow.loss(x).backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_sample_shapes_and_range(flow_case):
    name, flow, x = flow_case
    s = flow.sample(7, generator=torch.Generator().manual_seed(1))
    assert s.shape == (7, *x.shape[1:]) and s.dtype == torch.float64
    assert torch.isfinite(s).all()
    if name.startswith("image") and "nologit" not in name:
        edge = 0.05 / 0.9  # the inverse logit maps onto (-alpha, 1 + alpha) / (1 - 2 alpha)
        assert s.min() >= -edge and s.max() <= 1 + edge
    zero = flow.sample(2, temperature=0.0)
    assert torch.allclose(zero, flow.base_to_data(torch.zeros_like(zero)))
    assert flow().rsample((3, 2)).shape == (3, 2, *x.shape[1:])


def test_logit_transform_log_det_closed_form():
    alpha = 0.05
    y = torch.rand(4, 6, dtype=torch.float64)
    z, log_det = LogitTransform(alpha)(y)
    u = alpha + (1 - 2 * alpha) * y
    assert torch.allclose(z, torch.logit(u))
    # dz/dy = (1 - 2 alpha) / (u (1 - u)), elementwise
    assert torch.allclose(log_det, torch.log((1 - 2 * alpha) / (u * (1 - u))).sum(-1))
    assert torch.allclose(LogitTransform(alpha).inverse(z), y)


def test_bits_per_dim_known_cases():
    # A uniform density on [0, 1]^784 (log p = 0) is exactly 8 bits per 8-bit pixel.
    assert torch.allclose(bits_per_dim(torch.zeros(3, dtype=torch.float64)), torch.full((3,), 8.0, dtype=torch.float64))
    # Every extra nat of log-likelihood removes 1 / (784 ln 2) bits/dim.
    assert bits_per_dim(torch.tensor(784.0 * math.log(2.0), dtype=torch.float64)).item() == pytest.approx(7.0)
    # An identity flow (no layers) on uniform data: log p(y) = log N(y; 0, I), so
    # bits/dim = (0.5 sum y^2 + 392 ln 2 pi + 784 ln 256) / (784 ln 2).
    identity = ImageFlow([], (1, 28, 28))
    y = torch.rand(10, 1, 28, 28, dtype=torch.float64)
    expected = (0.5 * y.flatten(1).pow(2).sum(-1) + 392 * math.log(2 * math.pi) + 784 * math.log(256)) / (784 * math.log(2))
    assert torch.allclose(bits_per_dim(identity.log_prob(y)), expected, atol=1e-12)


def test_dataset_bits_per_dim_uses_fixed_dequantization():
    identity = ImageFlow([LogitTransform(0.05)], (1, 28, 28))
    x = torch.randint(0, 256, (6, 1, 28, 28)).float() / 255
    a, b = dataset_bits_per_dim(identity, x, seed=3), dataset_bits_per_dim(identity, x, seed=3, batch_size=4)
    assert a.shape == (6,) and a.dtype == torch.float32 and torch.equal(a, b)
    # independently: y = (255 x + u) / 256 with u the seed's uniform stream; the logit flow's density in closed
    # form, log p(y) = sum log N(logit v) + log((1 − 2α) / (v (1 − v))), v = α + (1 − 2α) y; bits = −log p / (D ln 2) + 8
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)).double()
    v = 0.05 + 0.9 * (x.double() * 255 + u) / 256
    z = torch.log(v / (1 - v))
    log_p = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) + torch.log(0.9 / (v * (1 - v)))).flatten(1).sum(1)
    torch.testing.assert_close(a.double(), -log_p / (784 * math.log(2)) + 8, rtol=0, atol=1e-5)
    mean, se = mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5) and se == pytest.approx(math.sqrt(5 / 3) / 2)


def test_one_bits_per_dim_of_y_for_every_model():
    """`gen_lib.flows.bits_per_dim` is `gen_lib.data.bits_per_dim`, and `data.dequantized_bits_per_dim` reads the
    dimension from the images: a uniform density on [0, 1]^D (log p(y) = 0) is 8 bits/dim at any image shape."""
    assert flows.bits_per_dim is data.bits_per_dim
    for shape in [(1, 4, 4), (3, 5, 6)]:
        x = torch.randint(0, 256, (5, *shape)).float() / 255
        seen = []
        bpd = data.dequantized_bits_per_dim(x, lambda y: seen.append(y) or torch.zeros(len(y), dtype=torch.float64),
                                            seed=2, batch_size=2)
        assert torch.equal(bpd, torch.full((5,), 8.0, dtype=torch.float64))
        gen = torch.Generator().manual_seed(2)  # the y it scored: the seed's stream, batch by batch
        assert torch.equal(torch.cat(seen), torch.cat([data.dequantize(x[i:i + 2], generator=gen) for i in (0, 2, 4)]))


def test_checkerboard_masks_alternate_and_cover_every_pixel():
    flow = build_image_flow()
    couplings = [layer for layer in flow.layers if isinstance(layer, AffineCoupling)]
    assert len(couplings) == 20 and isinstance(flow.layers[0], LogitTransform)
    masks = torch.stack([c.mask for c in couplings])  # (20, 784)
    board = masks[0].reshape(28, 28)
    assert (board[:, 1:] != board[:, :-1]).all() and (board[1:, :] != board[:-1, :]).all()  # a checkerboard
    assert board.sum() == 392
    assert torch.equal(masks[1:] + masks[:-1], torch.ones(19, 784))  # flipped layer to layer
    assert ((1 - masks).sum(0) == 10).all()  # every pixel is transformed, by half of the layers
    assert torch.equal(checkerboard_mask(28, 28, 1), 1 - checkerboard_mask(28, 28, 0))
    for c in couplings:  # scale and translation nets: one hidden layer of 256 ReLU units each
        for net in (c.s_net, c.t_net):
            assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear"] and net[0].out_features == 256


@pytest.mark.parametrize("bad, match", [
    (torch.full((2, 1, 28, 28), 1.5), r"\[0, 1\]"),
    (torch.full((2, 1, 28, 28), -0.1), r"\[0, 1\]"),
    (torch.rand(2, 784), "shape"),
    (torch.rand(2, 3, 28, 28), "shape"),
    (torch.full((2, 1, 28, 28), float("nan")), "non-finite"),
])
def test_image_flow_rejects_bad_input(bad, match):
    flow = build_image_flow(n_layers=2, hidden=4)
    with pytest.raises(ValueError, match=match):
        flow.log_prob(bad)


def test_prior_flow_rejects_bad_input():
    flow = _prior_2d()
    with pytest.raises(ValueError, match="shape"):
        flow.log_prob(torch.randn(3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        flow.log_prob(torch.tensor([[0.0, float("inf")]]))
    flow.log_prob(torch.tensor([[5.0, -7.0]]))  # any real value is fine in 2-D
    with pytest.raises(ValueError, match="mask"):
        AffineCoupling(torch.ones(4), 8)


def test_bf16_autocast_keeps_log_prob_in_fp32():
    """Under autocast only the coupling networks run in bf16, and the sums stay in fp32. A forward error
    bound: if each summand of log p (each coupling's log-scale s, each base term z²/2) is off by at most
    bf16's machine epsilon eps = 2^-8 relative (twice its unit round-off), log p is off by at most eps
    times the sum of their magnitudes. (Their errors have random signs and partly cancel: the bound is loose.)"""
    flow = _randomize(build_image_flow(n_layers=4, hidden=32), 0.05)
    y = torch.rand(8, 1, 28, 28)
    with training.autocast(torch.device("cpu"), True):
        lp16 = flow.log_prob(y)
    with torch.no_grad():
        lp32 = flow.log_prob(y)
        h, size = y.flatten(1), torch.zeros(len(y))  # size: sum of |s| over the couplings, plus sum z²/2
        for layer in flow.layers:
            if isinstance(layer, AffineCoupling):
                size += layer._st(h[:, layer.pass_idx])[0].abs().sum(-1)
            h, _ = layer(h)
        size += h.square().sum(-1) / 2
    assert lp16.dtype == torch.float32
    eps = torch.finfo(torch.bfloat16).eps
    assert ((lp16 - lp32).abs() <= eps * size).all(), ((lp16 - lp32).abs(), eps * size)


def _cfg(**kw):
    cfg = dict(dataset="mnist", n_layers=4, hidden=32, logit_alpha=0.05, epochs=1, batch_size=64, lr=1e-3,
               seed=0, bf16=False, grad_clip=0.0, train_subset=0, eval_subset=0, actnorm=True, schedule="constant")
    cfg.update(kw)
    return cfg


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_build):
    x = torch.randint(0, 256, (128, 1, 28, 28)).float() / 255
    ckpt = recipes.train_flow(_cfg(), x, progress=False).folder / "model.pt"
    good = checkpoints.load_checkpoint(ckpt)
    flow = build_image_flow(4, 32)
    with pytest.raises(training.NonFiniteLossError, match="last good checkpoint"):
        training.fit(flow, x, epochs=2, batch_size=64, lr=1e-3, seed=0, config=recipes.run_key("flow", _cfg()), checkpoint=ckpt,
                     loss_fn=lambda m, b: m.loss(b) * float("nan"),
                     transform=lambda b, g: data.dequantize(b, generator=g), progress=False)
    kept = checkpoints.load_checkpoint(ckpt)
    assert kept["epoch"] == 1 == good["epoch"]
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_training_lowers_test_bits_per_dim(tmp_build, seed, bf16):
    train_x, _ = data.load_mnist("train")
    test_x, _ = data.load_mnist("test")
    before = dataset_bits_per_dim(build_image_flow(4, 64), test_x[:256])
    run = recipes.train_flow(_cfg(hidden=64, epochs=2, seed=seed, bf16=bf16), train_x[:2048], eval_x=test_x[:256],
                             progress=False)
    flow, result = run.model, run.result
    after = dataset_bits_per_dim(flow, test_x[:256])
    # the history's test bits/dim is this same float32 computation (a mean of 256: <= 256 u relative)
    u = torch.finfo(torch.float32).eps / 2
    assert after.mean().item() == pytest.approx(result.history[-1]["test_bpd"], rel=len(after) * u)
    drop = before - after  # per test image, same dequantization: a paired comparison
    assert drop.mean() > Z * drop.std() / len(drop) ** 0.5, (drop.mean(), drop.std())
    assert result.history[-1]["train_bpd"] < result.history[0]["train_bpd"]


def test_coupling_equals_the_masked_full_width_formulation():
    # RealNVP's form: D -> hidden -> D nets on m * x, outputs multiplied by (1 - m). Our gathered
    # nets must compute exactly that, with the full-width weights embedded from ours.
    torch.manual_seed(0)
    mask = checkerboard_mask(4, 4, 1).double()
    layer = _randomize(AffineCoupling(mask, 8).double())
    x = torch.randn(5, 16, dtype=torch.float64)

    def full(net):
        w1 = torch.zeros(8, 16, dtype=torch.float64)
        w1[:, layer.pass_idx] = net[0].weight
        w2 = torch.zeros(16, 8, dtype=torch.float64)
        w2[layer.change_idx] = net[2].weight
        b2 = torch.zeros(16, dtype=torch.float64)
        b2[layer.change_idx] = net[2].bias
        return lambda v: torch.relu(v @ w1.T + net[0].bias) @ w2.T + b2

    s = torch.tanh(full(layer.s_net)(mask * x)) * (1 - mask)
    t = full(layer.t_net)(mask * x) * (1 - mask)
    z_ref = mask * x + (1 - mask) * (x * torch.exp(s) + t)
    z, log_det = layer(x)
    assert torch.allclose(z, z_ref, atol=1e-12) and torch.allclose(log_det, s.sum(-1), atol=1e-12)
