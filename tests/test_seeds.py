"""Seeds trained together as one stacked model (`gen_lib.seeds`, `gen_lib.training.fit_seeds`): the stacked
computation is each seed's own, in value and gradient, for every registered prior; stacked training is each
seed's own training (same init, data order and noise), in float64 up to round-off; a seed's training does not
depend on the seeds trained beside it; checkpoints resume exactly and are `fit`'s format."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from gen_lib import checkpoints, priors, seeds, training, vae

U = torch.finfo(torch.float64).eps / 2  # float64 unit round-off, 2^-53


def _models(name: str, n: int, dtype=torch.float32) -> list[vae.VAE]:
    out = []
    for s in range(n):
        torch.manual_seed(s)
        m = vae.build_vae(name, hidden=32).to(dtype)
        with torch.no_grad():  # move the zero-initialised layers (a flow prior's last layers) off zero
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out.append(m)
    return out


def _elbo(m, x, noise):
    return m.elbo(x, check=False, noise=noise)


def _data(n_seeds: int, b: int = 6, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return ((torch.rand(n_seeds, b, 784, generator=g) > 0.5).to(dtype),
            torch.randn(n_seeds, b, 2, generator=g, dtype=torch.float64).to(dtype))


def test_linear_runs_stacked_weights_per_seed():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 5, 4, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    x = torch.randn(7, 2, 3, 4, generator=g, dtype=torch.float64)  # (K, B, S, in): any leading dimensions
    out = seeds.linear(x, w, b)
    assert out.shape == (7, 2, 3, 5)
    for s in range(3):  # sums of 4 products and a bias: within 5 roundings of their absolute sum
        want = nn.functional.linear(x[..., s, :], w[s], b[s])
        bound = 5 * U * (x[..., s, :].abs() @ w[s].abs().T + b[s].abs())
        assert ((out[..., s, :] - want).abs() <= bound).all()
    with pytest.raises(ValueError, match="stacked weights of 3 seeds"):
        seeds.linear(torch.randn(2, 4, 4), w, b)


def test_stack_holds_the_seeds_as_parameters_and_unstack_writes_them_back():
    models = _models("flow", 3)
    stacked = seeds.stack(models)
    names = [n for n, _ in models[0].named_parameters()]
    assert [n for n, _ in stacked.named_parameters()] == names
    for name, p in stacked.named_parameters():
        assert isinstance(p, nn.Parameter) and p.is_leaf and p.shape[0] == 3
        for s, m in enumerate(models):
            assert torch.equal(p[s], m.get_parameter(name))
    assert stacked.prior.flow.layers[0].mask.dim() == 1  # a buffer equal in every model stays one tensor
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(torch.arange(3.0).view(-1, *[1] * (p.dim() - 1)))  # seed s moves by s
    seeds.unstack(stacked, models)
    for s, m in enumerate(models):
        assert torch.equal(m.get_parameter(names[0]), stacked.get_parameter(names[0])[s])


@pytest.mark.parametrize("name", priors.names())
def test_stacked_elbo_and_gradients_are_each_seeds_own(name):
    models = _models(name, 3, torch.float64)
    x, noise = _data(3, dtype=torch.float64)
    assert seeds.agrees(models, _elbo, x, noise)
    stacked = seeds.stack(models)
    together = _elbo(stacked, x.transpose(0, 1), noise.transpose(0, 1))  # (B, S)
    together.mean(0).sum().backward()
    for s, m in enumerate(models):
        alone = _elbo(m, x[s], noise[s])
        alone.mean().backward()
        # the same float64 operations but for the order of GEMM sums (batched or not): round-off of sums of at
        # most 784 terms, relative to the largest term, amplified by a few layers: far below 1e-9
        torch.testing.assert_close(together[:, s], alone, rtol=0, atol=1e-9 * (1 + alone.abs().max().item()))
        for pname, p in m.named_parameters():
            g = stacked.get_parameter(pname).grad[s]
            torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-9 * (1 + p.grad.abs().max().item()),
                                       msg=f"{name}: gradient of {pname}, seed {s}")


class _MixingPrior(nn.Module):
    """A prior written for one model only: it reads the first row of its parameter, so stacked it would give
    every seed seed 0's prior."""

    def __init__(self, latent_dim):
        super().__init__()
        self.loc = nn.Parameter(torch.randn(latent_dim))

    def forward(self):
        d = self.loc.shape[-1]
        return Independent(Normal(self.loc.reshape(-1)[:d], torch.ones(d), validate_args=False), 1,
                           validate_args=False)


