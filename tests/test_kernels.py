"""The C kernels (`gen_lib.kernels`): the one-pass Adam and the stacked seeds' optimizer built on it
(`seeds.Adam`), with torch's Adam's numbers, the bf16 copies of the weights it writes, its refusal of bad tensors
and the same training with and without the kernels; the Bernoulli log-likelihood and the Gaussian mixture's
log-density with their gradients, against float64 references."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from gen_lib import kernels, seeds, vae

needs_kernel = pytest.mark.skipif(kernels.unavailable() is not None,
                                  reason=f"kernels unavailable: {kernels.unavailable()}")
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


def _close_to_torch(ours: torch.Tensor, theirs: torch.Tensor, steps: int, lr: float = LR) -> None:
    # the same float32 formula, possibly with other fused multiply-adds on another CPU: each step may differ by a
    # few roundings of the parameter and of the update (about lr), which later steps carry along
    torch.testing.assert_close(ours, theirs, rtol=steps * 2.0 ** -21, atol=steps * lr * 2.0 ** -19)


@needs_kernel
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
def test_kernel_computes_torchs_adam_and_the_bf16_copy(grad_dtype):
    g = torch.Generator().manual_seed(0)
    sizes = [1, 7, 20, 5 * 512, 3 * 784 * 64]  # tails shorter than a vector, and many vectors
    ours = [0.05 * torch.randn(n, generator=g) for n in sizes]
    moments = [(torch.zeros(n), torch.zeros(n)) for n in sizes]
    lows = [torch.empty(n, dtype=torch.bfloat16) for n in sizes]
    theirs = [p.clone().requires_grad_() for p in ours]
    opt = torch.optim.Adam(theirs, lr=LR, betas=BETAS, eps=EPS, fused=True)
    steps, counts = 25, [torch.tensor(0.0) for _ in sizes]  # the step counts, as torch's Adam keeps them
    for t in range(1, steps + 1):
        grads = [torch.randn(n, generator=g).mul_(10.0 ** (t % 5 - 3)).to(grad_dtype) for n in sizes]  # many scales
        for p, grad in zip(theirs, grads):
            p.grad = grad.float()
        opt.step()
        kernels.adam_step(ours, [m for m, _ in moments], [v for _, v in moments], grads, lows, lr=LR, betas=BETAS,
                          eps=EPS, steps=counts)
    for p, q, (m, v), low in zip(ours, theirs, moments, lows):
        _close_to_torch(p, q.detach(), steps)
        _close_to_torch(m, opt.state[q]["exp_avg"], steps, lr=1.0)
        assert torch.equal(low, p.bfloat16())  # round to nearest even, as torch converts
    assert all(c.item() == steps == opt.state[q]["step"].item() for c, q in zip(counts, theirs))


@needs_kernel
def test_kernel_keeps_a_nan_a_nan_and_refuses_bad_tensors():
    p, m, v, low = torch.zeros(40), torch.zeros(40), torch.zeros(40), torch.zeros(40, dtype=torch.bfloat16)
    grad = torch.ones(40)
    grad[3] = math.nan
    def step(p=p, m=m, v=v, grad=grad, low=low, done=0.0):
        kernels.adam_step([p], [m], [v], [grad], [low], lr=LR, betas=BETAS, eps=EPS, steps=[torch.tensor(done)])

    step()
    assert p[3].isnan() and low[3].isnan() and not low[4].isnan()
    with pytest.raises(ValueError, match="exp_avg must be a contiguous CPU tensor of 40 elements"):
        step(m=torch.zeros(80)[::2])
    with pytest.raises(ValueError, match="grad must be .* in torch.float32 or torch.bfloat16; got torch.float64"):
        step(grad=grad.double())
    with pytest.raises(ValueError, match="low must be .* of 40 elements"):
        step(low=torch.zeros(39, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"steps=\[-1.0\]: the updates done so far"):
        step(done=-1.0)
    with pytest.raises(ValueError, match="one moment, copy"):
        kernels.adam_step([p], [m], [v], [grad], [], lr=LR, betas=BETAS, eps=EPS, steps=[torch.tensor(1.0)])
    with pytest.raises(ValueError, match="gradient 0 is None"):
        step(grad=None)


def _vaes(name: str, n: int) -> list[vae.VAE]:
    out = []
    for s in range(n):
        torch.manual_seed(s)
        out.append(vae.build_vae(name, hidden=48))
    return out


def _train(models, kernel: bool, monkeypatch, steps: int = 6) -> tuple[seeds.Stack, seeds.Adam]:
    if not kernel:
        monkeypatch.setattr(kernels, "unavailable", lambda: "switched off by the test")
    stack = seeds.Stack(models)
    opt = seeds.Adam(stack, lr=0.01)
    assert (opt.why_not_kernel is None) == kernel
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = (torch.rand(16, len(models), 784, generator=g) > 0.5).float()
        noise = torch.randn(16, len(models), 2, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            per_example = stack.run(lambda m, b, e: -m.elbo(b, check=False, noise=e), x, noise)
        stack.zero_grad()
        per_example.float().mean(0).sum().backward()
        opt.step()
    monkeypatch.undo()
    return stack, opt


@needs_kernel
# the flow prior: 80 small parameters beside the networks; the MoG: the mixture kernel too (the VampPrior's
# encoder gradients are summed differently with the kernels: see the last test)
@pytest.mark.parametrize("name", ["gaussian", "flow", "mog"])
def test_stacked_adam_trains_as_torchs_adam_does(name, monkeypatch):
    with_kernel, opt = _train(_vaes(name, 3), True, monkeypatch)
    without, opt_torch = _train(_vaes(name, 3), False, monkeypatch)
    start = seeds.Stack(_vaes(name, 3))
    for key, p in with_kernel.params.items():
        q = without.params[key]
        apart = (p - q).abs().max().item()
        moved = (q - start.params[key]).abs().max().item()
        # the same bf16 gradients into the same formula: equal but for roundings (the kernel's and torch's fused
        # multiply-adds), which Adam can amplify in parameters whose gradient is near zero
        assert moved > 0 and apart < 0.01 * moved, (key, apart, moved)
        assert opt.state[p]["step"].item() == opt_torch.state[q]["step"].item() == 6
    copies = {key: slot for key, slot in with_kernel.slots.items() if slot.low is not None}
    assert copies  # the networks' weights (a flow prior's layers run in float32: no copies)
    for key, slot in copies.items():  # the copies the next forward reads are the updated weights
        assert slot.low_current and torch.equal(slot.low, slot.param.detach().bfloat16()), key


@needs_kernel
def test_binary_data_held_in_bf16_trains_the_same_models(monkeypatch):
    from gen_lib import training
    from gen_lib.recipes import _elbo_per_example

    x = (torch.rand(96, 784, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    assert training._compact(x, True).dtype == torch.bfloat16  # binary: held in bf16, exactly
    assert training._compact(x, False) is x and training._compact(x * 0.5, True).dtype == torch.float32
    # only for a model whose likelihood reads bf16 data: the Bernoulli VAE, not the continuous Bernoulli's
    assert vae.build_vae("mog").reads_bf16_data
    assert not vae.build_vae("mog", likelihood="continuous_bernoulli").reads_bf16_data
    runs = []
    for compact in (True, False):
        if not compact:
            monkeypatch.setattr(training, "_compact", lambda x, allowed: x)
        models = _vaes("mog", 2)
        training.fit_seeds(models, x, seeds=[0, 1], epochs=2, batch_size=32, lr=1e-3, configs=[{}] * 2,
                           loss_fn=_elbo_per_example, noise_shape=(2,), device="cpu", bf16=True, progress=False)
        runs.append(models)
    for ours, theirs in zip(*runs):  # the same values reach the same operations
        for (key, p), q in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(p, q), key


def _bernoulli_reference(logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum x l - softplus(l) and its terms' absolute sum, in float64 from the same bf16 logits."""
    l, x = logits.double(), x.double()
    terms = x * l - torch.nn.functional.softplus(l)
    return terms.sum(-1), terms.abs().sum(-1)


