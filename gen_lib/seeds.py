"""Several seeds of one model trained as one stacked model: a copy whose parameters carry a leading seed axis
(S, ...), run by the model's own code, so that the fixed cost of each of a VAE step's ~100 small operations is
paid once for S seeds (1.1-1.4x per seed over plain `fit`: `benchmarks/README.md`).

`Linear` computes with weights (out, in) as `nn.Linear`, or with stacked weights (S, out, in) on inputs
(..., S, in) as one batched GEMM; the models index from the right (`x[..., idx]`, `sum(-1)`), so the seed axis
is the innermost batch axis (a prior with (S, K, D) means has batch shape (S,) and broadcasts against latents
(B, S, D)). `stack(models)` is an ordinary module of `nn.Parameter`s (S, ...), so torch's fused Adam (elementwise:
S independent Adams) and bf16 autocast apply as to any model; `unstack` writes the seeds back; `agrees` checks
that a model class runs stacked; `fit_seeds` is `gen_lib.training.fit`'s loop for the stacked model.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from .checkpoints import load_checkpoint, save
from .training import (CHECK_EVERY, NonFiniteLossError, TrainResult, adam, autocast, bars_wanted, checkpoint_identity,
                       default_device, epoch_line, resume)


class Linear(nn.Linear):
    """`nn.Linear` that also runs S seeds' stacked weights (S, out, in) and biases (S, out) on x (..., S, in),
    giving (..., S, out). Its state dict is `nn.Linear`'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b for weight (out, in), or per seed for stacked weight (S, out, in) and x (..., S, in)."""
    if weight.dim() == 2:
        return nn.functional.linear(x, weight, bias)
    s = weight.shape[0]
    if x.dim() < 2 or x.shape[-2] != s:
        raise ValueError(f"stacked weights of {s} seeds need inputs (..., {s}, {weight.shape[-1]}); got {tuple(x.shape)}")
    lead = x.shape[:-2]
    xs = x.movedim(-2, 0).reshape(s, -1, x.shape[-1])  # (S, N, in)
    # computed as (W x^T)^T, so that the weight's gradient g^T x arrives contiguous, as the weight is (no copy
    # before Adam; x W^T was 10 % slower per stacked step, measured); the output is a transposed view
    out_t = torch.bmm(weight, xs.mT) if bias is None else torch.baddbmm(bias.unsqueeze(-1), weight, xs.mT)  # (S, out, N)
    return out_t.mT.reshape(s, *lead, weight.shape[1]).movedim(0, -2)


def stack(models: list[nn.Module]) -> nn.Module:
    """A copy of `models[0]` whose every parameter is an `nn.Parameter` (S, ...) holding the S models' values
    (seed s in row s), under the same name. A buffer equal in every model (a fixed mask) stays one tensor;
    others are stacked."""
    named = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in models]
    if not models or any({k: v.shape for k, v in n.items()} != {k: v.shape for k, v in named[0].items()}
                         for n in named[1:]):
        raise ValueError("stack needs one or more models with the same parameters' names and shapes")
    stacked = copy.deepcopy(models[0])
    with torch.no_grad():
        for name, _ in models[0].named_parameters():
            owner, _, attr = name.rpartition(".")
            setattr(stacked.get_submodule(owner), attr, nn.Parameter(torch.stack([n[name].detach() for n in named])))
        for name, first in models[0].named_buffers():
            if not all(torch.equal(first, n[name]) for n in named[1:]):
                owner, _, attr = name.rpartition(".")
                setattr(stacked.get_submodule(owner), attr, torch.stack([n[name] for n in named]))
    return stacked


@torch.no_grad()
def unstack(stacked: nn.Module, models: list[nn.Module]) -> None:
    """Copy seed s's slice of every stacked parameter (and stacked buffer) of `stacked` into `models[s]`."""
    tensors = dict(stacked.named_parameters()) | dict(stacked.named_buffers())
    for s, model in enumerate(models):
        for name, own in (dict(model.named_parameters()) | dict(model.named_buffers())).items():
            if tensors[name].dim() == own.dim() + 1:  # a shared buffer is the model's own already
                own.copy_(tensors[name][s])


def agrees(models: list[nn.Module], fn: Callable[..., torch.Tensor], *args: torch.Tensor, tol: float = 1e-4) -> bool:
    """Whether `fn(model, *args)` (a per-example value, (B,)) computed stacked over the seeds equals each seed's
    own value. Every tensor of `args` holds seed s's inputs in its row s: (S, B, ...). Run without gradients;
    a model class that does not run stacked (it raises, or mixes the seeds) gives False."""
    with torch.no_grad():
        alone = torch.stack([fn(m, *(a[s] for a in args)) for s, m in enumerate(models)], 1)  # (B, S)
        try:
            together = fn(stack(models), *(a.transpose(0, 1) for a in args))
        except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError):
            return False
    return (together.shape == alone.shape
            and bool(torch.allclose(together, alone, rtol=tol, atol=tol * float(alone.abs().max()))))


