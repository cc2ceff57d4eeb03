"""`fit_seeds`: several seeds of one model trained together as one stacked model (`gen_lib.seeds.stack`), with
`gen_lib.training`'s checkpoints, resume and non-finite checks, each seed's data order, noise, Adam state, history
and checkpoint its own (so that `fit` can resume any of them). Measured against `fit` per seed in
`benchmarks/README.md`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from .checkpoints import load_checkpoint, save
from .seeds import stack, unstack
from .training import (CHECK_EVERY, NonFiniteLossError, TrainResult, adam, autocast, bars_wanted, checkpoint_identity,
                       default_device, epoch_line, resume)


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
            state, lines, totals = optimizer.state_dict(), [], total.tolist()
            for k, (member, result) in enumerate(zip(members, (results[j] for j in group))):
                record = {"epoch": epoch + 1, "train_loss": totals[k] / n,
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
