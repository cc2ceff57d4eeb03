"""Several seeds of one model trained as one stacked model: S copies of a network whose parameters are
stacked along a leading seed axis, run by the same code as a single model.

Why: a VAE training step of the study is about 100 small operations around six GEMMs. One step for S
seeds at once runs the same operations on S times more data (the GEMMs become batched GEMMs of the
same FLOPs per seed), so the fixed cost of each operation is paid once for S models. On a 2-core CPU
that is what separates the loop from the GEMMs' ceiling (`make bench`); on a GPU it is what fills the
device.

How: the model classes are written so that the same `forward` runs either shape:

- `Linear` (an `nn.Linear`) computes with weights (out, in) as usual, or with stacked weights
  (S, out, in) and biases (S, out) on inputs (..., S, in) -> (..., S, out) as one batched GEMM;
- everything else indexes from the right (`x[..., idx]`, `sum(-1)`), so that the seed axis is the
  innermost batch axis, next to the event: for `torch.distributions` it is the rightmost batch
  dimension, and a prior whose parameters carry a leading seed axis (a mixture's (S, K, D) means) has
  batch shape (S,) and broadcasts against latents (B, S, D).

`Stack(models)` holds the stacked parameters and buffers; `Stack.run` computes with them in `models[0]`'s
code (a copy of it holding the stacked tensors); `Stack.unstack` writes seed s's slice back into `models[s]`. `Adam` is
the optimizer of a `Stack` (torch's Adam, in one pass over memory with `gen_lib.kernels`).
`gen_lib.training.fit_seeds` is the training loop; `agrees` checks, on a few images, that a model class
really runs stacked (its stacked loss equals every seed's own loss).

Each seed keeps its identity: its initial weights, its data order and its noise come from its own seed,
exactly as `fit` would draw them for it alone; its results and checkpoints stay per seed. Adam is
elementwise, so one Adam over the stacked parameters is S independent Adams.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from . import kernels


_SLOTS: dict[int, "_Slot"] | None = None  # inside `Stack.run`: the stacked weights' buffers, by id of the weight view


class Linear(nn.Linear):
    """`nn.Linear` that also runs S seeds' stacked weights: weight (S, out, in), bias (S, out) on x (..., S, in)
    give (..., S, out), one batched GEMM (`linear`). With ordinary weights it is `nn.Linear`; its state dict
    is `nn.Linear`'s."""

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
    xs = x.movedim(-2, 0).reshape(s, -1, x.shape[-1])  # (S, N, in): no copy when x is a view of (S, ..., in)
    slot = _SLOTS.get(id(weight)) if _SLOTS is not None else None
    if slot is not None and bias is not None:  # a `Stack`'s weight: persistent cast and gradient buffers
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else xs.dtype
        out = _StackedLinear.apply(xs, bias, slot, dtype)
    else:
        out = torch.baddbmm(bias.unsqueeze(1), xs, weight.mT) if bias is not None else torch.bmm(xs, weight.mT)
    return out.reshape(s, *lead, out.shape[-1]).movedim(0, -2)