def _logits_and_data(shape, g):
    logits = (torch.randn(shape, generator=g) * 8).bfloat16()
    logits.view(-1)[:6] = torch.tensor([100.0, -100.0, 1e4, -1e4, 0.0, -0.0])  # far beyond exp's range, and zeros
    x = (torch.rand(shape, generator=g) > 0.5).float()
    x.view(-1)[-20:] = torch.rand(20, generator=g)  # grey values too: the function is defined for x in [0, 1]
    return logits, x


@needs_kernel
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])  # bf16: binary data in a stacked loop
@pytest.mark.parametrize("stacked", [False, True])
def test_bernoulli_kernel_is_the_log_likelihood_and_its_gradient(stacked, x_dtype):
    g = torch.Generator().manual_seed(0)
    if stacked:  # a stacked step's (B, S, P) views of (S, B, P) memory
        logits, x = (t.transpose(0, 1) for t in _logits_and_data((3, 16, 784), g))
    else:
        logits, x = _logits_and_data((16, 784), g)
    x = x.to(x_dtype)  # (the layout stays)
    assert kernels.bernoulli_fits(logits, x)
    logits.requires_grad_()
    value = kernels.bernoulli_log_prob(logits, x)
    ref, scale = _bernoulli_reference(logits.detach(), x)
    assert value.dtype == torch.float32 and value.shape == ref.shape
    # float32 terms (glibc's vector expf and log1pf, within 4 ulp) summed in float32: a few dozen roundings of
    # the terms' absolute sum
    assert ((value.double() - ref).abs() <= 64 * 2.0 ** -24 * scale).all()
    weights = torch.randn(value.shape, generator=g)
    (value * weights).sum().backward()
    want = (x.double() - torch.sigmoid(logits.detach().double())) * weights.double()[..., None]
    assert logits.grad.dtype == torch.bfloat16
    # x - sigmoid(l) in float32 (a few roundings of sigmoid's value, at most 1, which cancel with x) times the weight,
    # rounded once to bf16 (2^-8 relative)
    tol = 2.0 ** -8 * want.abs() + 2.0 ** -21 * weights.double().abs()[..., None]
    assert ((logits.grad.double() - want).abs() <= tol).all()


