"""One training loop for every model: the model gives a loss, `train_epochs` does the rest.

`fit(model, data, ...)` trains one model; `fit_seeds(models, data, ...)` trains several seeds of one model together
as one stacked model (`gen_lib.seeds.stack`), each seed keeping its own data order, noise, Adam state, history and
checkpoint (`fit`'s format, so that `fit` can resume any of them). Both set up a model and its runs' bookkeeping,
then run the same epoch loop: Adam over shuffled minibatches of an in-memory tensor (no per-item DataLoader), an
optional learning-rate schedule (linear warm-up, then constant or cosine decay), optional bf16 autocast, an optional
EMA of the weights, per-epoch evaluation, and atomic per-epoch checkpoints (`gen_lib.checkpoints`) that carry the
run's identity. Progress: one line per epoch (loss, metrics, seconds, ETA); tqdm bars only where a person watches
(a terminal, or JupyterLab), never under papermill (`gen_lib.run` sets GEN_LIB_BARS=0). No host synchronisation per
step: the loss is summed on the device and checked for non-finite values every CHECK_EVERY steps. Calling again
with the same configuration resumes from the last checkpoint (or returns at once when training is complete); a
checkpoint from another configuration is refused, naming the differing fields; a non-finite loss stops training
with the last good checkpoint kept on disk.

Determinism: every random draw of epoch `e` of a run seeded `s` comes from `epoch_seed(s, e)` (and the weights),
so an interrupted-then-resumed run ends with the same weights as an uninterrupted one (on the same device).
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import seeds as stacking
from .checkpoints import checkpoint_identity, load_checkpoint, load_to_resume, save

SCHEDULES = ("constant", "cosine")
CHECK_EVERY = 50  # steps between reads of the device-side loss sums (a host sync on a GPU)

# What one step of an epoch computes: step -> (the objective to differentiate, each run's loss (S,) or a scalar for
# one model, the batch size).
StepLoss = Callable[[int], tuple[torch.Tensor, torch.Tensor, int]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped, the last good checkpoint is kept."""


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bars_wanted() -> bool:
    """tqdm bars where a person watches them redraw: a terminal or a Jupyter front end, not a log file.

    `gen_lib.run` sets GEN_LIB_BARS=0 for the kernels papermill drives; GEN_LIB_BARS=1 forces bars.
    """
    env = os.environ.get("GEN_LIB_BARS")
    if env is not None:
        return env.strip() not in ("0", "", "false", "no")
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def lr_factor(step: int, total_steps: int, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    Linear warm-up over the first `warmup_steps` steps (Adam's second-moment estimate is
    poor early on; Goyal et al. 2017, Liu et al. 2020), then constant, or a half cosine from 1
    to 0 over the remaining steps (Loshchilov & Hutter, 2017).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    progress = min(1.0, max(0, step - warmup_steps) / max(1, total_steps - warmup_steps))
    return warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw of epoch `epoch` (0-based) of a run seeded `seed`: the resume contract."""
    return seed * 100_003 + epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU or CUDA (a no-op context when disabled)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class TrainResult:
    """What `fit` returns (and `fit_seeds` per seed): the per-epoch history and how the run started."""

    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    status: str = "trained"  # "trained" | "resumed" | "reused"
    ema: nn.Module | None = None  # EMA copy of the model, when ema_decay was given
    seconds: float = 0.0  # wall time of the epochs run in this call (shared among the seeds trained together)


@dataclass
class Run:
    """One run's bookkeeping: its own model (one model, or one seed of a stack), seed, identity, checkpoint, result."""

    model: nn.Module
    seed: int
    identity: dict[str, Any]
    checkpoint: Path | None
    label: str  # how the log and the errors name it
    result: TrainResult = field(default_factory=TrainResult)

    def resume(self, epochs: int, log: Callable[[str], None]) -> dict[str, Any] | None:
        """Load this run's checkpoint (weights and history), if it has one; return it."""
        ckpt = load_to_resume(self.checkpoint, self.identity, epochs, self.label, log)
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.result.history = ckpt["history"]
            self.result.status = "reused" if ckpt["epoch"] >= epochs else "resumed"
        return ckpt


def adam(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per step where torch has one for these parameters (CPU and CUDA, float
    parameters; the same update up to float round-off, faster: benchmarks/README.md); the plain one elsewhere."""
    params = [p for p in model.parameters()]
    fusable = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    if fusable and params:
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError):  # a torch without the fused kernel for this device
            pass
    return torch.optim.Adam(params, lr=lr)


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def epoch_line(label: str, epoch: int, epochs: int, metrics: str, took: float, t0: float, first: int) -> str:
    """'label epoch e/E: metrics; time, ETA ...' (the ETA from the mean epoch time since `t0`, `first` the epoch
    training started from)."""
    eta = (time.perf_counter() - t0) / (epoch + 1 - first) * (epochs - epoch - 1)
    return (f"{label} epoch {epoch + 1}/{epochs}{metrics}; {_duration(took)}"
            + (f", ETA {_duration(eta)}" if epoch + 1 < epochs else ""))


def _check_arguments(epochs: int, batch_size: int, lr: float, warmup_steps: int = 0) -> None:
    if epochs < 0 or batch_size < 1 or not lr > 0 or warmup_steps < 0:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}, lr={lr}, warmup_steps={warmup_steps}: need "
                         "epochs >= 0, batch_size >= 1, lr > 0, warmup_steps >= 0")


def train_epochs(model: nn.Module, runs: list[Run], optimizer: torch.optim.Optimizer,
                 draw_epoch: Callable[[int], StepLoss], *, first_epoch: int, epochs: int, steps: int, n: int,
                 lr: float, lr_at: Callable[[int], float] | None = None, grad_clip: float | None = None,
                 ema: nn.Module | None = None, ema_decay: float = 0.0,
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, progress: bool = True,
                 desc: str = "train", log: Callable[[str], None] = print) -> None:
    """The epoch loop: train `model` from `first_epoch` to `epochs` by `optimizer`, `steps` steps of `n` examples
    per epoch, and keep each run's history, checkpoint and result.

    `model` is `runs[0].model` itself (one model), or `seeds.stack` of the runs' models (a stack of seeds: their
    weights and Adam states are written back to each run after every epoch). `draw_epoch(epoch)` makes the epoch's
    random draws and returns its `StepLoss`. `lr_at(step)` (the optimizer step since the run began) multiplies
    `lr` at every step; None keeps the optimizer's lr. `grad_clip`, `ema` (updated with `ema_decay` after every step,
    evaluated in place of the model) apply to one model. `eval_fn(model)` runs on each run's model after each epoch,
    in eval mode, without gradients; its dict joins the history.
    """
    stacked = model is not runs[0].model
    show_bar = progress and bars_wanted()
    label = desc if not stacked else f"{desc} seed{'s' if len(runs) > 1 else ''} {', '.join(str(r.seed) for r in runs)}"
    t0 = time.perf_counter()
    for epoch in range(first_epoch, epochs):
        t_epoch = time.perf_counter()
        step_loss = draw_epoch(epoch)
        model.train()
        totals = torch.zeros(len(runs), dtype=torch.float64, device=_device_of(model))  # no sync per step
        first_bad = torch.full((len(runs),), -1, dtype=torch.long, device=totals.device)  # first non-finite step
        bar = tqdm(range(steps), desc=f"{label} epoch {epoch + 1}/{epochs}", disable=not show_bar, leave=False,
                   mininterval=2.0)
        for step in bar:
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr * lr_at(epoch * steps + step)
            objective, losses, size = step_loss(step)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(losses), step, first_bad)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()  # with a stack, seed s's gradient is that of its own loss
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if ema is not None:
                _ema_update(ema, model, ema_decay)
            totals += losses.detach().double() * size
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
                _stop_if_not_finite(first_bad.tolist(), runs, epoch, lr, stacked)  # the only host sync of the loop
                if show_bar:
                    bar.set_postfix(loss=", ".join(f"{v:.4g}" for v in losses.detach().view(-1).tolist()))
        _end_epoch(model, runs, optimizer, ema, eval_fn, epoch, totals.tolist(), n, t0)
        if progress:
            log(epoch_line(label, epoch, epochs, _metrics(runs, stacked), time.perf_counter() - t_epoch, t0,
                           first_epoch))
    for run in runs:
        run.result.seconds = (time.perf_counter() - t0) / len(runs)
        run.model.eval()
    if ema is not None:
        ema.eval()


def _metrics(runs: list[Run], stacked: bool) -> str:
    """The last epoch's losses and metrics for the log: 'name value, ...', or per seed for a stack."""
    names = [k for k in runs[0].result.history[-1] if k not in ("epoch", "seconds")]
    if not stacked:
        return ": " + ", ".join(f"{k} {runs[0].result.history[-1][k]:.4g}" for k in names)
    values = (", ".join(f"{r.result.history[-1][k]:.4g}" for k in names) for r in runs)
    return f" ({', '.join(names)} per seed): " + "; ".join(values)


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _stop_if_not_finite(first_bad: list[int], runs: list[Run], epoch: int, lr: float, stacked: bool) -> None:
    for run, bad in zip(runs, first_bad):
        if bad >= 0:
            where = (f"last good checkpoint kept at {run.checkpoint}" if run.checkpoint
                     else "no checkpoint was requested")
            raise NonFiniteLossError(
                f"{run.label}: loss became nan or inf at epoch {epoch + 1}, step {bad + 1}; training stopped "
                f"({where}). Try a lower lr (now {lr}){'' if stacked else ', a warm-up or grad_clip'}.")