def fit_seeds(models: list[nn.Module], data: torch.Tensor, *, seeds: list[int], epochs: int, batch_size: int,
              lr: float, configs: list[dict[str, Any]], loss_fn: Callable[..., torch.Tensor],
              noise_shape: tuple[int, ...], checkpoints: list[str | Path | None] | None = None,
              eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, device: torch.device | str | None = None,
              bf16: bool = False, progress: bool = True, desc: str = "train",
              log: Callable[[str], None] = print) -> list[TrainResult]:
    """Train `models` (one per seed of `seeds`, one architecture) together as `stack(models)`: one batched step
    and one fused Adam for all of them, which is each seed's own Adam. The VAE recipe's loop: constant learning
    rate, no EMA, no clipping.

    `loss_fn(model, batch, noise)` is the loss per example, (B,) for one model, (B, S) run stacked on batch
    (B, S, ...) and noise (B, S, *noise_shape), the standard normal draw of each example's reparameterisation.
    Each seed keeps its identity: data order and noise from its own generator seeded by (seed, epoch) as `fit`
    seeds it, its own batch-mean loss, history and checkpoint (`fit`'s format with `configs[s]`, so `fit` can
    resume it). Seeds whose checkpoints stand at different epochs train in groups of equal epoch. A non-finite
    loss stops training naming the seed; `TrainResult.seconds` is the wall time shared among the group.
    """
    n_models = len(models)
    if n_models == 0 or len(configs) != n_models or len(seeds) != n_models or len(set(seeds)) != n_models:
        raise ValueError(f"fit_seeds needs one distinct seed and one config per model: {n_models} models, "
                         f"seeds={list(seeds)}, {len(configs)} configs")
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}, lr={lr}: need epochs >= 0, batch_size >= 1, lr > 0")
    paths = [Path(c) if c is not None else None for c in (checkpoints or [None] * n_models)]
    device = torch.device(device) if device is not None else default_device()
    ids = [checkpoint_identity(c, seed=s, epochs_total=epochs, batch_size=batch_size, lr=lr)[1]
           for c, s in zip(configs, seeds)]
    results = [TrainResult() for _ in models]
    start = [resume(p, i, m.to(device), epochs, r, f"{desc} seed {s}", log)[1]
             for p, i, m, r, s in zip(paths, ids, models, results, seeds)]
    x, n = data.to(device), data.shape[0]
    steps = math.ceil(n / batch_size)
    for first in sorted(set(start) - {epochs}):
        group = [k for k in range(n_models) if start[k] == first]
        members, group_seeds = [models[k] for k in group], [seeds[k] for k in group]
        model = stack(members)
        optimizer = adam(model, lr)
        if first > 0:  # the seeds' own Adam states, stacked as their parameters are
            own = [load_checkpoint(paths[k])["optimizer"] for k in group]
            optimizer.load_state_dict({"param_groups": own[0]["param_groups"], "state": {
                i: {key: v if key == "step" else torch.stack([o["state"][i][key] for o in own]) for key, v in st.items()}
                for i, st in own[0]["state"].items()}})
        label = f"{desc} seed{'s' if len(group) > 1 else ''} {', '.join(map(str, group_seeds))}"
        rows = torch.arange(len(group), device=device)[:, None]
        t0 = time.perf_counter()
        for epoch in range(first, epochs):
            t_epoch = time.perf_counter()
            gens = [torch.Generator(device=device).manual_seed(s * 100_003 + epoch) for s in group_seeds]
            order = torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])  # (S, n)
            noise = torch.stack([torch.randn((n, *noise_shape), generator=g, device=device) for g in gens])
            total = torch.zeros(len(group), dtype=torch.float64, device=device)
            first_bad = torch.full((len(group),), -1, dtype=torch.long, device=device)
            model.train()
            for step in tqdm(range(steps), desc=f"{label} epoch {epoch + 1}/{epochs}", leave=False, mininterval=2.0,
                             disable=not (progress and bars_wanted())):
                idx = order[:, step * batch_size:(step + 1) * batch_size]  # (S, B)
                batch = x.index_select(0, idx.flatten()).view(*idx.shape, *x.shape[1:])  # seed s's rows in row s
                with autocast(device, bf16):
                    per_example = loss_fn(model, batch.transpose(0, 1), noise[rows, idx].transpose(0, 1))  # (B, S)
                losses = per_example.float().mean(0)  # (S,): each seed's own batch mean
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(losses), step, first_bad)
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()  # seed s's gradient is that of its own loss
                optimizer.step()
                total += losses.detach().double() * idx.shape[1]
                if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
                    bad = first_bad.tolist()  # the only host sync of the loop
                    for k, b in enumerate(bad):
                        if b >= 0:
                            raise NonFiniteLossError(
                                f"{desc} seed {group_seeds[k]}: loss became nan or inf at epoch {epoch + 1}, step "
                                f"{b + 1}; training stopped (the last good checkpoints are kept). Try a lower lr "
                                f"(now {lr}).")
            unstack(model, members)
            state, lines = optimizer.state_dict(), []
            for k, (member, result) in enumerate(zip(members, (results[j] for j in group))):
                record = {"epoch": epoch + 1, "train_loss": total[k].item() / n,
                          "seconds": (time.perf_counter() - t0) / len(group)}
                if eval_fn is not None:
                    with torch.no_grad():
                        record.update(eval_fn(member.eval()))
                    member.train()
                result.history.append(record)
                result.seconds = record["seconds"]
                lines.append(", ".join(f"{v:.4g}" for key, v in record.items() if key not in ("epoch", "seconds")))
                if paths[group[k]] is not None:  # seed k's Adam state as torch's Adam over its own model keeps it
                    own = {i: {key: (v if key == "step" else v[k]).cpu().clone() for key, v in st.items()}
                           for i, st in state["state"].items()}  # clones: a view would save every seed's moments
                    save(paths[group[k]], ids[group[k]], epoch + 1, member,
                         {"state": own, "param_groups": state["param_groups"]}, None, result.history)
            if progress:
                names = [m for m in record if m not in ("epoch", "seconds")]
                log(epoch_line(label, epoch, epochs, f" ({', '.join(names)} per seed): " + "; ".join(lines),
                               time.perf_counter() - t_epoch, t0, first))
        for k in group:
            results[k].status = "trained" if first == 0 else "resumed"
    for model in models:
        model.eval()
    return results