def test_agrees_rejects_a_model_that_mixes_the_seeds():
    models = []
    for s in range(2):
        torch.manual_seed(s)
        models.append(vae.VAE(vae.GaussianEncoder(2, 16), vae.BernoulliDecoder(2, 16), _MixingPrior(2)))
    x, noise = _data(2)
    assert not seeds.agrees(models, lambda m, xx, nn_: m.elbo(xx, check=False, noise=nn_, kl="mc"), x, noise)


def _fit(models, x, epochs, ids, folder, lr=1e-2):
    return training.fit_seeds(models, x, seeds=ids, epochs=epochs, batch_size=32, lr=lr,
                              configs=[{"test": "seeds"}] * len(models), loss_fn=lambda m, b, e: -_elbo(m, b, e),
                              noise_shape=(2,), checkpoints=[folder / f"seed{i}.pt" for i in ids], device="cpu",
                              progress=False)


def _x(n=96, dtype=torch.float32):
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(1)) > 0.5).to(dtype)


def test_fit_seeds_resumes_exactly_and_writes_fits_checkpoints(tmp_path):
    x = _x()
    straight = _models("mog", 2)
    _fit(straight, x, 2, [0, 1], tmp_path / "a")
    halves = _models("mog", 2)
    _fit(halves, x, 1, [0, 1], tmp_path / "b")
    again = _models("mog", 2)  # fresh objects: everything comes from the checkpoints
    results = _fit(again, x, 2, [0, 1], tmp_path / "b")
    assert [r.status for r in results] == ["resumed", "resumed"]
    for a, b in zip(straight, again):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), name  # the same operations on the same numbers
    ckpt = checkpoints.load_checkpoint(tmp_path / "b" / "seed1.pt", {"test": "seeds", "seed": 1, "batch_size": 32, "lr": 1e-2})
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    plain = vae.build_vae("mog", hidden=32)
    plain.load_state_dict(ckpt["model"])  # the model's own state dict
    opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    opt.load_state_dict(ckpt["optimizer"])  # and torch's Adam state for that model, that seed's alone
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in plain.parameters())
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size()
               for st in ckpt["optimizer"]["state"].values() for t in st.values())


