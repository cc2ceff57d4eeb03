"""Seeds trained together as one stacked model (`gen_lib.seeds`, `training.fit_seeds`): the stacked
computation is each seed's own, in value and gradient, for every registered prior; a seed's training does
not depend on the seeds trained beside it; checkpoints resume exactly and are `fit`'s format."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from gen_lib import priors, seeds, training, vae


def _models(name: str, n: int) -> list[vae.VAE]:
    out = []
    for s in range(n):
        torch.manual_seed(s)
        m = vae.build_vae(name, hidden=32)
        with torch.no_grad():  # move the zero-initialised layers (a flow prior's last layers) off zero
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out.append(m)
    return out


def _elbo(m, x, noise):
    return m.elbo(x, check=False, noise=noise)


def _data(n_seeds: int, b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n_seeds, b, 784, generator=g) > 0.5).float(), torch.randn(n_seeds, b, 2, generator=g)


def test_linear_runs_stacked_weights_per_seed():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, generator=g)
    x = torch.randn(7, 2, 3, 4, generator=g)  # (K, B, S, in): any leading dimensions
    out = seeds.linear(x, w, b)
    assert out.shape == (7, 2, 3, 5)
    for s in range(3):
        torch.testing.assert_close(out[..., s, :], nn.functional.linear(x[..., s, :], w[s], b[s]))
    with pytest.raises(ValueError, match="stacked weights of 3 seeds"):
        seeds.linear(torch.randn(2, 4, 4), w, b)


@pytest.mark.parametrize("name", priors.names())
def test_stacked_elbo_and_gradients_are_each_seeds_own(name):
    models = _models(name, 3)
    x, noise = _data(3)
    assert seeds.agrees(models, _elbo, x, noise)
    stack = seeds.Stack(models)
    stack.run(_elbo, x.transpose(0, 1), noise.transpose(0, 1)).mean(0).sum().backward()
    for s, m in enumerate(models):
        _elbo(m, x[s], noise[s]).mean().backward()
        for pname, p in m.named_parameters():
            g = stack.params[pname].grad[s]
            g = g.mT if pname in stack.transposed else g
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5 * (1 + p.grad.abs().max().item()),
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


def _x(n=96):
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(1)) > 0.5).float()


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
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    ckpt = training.load_checkpoint(tmp_path / "b" / "seed1.pt", {"test": "seeds", "seed": 1, "batch_size": 32, "lr": 1e-2})
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    plain = vae.build_vae("mog", hidden=32)
    plain.load_state_dict(ckpt["model"])  # the model's own state dict
    opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    opt.load_state_dict(ckpt["optimizer"])  # and torch's Adam state for that model
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in plain.parameters())


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
    """The bf16 copies of the stacked weights follow every optimizer step (a fused Adam updates in place)."""
    models = _models("vamp", 2)
    x, noise = _data(2)
    stack = seeds.Stack(models)
    opt = torch.optim.Adam(list(stack.params.values()), lr=0.05, fused=True)
    for _ in range(3):
        stack.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = -stack.run(_elbo, x.transpose(0, 1), noise.transpose(0, 1)).mean(0).sum()
        loss.backward()
        opt.step()
    stack.zero_grad()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        together = stack.run(_elbo, x.transpose(0, 1), noise.transpose(0, 1))
    stack.unstack()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        alone = torch.stack([_elbo(m, x[s], noise[s]) for s, m in enumerate(models)], 1)
    # the same bf16 computation up to the order of float32 sums; stale weights (moved by 3 steps of 0.05) differ by far more
    torch.testing.assert_close(together, alone, rtol=1e-2, atol=0.5)


def test_fit_seeds_in_bf16_learns_as_fit_does(tmp_path):
    x = _x(512)
    stacked = _models("gaussian", 2)
    _fit_bf16 = training.fit_seeds(stacked, x, seeds=[0, 1], epochs=2, batch_size=64, lr=3e-3, configs=[{}] * 2,
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


@pytest.mark.parametrize("bf16", [False, True])
def test_fit_seeds_is_each_seeds_own_adam_loop(bf16):
    """fit_seeds trains every seed as a plain loop over that seed's own data order and noise would."""
    x = _x(384)
    ids = [3, 5]
    stacked = [_models("mog", 6)[s] for s in ids]
    training.fit_seeds(stacked, x, seeds=ids, epochs=2, batch_size=64, lr=1e-3, configs=[{}] * 2,
                       loss_fn=lambda m, b, e: -_elbo(m, b, e), noise_shape=(2,), device="cpu", bf16=bf16, progress=False)
    for k, s in enumerate(ids):
        m, start = _models("mog", 6)[s], _models("mog", 6)[s]
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        for epoch in range(2):
            gen = torch.Generator().manual_seed(s * 100_003 + epoch)
            order, noise = torch.randperm(384, generator=gen), torch.randn(384, 2, generator=gen)
            for step in range(6):
                idx = order[step * 64:(step + 1) * 64]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = -_elbo(m, x[idx], noise[idx]).float().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        apart = max((p - q).abs().max().item() for p, q in zip(m.parameters(), stacked[k].parameters()))
        moved = max((p - q).abs().max().item() for p, q in zip(m.parameters(), start.parameters()))
        # equal up to float round-off, which Adam can amplify in parameters whose gradient is near zero
        assert apart < 0.05 * moved, (s, apart, moved)