def _end_epoch(model: nn.Module, runs: list[Run], optimizer: torch.optim.Optimizer, ema: nn.Module | None,
               eval_fn: Callable[[nn.Module], dict[str, float]] | None, epoch: int, totals: list[float], n: int,
               t0: float) -> None:
    """Each run's history record, evaluation and checkpoint of epoch `epoch` (a stack's seeds written back first)."""
    stacked = model is not runs[0].model
    if stacked:
        stacking.unstack(model, [r.model for r in runs])
    state = optimizer.state_dict() if any(run.checkpoint is not None for run in runs) else {}
    for k, run in enumerate(runs):
        record = {"epoch": epoch + 1, "train_loss": totals[k] / n, "seconds": (time.perf_counter() - t0) / len(runs)}
        if eval_fn is not None:
            run.model.eval()
            with torch.no_grad():
                record.update(eval_fn(ema if ema is not None else run.model))
        run.result.history.append(record)
        if run.checkpoint is not None:
            save(run.checkpoint, run.identity, epoch + 1, run.model,
                 stacking.seed_adam_state(state, k) if stacked else state, ema, run.result.history)


def fit(
    model: nn.Module,
    data: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    config: dict[str, Any],
    checkpoint: str | Path | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    transform: Callable[[Any, torch.Generator], Any] | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    device: torch.device | str | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    ema_decay: float | None = None,
    grad_clip: float | None = None,
    schedule: str | Callable[[int, int], float] = "constant",
    warmup_steps: int = 0,
    progress: bool = True,
    desc: str = "train",
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `model` by Adam on minibatches of `data` held in memory.

    `data` is a tensor (N, ...) or a tuple of tensors sharing their first dimension (e.g. images
    and labels); a batch is then the tuple of their rows. The loss is `loss_fn(model, batch)` if
    given, else `model.loss(batch)`: a scalar to minimise. `transform(batch, generator)` makes each
    batch's view (e.g. dequantize). The learning rate follows `lr * lr_factor(step, ...)`
    (`schedule` "constant" or "cosine" over all `epochs`, after `warmup_steps` of linear warm-up), or
    `lr * schedule(step, total_steps)` when `schedule` is a function: its `__name__` joins the checkpoint's
    configuration, so it must name what the function does (e.g. "step: lr/10 in the last epoch").
    `eval_fn(model)` runs after each epoch in eval mode; its dict joins the history.
    `checkpoint` (a path) enables resume: the model, optimizer, step count, EMA, history and
    `config` are saved atomically after every epoch. The model is left on `device`.
    `progress`: print one line per epoch (and show a bar where `bars_wanted()`).
    """
    _check_arguments(epochs, batch_size, lr, warmup_steps)
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is unknown; choose one of {', '.join(SCHEDULES)} or a function")
    schedule_name = schedule.__name__ if callable(schedule) else schedule
    tensors = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    if len({t.shape[0] for t in tensors}) != 1:
        raise ValueError(f"data tensors have first dimensions {[t.shape[0] for t in tensors]}; they must agree")
    device = torch.device(device) if device is not None else default_device()
    _, identity = checkpoint_identity(config, seed=seed, epochs_total=epochs, batch_size=batch_size, lr=lr,
                                      **({"schedule": schedule_name} if schedule_name != "constant" else {}),
                                      **({"warmup_steps": warmup_steps} if warmup_steps else {}))
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model.to(device=device, memory_format=memory_format)
    optimizer = adam(model, lr)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
    run = Run(model, seed, identity, Path(checkpoint) if checkpoint is not None else None, desc, TrainResult(ema=ema))
    ckpt = run.resume(epochs, log)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])

    n = tensors[0].shape[0]
    steps = math.ceil(n / batch_size)
    tensors = tuple(t.to(device) for t in tensors)

    def draw_epoch(epoch: int) -> StepLoss:
        seed_everything(epoch_seed(seed, epoch))  # the model's own draws (torch.randn_like in a loss)
        gen = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=gen, device=device)

        def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
            idx = order[step * batch_size:(step + 1) * batch_size]
            batch = tuple(t.index_select(0, idx) for t in tensors)  # not t[idx]: faster from cold memory
            batch = batch if len(batch) > 1 else batch[0]
            if transform is not None:
                batch = transform(batch, gen)
            if channels_last and isinstance(batch, torch.Tensor) and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(device, bf16):
                loss = loss_fn(model, batch) if loss_fn is not None else model.loss(batch)
            loss = loss.float()
            return loss, loss, idx.shape[0]
        return step_loss

    total_steps = epochs * steps
    if callable(schedule):
        def lr_at(step: int) -> float:
            return schedule(step, total_steps)
    elif schedule != "constant" or warmup_steps:
        def lr_at(step: int) -> float:
            return lr_factor(step, total_steps, schedule, warmup_steps)
    else:
        lr_at = None  # the optimizer's lr throughout
    train_epochs(model, [run], optimizer, draw_epoch, first_epoch=ckpt["epoch"] if ckpt else 0, epochs=epochs,
                 steps=steps, n=n, lr=lr, lr_at=lr_at, grad_clip=grad_clip, ema=ema, ema_decay=ema_decay or 0.0,
                 eval_fn=eval_fn, progress=progress, desc=desc, log=log)
    return run.result


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
    Each seed keeps its identity: data order and noise from its own generator seeded by `epoch_seed` as `fit`
    seeds it, its own batch-mean loss, history and checkpoint (`fit`'s format with `configs[s]`, so `fit` can
    resume it). Seeds whose checkpoints stand at different epochs train in groups of equal epoch. A non-finite
    loss stops training naming the seed; `TrainResult.seconds` is the wall time shared among the group.
    """
    n_models = len(models)
    if n_models == 0 or len(configs) != n_models or len(seeds) != n_models or len(set(seeds)) != n_models:
        raise ValueError(f"fit_seeds needs one distinct seed and one config per model: {n_models} models, "
                         f"seeds={list(seeds)}, {len(configs)} configs")
    _check_arguments(epochs, batch_size, lr)
    paths = [Path(c) if c is not None else None for c in (checkpoints or [None] * n_models)]
    device = torch.device(device) if device is not None else default_device()
    runs = [Run(m.to(device), s, checkpoint_identity(c, seed=s, epochs_total=epochs, batch_size=batch_size, lr=lr)[1],
                p, f"{desc} seed {s}") for m, s, c, p in zip(models, seeds, configs, paths)]
    start = [(ckpt["epoch"] if ckpt else 0) for ckpt in (run.resume(epochs, log) for run in runs)]
    x, n = data.to(device), data.shape[0]
    steps = math.ceil(n / batch_size)
    for first in sorted(set(start) - {epochs}):
        group = [run for run, s in zip(runs, start) if s == first]
        model = stacking.stack([run.model for run in group])
        optimizer = adam(model, lr)
        if first > 0:  # the seeds' own Adam states, stacked as their parameters are
            optimizer.load_state_dict(stacking.stack_adam_states([load_checkpoint(r.checkpoint)["optimizer"]
                                                                  for r in group]))
        rows = torch.arange(len(group), device=device)[:, None]

        def draw_epoch(epoch: int) -> StepLoss:  # used in this iteration only
            gens = [torch.Generator(device=device).manual_seed(epoch_seed(r.seed, epoch)) for r in group]
            order = torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])  # (S, n)
            noise = torch.stack([torch.randn((n, *noise_shape), generator=g, device=device) for g in gens])

            def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
                idx = order[:, step * batch_size:(step + 1) * batch_size]  # (S, B)
                batch = x.index_select(0, idx.flatten()).view(*idx.shape, *x.shape[1:])  # seed s's rows in row s
                with autocast(device, bf16):
                    per_example = loss_fn(model, batch.transpose(0, 1), noise[rows, idx].transpose(0, 1))  # (B, S)
                losses = per_example.float().mean(0)  # (S,): each seed's own batch mean
                return losses.sum(), losses, idx.shape[1]
            return step_loss

        train_epochs(model, group, optimizer, draw_epoch, first_epoch=first, epochs=epochs, steps=steps, n=n, lr=lr,
                     eval_fn=eval_fn, progress=progress, desc=desc, log=log)
    for run in runs:
        run.model.eval()
    return [run.result for run in runs]
