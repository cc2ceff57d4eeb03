"""Several seeds of one model trained as one stacked model: a copy whose parameters carry a leading seed axis
(S, ...), run by the model's own code, so that the fixed cost of each of a VAE step's ~100 small operations is
paid once for S seeds.

`Linear` computes with weights (out, in) as `nn.Linear`, or with stacked weights (S, out, in) on inputs
(..., S, in) as one batched GEMM; the models index from the right (`x[..., idx]`, `sum(-1)`), so the seed axis
is the innermost batch axis (a prior with (S, K, D) means has batch shape (S,) and broadcasts against latents
(B, S, D)). `stack(models)` is an ordinary module of `nn.Parameter`s (S, ...), so torch's fused Adam (elementwise:
S independent Adams) and bf16 autocast apply as to any model; `unstack` writes the seeds back, `stack_adam_states`
and `seed_adam_state` do the same for the optimizer's state; `agrees` checks that a model class runs stacked.
`gen_lib.training.fit_seeds` trains them.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn


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
    # before Adam: benchmarks/README.md); the output is a transposed view
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


def stack_adam_states(states: list[dict]) -> dict:
    """The state dict of one Adam over `stack(models)` from each model's own Adam state dict (seed s in row s)."""
    return {"param_groups": states[0]["param_groups"], "state": {
        i: {key: v if key == "step" else torch.stack([own["state"][i][key] for own in states]) for key, v in st.items()}
        for i, st in states[0]["state"].items()}}


def seed_adam_state(state: dict, s: int) -> dict:
    """Seed s's Adam state dict, as torch's Adam over that seed's own model keeps it, from the stacked one (on the
    CPU, copied: a view would keep, and save, every seed's moments)."""
    own = {i: {key: (v if key == "step" else v[s]).cpu().clone() for key, v in st.items()}
           for i, st in state["state"].items()}
    return {"state": own, "param_groups": state["param_groups"]}


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