def test_seeds_at_different_epochs_resume_in_groups(tmp_path):
    x = _x()
    straight = _models("gaussian", 2)
    _fit(straight, x, 2, [0, 1], tmp_path / "a")
    late = _models("gaussian", 2)
    _fit([late[0]], x, 1, [0], tmp_path / "b")  # seed 0 stands at epoch 1, seed 1 at 0
    again = _models("gaussian", 2)
    results = _fit(again, x, 2, [0, 1], tmp_path / "b")
    assert [r.status for r in results] == ["resumed", "trained"]
    for a, b in zip(straight, again):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            # seed 1 alone in its group computes with unbatched-size GEMMs: float32 round-off, amplified by Adam
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_a_seed_trains_the_same_beside_any_other_seeds(tmp_path):
    x = _x()
    first = _models("flow", 3)
    _fit([first[0], first[1]], x, 1, [0, 1], tmp_path / "a")
    second = _models("flow", 3)
    _fit([second[0], second[2]], x, 1, [0, 2], tmp_path / "b")
    for (name, p), q in zip(first[0].named_parameters(), second[0].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    moved = sum((p - q).abs().sum().item() for p, q in zip(first[0].parameters(), _models("flow", 1)[0].parameters()))
    assert moved > 0  # it trained


def test_fit_seeds_names_the_seed_whose_loss_is_not_finite(tmp_path):
    models = _models("gaussian", 2)
    with torch.no_grad():
        models[1].decoder.net[0].bias.fill_(math.nan)
    with pytest.raises(training.NonFiniteLossError, match="seed 7"):
        _fit(models, _x(), 1, [3, 7], tmp_path)
    assert not (tmp_path / "seed7.pt").exists()


def test_under_autocast_each_step_computes_with_the_updated_weights():
    """bf16 autocast reads the stacked weights as the optimizer leaves them after every step."""
    models = _models("vamp", 2)
    initial = copy.deepcopy(models)
    x, noise = _data(2)
    stacked = seeds.stack(models)
    opt = torch.optim.Adam(stacked.parameters(), lr=0.05, fused=True)
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = -_elbo(stacked, x.transpose(0, 1), noise.transpose(0, 1)).mean(0).sum()
        loss.backward()
        opt.step()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        together = _elbo(stacked, x.transpose(0, 1), noise.transpose(0, 1))
    seeds.unstack(stacked, models)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        alone = torch.stack([_elbo(m, x[s], noise[s]) for s, m in enumerate(models)], 1)
        stale = torch.stack([_elbo(m, x[s], noise[s]) for s, m in enumerate(initial)], 1)  # the weights before the steps
    # the same bf16 computation up to the order of its sums: at least ten times closer to the per-seed value than
    # the value the stale weights give (the failure this test is for)
    error, stale_error = (together - alone).abs().max().item(), (stale - alone).abs().max().item()
    assert error < 0.1 * stale_error, (error, stale_error)


def test_fit_seeds_in_bf16_learns_as_fit_does(tmp_path):
    x = _x(512)
    stacked = _models("gaussian", 2)
    training.fit_seeds(stacked, x, seeds=[0, 1], epochs=2, batch_size=64, lr=3e-3, configs=[{}] * 2,
                       loss_fn=lambda m, b, e: -_elbo(m, b, e), noise_shape=(2,), device="cpu", bf16=True,
                       progress=False)
    alone = _models("gaussian", 1)[0]
    training.fit(alone, x, epochs=2, batch_size=64, lr=3e-3, seed=0, config={}, device="cpu", bf16=True, progress=False,
                 loss_fn=lambda m, b: m.loss(b, check=False))
    with torch.no_grad():
        ours = [-m.elbo(x).mean().item() for m in stacked]
        theirs = -alone.elbo(x).mean().item()
        start = -_models("gaussian", 1)[0].elbo(x).mean().item()
    # both learn the same amount (to within a few nats of 150 gained); training with stale weights learns far less
    assert all(abs(o - theirs) < 0.1 * (start - theirs) for o in ours), (ours, theirs, start)


@pytest.mark.parametrize("name", priors.names())
def test_fit_seeds_is_each_seeds_own_adam_loop_in_float64(name):
    """fit_seeds trains every seed as a plain loop of torch's Adam over that seed's own data order and noise
    would, in float64: the same parameters up to round-off."""
    n, b, epochs, lr = 192, 64, 2, 1e-3
    x = _x(n, torch.float64)
    ids = [3, 5]
    stacked = [_models(name, 6, torch.float64)[s] for s in ids]
    training.fit_seeds(stacked, x, seeds=ids, epochs=epochs, batch_size=b, lr=lr, configs=[{}] * 2,
                       loss_fn=lambda m, bb, e: -_elbo(m, bb, e), noise_shape=(2,), device="cpu", progress=False)
    steps = epochs * n // b
    for k, s in enumerate(ids):
        m = _models(name, 6, torch.float64)[s]
        opt = torch.optim.Adam(m.parameters(), lr=lr, fused=True)
        for epoch in range(epochs):
            gen = torch.Generator().manual_seed(s * 100_003 + epoch)
            order, noise = torch.randperm(n, generator=gen), torch.randn(n, 2, generator=gen)  # fit_seeds' float32 draws
            for step in range(n // b):
                idx = order[step * b:(step + 1) * b]
                loss = -_elbo(m, x[idx], noise[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        # Both runs compute the same float64 functions; only the GEMMs' sums run in another order (batched or not).
        # Per step, a gradient then differs by the round-off of sums of at most 784 products (relative 784 u,
        # Higham's gamma_n), carried through a few layers and Adam's normalisation (we allow a factor 10^4 for
        # both); Adam turns a relative difference of the gradient into lr times it, so over `steps` steps the
        # parameters differ by at most steps * lr * 10^4 * 784 u (5e-12 here). A real difference (another data
        # order, shared noise, stale weights) moves a parameter by about lr (1e-3) per step.
        bound = steps * lr * 1e4 * 784 * U
        for (pname, p), q in zip(m.named_parameters(), stacked[k].parameters()):
            assert (p - q).abs().max().item() <= bound, (name, s, pname, (p - q).abs().max().item(), bound)