class _Slot:
    """A `Stack`'s `Linear` weight W^T (S, in, out) and the buffers its steps reuse.

    Why: a training step that allocates its weights' low-precision copies and their gradients afresh pays
    for new memory every time (page faults): converting the bf16 gradient of a 5 x 784 x 512 weight into a
    new float32 tensor took 1.6 ms in a step (measured), against 0.08 ms into memory already in use. Here the
    bf16 copy is made once per step, after `Stack.zero_grad` (and shared by every use in a step: a VampPrior runs the encoder
    twice), and the gradient is converted into `param.grad`, which stays allocated (`Stack.zero_grad` marks it
    to be overwritten rather than freeing it)."""

    def __init__(self, param: torch.Tensor):
        self.param = param  # the leaf the optimizer updates
        self.low: torch.Tensor | None = None  # its copy in the compute dtype
        self.low_current = False  # `low` holds the weight's present values (`Stack.zero_grad` resets it)
        self.grad_low: torch.Tensor | None = None  # the compute-dtype gradient, before conversion
        self.fresh = True  # the next gradient overwrites param.grad (else adds to it)
        self.defer = False  # leave a single compute-dtype gradient in grad_low, unconverted (set by `Adam`)
        self.pending = False  # the step's gradient is in grad_low, not (yet) in param.grad

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        p = self.param.detach()
        if dtype == p.dtype:
            return p
        if self.low is None or self.low.dtype != dtype:
            self.low, self.low_current = torch.empty_like(p, dtype=dtype), False
        if not self.low_current:  # once per step: a fused optimizer's in-place update leaves no trace to test
            self.low.copy_(p)
            self.low_current = True
        return self.low

    def accumulate(self, x: torch.Tensor, g: torch.Tensor) -> None:
        """param.grad (+)= x^T g, x (S, N, in) and g (S, N, out) in the compute dtype. With `defer`, the step's
        gradient stays in grad_low (`pending`) for `Adam` to read; a second one (a VampPrior's encoder runs twice)
        joins it there in the GEMM's float32 accumulator (baddbmm), rounded to the compute dtype once, as a
        single gradient is (without `defer`, each is rounded and they are summed in float32 in param.grad)."""
        p = self.param
        if p.grad is None:
            p.grad, self.fresh = torch.empty_like(p), True
        if self.fresh and g.dtype == p.dtype:
            torch.bmm(x.mT, g, out=p.grad)
        elif self.pending and g.dtype == self.grad_low.dtype:
            self.grad_low.baddbmm_(x.mT, g)
        else:
            if self.grad_low is None or self.grad_low.dtype != g.dtype:
                self.grad_low = torch.empty_like(p, dtype=g.dtype)
            self.settle()
            torch.bmm(x.mT, g, out=self.grad_low)
            if self.fresh and self.defer:
                self.pending = True
            elif self.fresh:
                p.grad.copy_(self.grad_low)
            else:
                p.grad.add_(self.grad_low)
        self.fresh = False

    def settle(self) -> None:
        """A pending compute-dtype gradient into param.grad (float32)."""
        if self.pending:
            self.param.grad.copy_(self.grad_low)
            self.pending = False

    def gradient(self) -> torch.Tensor | None:
        """The step's gradient: grad_low while pending, else param.grad."""
        return self.grad_low if self.pending else self.param.grad


class _StackedLinear(torch.autograd.Function):
    """xs (S, N, in) -> xs W + b in `dtype` for a `_Slot`'s W (S, in, out); the weight's gradient goes into the
    slot's buffers (`_Slot.accumulate`), the input's and the bias's through autograd (the bias's as autocast gives it)."""

    @staticmethod
    def forward(ctx, xs, bias, slot, dtype):
        w = slot.weight(dtype)
        x = xs.to(dtype)
        out = torch.baddbmm(bias.to(dtype).unsqueeze(1), x, w)
        ctx.save_for_backward(x, w)
        ctx.slot, ctx.x_dtype, ctx.b_dtype = slot, xs.dtype, bias.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.to(w.dtype)
        gx = torch.bmm(g, w.mT).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        ctx.slot.accumulate(x, g)
        gb = g.sum(1).to(ctx.b_dtype) if ctx.needs_input_grad[1] else None  # (summed in float32 internally)
        return gx, gb, None, None


