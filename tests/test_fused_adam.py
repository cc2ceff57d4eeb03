"""The one-pass Adam kernel (`gen_lib.fused_adam`) and the stacked seeds' optimizer built on it (`seeds.Adam`):
torch's Adam's numbers, the bf16 copies of the weights it writes, its refusal of bad tensors, and the same
training with and without the kernel."""

import math

import pytest
import torch

from gen_lib import fused_adam, seeds, vae

needs_kernel = pytest.mark.skipif(fused_adam.unavailable() is not None,
                                  reason=f"fused_adam unavailable: {fused_adam.unavailable()}")
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
    steps = 25
    for t in range(1, steps + 1):
        grads = [torch.randn(n, generator=g).mul_(10.0 ** (t % 5 - 3)).to(grad_dtype) for n in sizes]  # many scales
        for p, grad in zip(theirs, grads):
            p.grad = grad.float()
        opt.step()
        for p, (m, v), grad, low in zip(ours, moments, grads, lows):
            fused_adam.step(p, m, v, grad, low, lr=LR, betas=BETAS, eps=EPS, t=t)
    for p, q, (m, v), low in zip(ours, theirs, moments, lows):
        _close_to_torch(p, q.detach(), steps)
        _close_to_torch(m, opt.state[q]["exp_avg"], steps, lr=1.0)
        assert torch.equal(low, p.bfloat16())  # round to nearest even, as torch converts


@needs_kernel
def test_kernel_keeps_a_nan_a_nan_and_refuses_bad_tensors():
    p, m, v, low = torch.zeros(40), torch.zeros(40), torch.zeros(40), torch.zeros(40, dtype=torch.bfloat16)
    grad = torch.ones(40)
    grad[3] = math.nan
    fused_adam.step(p, m, v, grad, low, lr=LR, betas=BETAS, eps=EPS, t=1)
    assert p[3].isnan() and low[3].isnan() and not low[4].isnan()
    with pytest.raises(ValueError, match="exp_avg must be a contiguous CPU tensor of 40 elements"):
        fused_adam.step(p, torch.zeros(80)[::2], v, grad, lr=LR, betas=BETAS, eps=EPS, t=2)
    with pytest.raises(ValueError, match="grad must be .* in torch.float32 or torch.bfloat16; got torch.float64"):
        fused_adam.step(p, m, v, grad.double(), lr=LR, betas=BETAS, eps=EPS, t=2)
    with pytest.raises(ValueError, match="low must be .* of 40 elements"):
        fused_adam.step(p, m, v, grad, torch.zeros(39, dtype=torch.bfloat16), lr=LR, betas=BETAS, eps=EPS, t=2)
    with pytest.raises(ValueError, match="t=0"):
        fused_adam.step(p, m, v, grad, lr=LR, betas=BETAS, eps=EPS, t=0)


def _vaes(name: str, n: int) -> list[vae.VAE]:
    out = []
    for s in range(n):
        torch.manual_seed(s)
        out.append(vae.build_vae(name, hidden=48))
    return out


def _train(models, kernel: bool, monkeypatch, steps: int = 6) -> tuple[seeds.Stack, seeds.Adam]:
    if not kernel:
        monkeypatch.setattr(fused_adam, "unavailable", lambda: "switched off by the test")
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
@pytest.mark.parametrize("name", ["gaussian", "vamp"])  # the VampPrior runs its encoder twice: two gradients to sum
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
    for key, slot in with_kernel.slots.items():  # the copies the next forward reads are the updated weights
        assert slot.low_current and torch.equal(slot.low, slot.param.detach().bfloat16()), key