@needs_kernel
def test_bernoulli_kernel_keeps_a_nan_and_serves_training_only():
    logits, x = torch.zeros(4, 784, dtype=torch.bfloat16, requires_grad=True), torch.ones(4, 784)
    bad = logits.detach().clone()
    bad[2, 5] = math.nan
    bad.requires_grad_()
    value = kernels.bernoulli_log_prob(bad, x)
    assert value[2].isnan() and value[[0, 1, 3]].isfinite().all()
    value.sum().backward()
    assert bad.grad[2, 5].isnan() and bad.grad[0].isfinite().all()
    assert not kernels.bernoulli_fits(logits.float(), x)  # float32 logits (evaluation) stay on torch's path
    assert not kernels.bernoulli_fits(logits[:, None].expand(4, 3, 784), x[:, None].expand(4, 3, 784))
    assert not kernels.bernoulli_fits(logits, x[:2])
    with pytest.raises(ValueError, match="bf16 logits and float32 or bf16 x of one shape"):
        kernels.bernoulli_log_prob(logits, x.double())


@needs_kernel
def test_decoder_uses_the_kernel_under_autocast_for_the_same_function(monkeypatch):
    torch.manual_seed(0)
    decoder = vae.BernoulliDecoder(latent_dim=2, hidden=32)
    z, x = torch.randn(12, 2), (torch.rand(12, 784) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = decoder.log_prob(z, x)
        monkeypatch.setattr(kernels, "bernoulli_fits", lambda logits, x: False)
        theirs = decoder.log_prob(z, x)  # torch's operations (vae._BernoulliLogLik) on the same bf16 logits
    _, scale = _bernoulli_reference(decoder.net(z).detach(), x)
    assert ((ours - theirs).abs() <= 128 * 2.0 ** -24 * scale).all()


def test_a_weight_used_twice_gets_its_gradients_summed_in_one_rounding():
    """The VampPrior runs its encoder on the data and on its pseudo-inputs: with the gradient left for `Adam`
    (`_Slot.defer`) the second pass's gradient joins the first in bf16, summed in the GEMM's float32 accumulator;
    without, each is rounded to bf16 and the two are summed in float32. Both are the gradient to bf16's
    precision."""
    grads = []
    for defer in (True, False):
        stack = seeds.Stack(_vaes("vamp", 2))
        for slot in stack.slots.values():
            slot.defer = defer
        g = torch.Generator().manual_seed(0)
        x, noise = (torch.rand(16, 2, 784, generator=g) > 0.5).float(), torch.randn(16, 2, 2, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = -stack.run(lambda m, b, e: m.elbo(b, check=False, noise=e), x, noise).float().mean(0).sum()
        stack.zero_grad()
        loss.backward()
        grads.append({k: slot.gradient().double() for k, slot in stack.slots.items()})
        assert all(slot.pending == defer for slot in stack.slots.values())
    for key, ref in grads[1].items():
        # a few bf16 roundings (2^-8 relative each), norm-wise
        assert (grads[0][key] - ref).norm() <= 2.0 ** -6 * ref.norm(), key


def _mixture_reference(z, logits, loc, scale):
    components = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
    return MixtureSameFamily(Categorical(logits=logits, validate_args=False), components,
                             validate_args=False).log_prob(z)


def _mixture_case(stacked: bool, g: torch.Generator):
    s, k, d, b = 3, 16, 2, 40
    batch = (s,) if stacked else ()
    logits, loc = torch.randn(*batch, k, generator=g) * 2, torch.randn(*batch, k, d, generator=g) * 3
    scale = torch.rand(*batch, k, d, generator=g) * 2 + 0.05
    # a stacked step's latents (B, S, D) are a view of (S, B, D) memory; some far out in the tails
    z = (torch.randn(s, b, d, generator=g) * 4).transpose(0, 1) if stacked else torch.randn(b, d, generator=g) * 4
    return z, logits, loc, scale


@needs_kernel
@pytest.mark.parametrize("stacked", [False, True])
def test_mixture_kernel_is_the_log_density_and_its_gradient(stacked):
    g = torch.Generator().manual_seed(0)
    ours = [t.clone().requires_grad_() for t in _mixture_case(stacked, g)]
    exact = [t.detach().double().requires_grad_() for t in ours]
    assert kernels.mixture_fits(*ours)
    value, want = kernels.mixture_log_prob(*ours), _mixture_reference(*exact)
    assert value.dtype == torch.float32 and value.shape == want.shape == ours[0].shape[:-1]
    # float32 terms c_k - |u_k|^2 / 2 of up to K + D roundings each, then a logsumexp: within 2^-16 of the largest
    # term's size (float32's 2^-24 with room for 256 roundings)
    z, logits, loc, scale = exact
    u = (z.unsqueeze(-2) - loc) / scale
    size = 1 + (torch.log_softmax(logits, -1).abs() + scale.log().abs().sum(-1) + 0.5 * (u * u).sum(-1)).amax(-1)
    assert ((value.double() - want).abs() <= 2.0 ** -16 * size).all()
    weights = torch.randn(value.shape, generator=g)
    (value * weights).sum().backward()
    (want * weights.double()).sum().backward()
    for name, a, b in zip(("z", "logits", "loc", "scale"), ours, exact):
        assert a.grad.shape == b.grad.shape and a.grad.dtype == torch.float32, name
        assert (a.grad.double() - b.grad).abs().max() <= 2.0 ** -16 * b.grad.abs().max(), name


@needs_kernel
def test_mixture_kernel_keeps_a_nan_and_falls_back_where_it_does_not_fit(monkeypatch):
    from gen_lib import priors

    g = torch.Generator().manual_seed(1)
    z, logits, loc, scale = _mixture_case(True, g)
    z = z.clone()
    z[3, 1, 0] = math.nan
    value = kernels.mixture_log_prob(z, logits, loc, scale)
    assert value[3, 1].isnan() and value.isfinite().sum() == value.numel() - 1
    assert not kernels.mixture_fits(z.double(), logits, loc, scale)  # float64: torch's path
    assert not kernels.mixture_fits(z[:, :2], logits, loc, scale)  # a seed axis that does not match
    with pytest.raises(ValueError, match="float32 \\(or bf16\\) CPU tensors"):
        kernels.mixture_log_prob(z[:, :2], logits, loc, scale)
    mixture = priors.GaussianMixture(logits, loc, scale)  # the priors' distribution: the kernel where it fits
    fast = mixture.log_prob(z)
    # a VampPrior's components under autocast are bf16: the kernel computes in float32 from their values (torch's
    # Normal would square and log them in bf16)
    low = priors.GaussianMixture(logits, loc.bfloat16(), scale.bfloat16()).log_prob(z)
    exact = _mixture_reference(z.double(), logits.double(), loc.bfloat16().double(), scale.bfloat16().double())
    torch.testing.assert_close(low, exact.float(), equal_nan=True, rtol=2.0 ** -16, atol=2.0 ** -16)
    monkeypatch.setattr(kernels, "mixture_fits", lambda *args: False)
    torch.testing.assert_close(fast, mixture.log_prob(z), equal_nan=True, rtol=2.0 ** -16, atol=2.0 ** -16)