class Stack:
    """S models of one architecture (`models`, e.g. one per seed) as one stacked model.

    `params` are new leaf tensors with a leading seed axis (S, ...), one per parameter of the models, for
    the optimizer; a `Linear`'s weight is stored (S, in, out) in memory, so that the batched GEMM reads W^T
    contiguously and the weight's gradient arrives contiguous (no copy in autograd, none in a fused Adam).
    Buffers that are equal in every model (a fixed mask) stay one tensor; others are stacked.
    `run(fn, *args)` computes `fn(model, *args)` with the stacked weights in `models[0]`'s code; `unstack()`
    copies seed s's weights into `models[s]`.
    """

    def __init__(self, models: list[nn.Module]):
        if not models:
            raise ValueError("Stack needs at least one model")
        named = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in models]
        if any({k: v.shape for k, v in n.items()} != {k: v.shape for k, v in named[0].items()} for n in named[1:]):
            raise ValueError("the models to stack differ in their parameters' names or shapes")
        self.models = list(models)
        self.transposed = {f"{name}.weight" if name else "weight" for name, module in models[0].named_modules()
                           if isinstance(module, Linear)}
        self.params: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, _ in models[0].named_parameters():
                value = torch.stack([n[name].detach() for n in named])
                if name in self.transposed:
                    value = value.mT.contiguous()  # (S, in, out)
                self.params[name] = value.requires_grad_()
        self.slots = {name: _Slot(self.params[name]) for name in self.transposed}
        self._model: tuple[nn.Module, dict[int, _Slot]] | None = None  # `_runner`
        self.buffers: dict[str, torch.Tensor] = {}
        for name, first in models[0].named_buffers():
            others = [n[name] for n in named[1:]]
            self.buffers[name] = first if all(torch.equal(first, o) for o in others) else torch.stack([first, *others])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter (S, ...) in the models' own layout (views of `params`) and every buffer, by name."""
        return {**{k: v.mT if k in self.transposed else v for k, v in self.params.items()}, **self.buffers}

    def run(self, fn: Callable[..., torch.Tensor], *args):
        """`fn(model, *args)` computed with the stacked weights in `models[0]`'s code. The inputs carry the seed
        axis innermost among their batch dimensions ((B, S, ...) for images), and so do the results. Under
        autocast the `Linear`s compute in autocast's dtype. The `Linear` weights' gradients go straight into their
        `.grad` (see `_Slot`): call `zero_grad` (not the optimizer's) between steps."""
        global _SLOTS
        runner, slots = self._runner()
        if runner.training != self.models[0].training:
            runner.train(self.models[0].training)
        outer, _SLOTS = _SLOTS, slots
        try:
            return fn(runner, *args)
        finally:
            _SLOTS = outer

    def _runner(self) -> tuple[nn.Module, dict[int, "_Slot"]]:
        """A copy of `models[0]` whose parameters and buffers are the stacked tensors (views of `params`), made once:
        swapping them in for each call (`torch.func.functional_call`) cost 0.6 ms per step for a flow prior's 92
        tensors (measured). With the `Linear` weights' slots, by id of the weight views the copy holds."""
        if self._model is None:
            model = copy.deepcopy(self.models[0])
            with torch.enable_grad():  # the views of the leaves carry their gradient (a `Linear` without a slot)
                tensors = self.tensors()
            for name, value in tensors.items():
                owner, _, attr = name.rpartition(".")
                module = model.get_submodule(owner)
                module._parameters.pop(attr, None)
                module._buffers.pop(attr, None)
                setattr(module, attr, value)
            self._model = (model, {id(tensors[name]): slot for name, slot in self.slots.items()})
        return self._model

    def zero_grad(self) -> None:
        """Forget the gradients, between optimizer steps: the `Linear` weights' buffers stay allocated and are
        overwritten by the next backward (their low-precision copies are refreshed by the next `run`); the
        other parameters' `.grad` become None."""
        for name, p in self.params.items():
            if name in self.slots:
                slot = self.slots[name]
                slot.fresh, slot.pending = True, False
                slot.low_current = False  # the optimizer changes the weights (`Adam` sets it again when it writes low)
            else:
                p.grad = None

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy seed s's slice of every stacked parameter (and stacked buffer) into `models[s]`."""
        for s, model in enumerate(self.models):
            own = dict(model.named_parameters()) | dict(model.named_buffers())
            for name, value in self.tensors().items():
                if value.dim() == own[name].dim() + 1:  # a shared buffer is the model's own already
                    own[name].copy_(value[s])


class Adam(torch.optim.Adam):
    """Adam (Kingma & Ba, 2015) over a `Stack`'s parameters: one elementwise update, so each seed's own Adam.

    On a CPU where `gen_lib.kernels` builds, the update of all tensors is one call, one pass over each
    tensor's memory that reads a `Linear` weight's bf16 gradient where the backward left it (`_Slot.pending`)
    and writes the weight's bf16 copy for the next forward (`_Slot.low`); the weights the forward reads first
    are updated last, so that their copies are still in the cache when it starts (0.17 ms less per seed and
    step, measured). Elsewhere it is torch's fused Adam after the gradients are converted to float32. Both
    compute torch's fused Adam's numbers from the same gradients; the one difference is a weight used twice
    in a step (a VampPrior's encoder), whose two gradients are summed before their one rounding to bf16 here
    and after their two roundings in float32 there (`_Slot.accumulate`). The state and state dict are
    `torch.optim.Adam`'s (a step count and two moments per parameter), so checkpoints and resuming do not
    depend on which ran.
    """

    def __init__(self, stack: Stack, lr: float):
        params = list(stack.params.values())
        self.stack = stack
        self.why_not_kernel = (kernels.unavailable() if all(p.device.type == "cpu" for p in params)
                               else "the parameters are not on the CPU")
        super().__init__(params, lr=lr, fused=params[0].device.type in ("cpu", "cuda"))
        self._plan: _Plan | None = None
        for slot in stack.slots.values():
            slot.defer = self.why_not_kernel is None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("seeds.Adam.step takes no closure")
        if self.why_not_kernel is not None:
            for slot in self.stack.slots.values():
                slot.settle()
            return super().step()
        # the weights the forward reads first are updated last, so that their copies are still in the cache
        order = [(p, self.stack.slots.get(name)) for name, p in reversed(self.stack.params.items())]
        grads = [slot.gradient() if slot is not None else p.grad for p, slot in order]
        if any(g is None for g in grads):  # some parameters had no gradient this step: they keep their state
            order, grads = [o for o, g in zip(order, grads) if g is not None], [g for g in grads if g is not None]
            plan = self._prepare(order)
        else:
            if self._plan is None or not self._plan.holds(self.state):
                self._plan = self._prepare(order)
            plan = self._plan
        group = self.param_groups[0]
        plan.update(grads, lr=group["lr"], betas=group["betas"], eps=group["eps"])
        for slot in plan.copies:
            slot.low_current = True  # the next forward reads the copy written here

    def _prepare(self, order: list[tuple[torch.Tensor, "_Slot | None"]]) -> "_Plan":
        for p, _ in order:
            if not self.state[p]:  # as torch's Adam starts it
                self.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p, _ in order]
        lows = [slot.low if slot is not None and slot.low is not None and slot.low.dtype == torch.bfloat16 else None
                for _, slot in order]
        update = kernels.AdamUpdate([p.detach() for p, _ in order], [st["exp_avg"] for st in states],
                                    [st["exp_avg_sq"] for st in states], lows, [st["step"] for st in states])
        return _Plan(update, [(p, st, st["exp_avg"], st["exp_avg_sq"], st["step"]) for (p, _), st in zip(order, states)],
                     [(slot, slot.low) for _, slot in order if slot is not None],
                     [slot for (_, slot), low in zip(order, lows) if low is not None])


class _Plan:
    """`seeds.Adam`'s prepared kernel call (`kernels.AdamUpdate`) and the tensors it holds the addresses of: valid
    while every parameter's state and every weight's bf16 copy are still those tensors."""

    def __init__(self, update, tensors, lows, copies):
        self.update, self.tensors, self.lows, self.copies = update, tensors, lows, copies

    def holds(self, state) -> bool:
        return (all(state.get(p) is st and st.get("exp_avg") is m and st.get("exp_avg_sq") is v and st.get("step") is t
                    for p, st, m, v, t in self.tensors)
                and all(slot.low is low for slot, low in self.lows))


def agrees(models: list[nn.Module], fn: Callable[..., torch.Tensor], *args: torch.Tensor, tol: float = 1e-4) -> bool:
    """Whether `fn(model, *args)` (a per-example value, (B,)) computed stacked over the seeds (`Stack.run`) equals
    each seed's own value. Every tensor of `args` holds seed s's inputs in its row s: (S, B, ...). Run without
    gradients; a model class that does not run stacked (it raises, or mixes the seeds) gives False."""
    with torch.no_grad():
        alone = torch.stack([fn(m, *(a[s] for a in args)) for s, m in enumerate(models)], 1)  # (B, S)
        try:
            together = Stack(models).run(fn, *(a.transpose(0, 1) for a in args))
        except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError):
            return False
    return (together.shape == alone.shape
            and bool(torch.allclose(together, alone, rtol=tol, atol=tol * float(alone.abs().max()))))
