"""One training function for every model: the model gives a loss, `fit` does the rest.

`fit(model, data, ...)` runs Adam over shuffled minibatches of an in-memory tensor
(no per-item DataLoader), with tqdm progress, automatic device choice, seeding,
optional bf16 autocast, an optional EMA of the weights, per-epoch evaluation, and
atomic per-epoch checkpoints that carry the resolved configuration. Calling it again
with the same configuration resumes from the last checkpoint (or returns at once when
training is complete); a checkpoint from another configuration is refused, naming
the differing fields; a non-finite loss stops training with the last good checkpoint
kept on disk.

Determinism: the data order and every random draw of epoch `e` depend only on
`(seed, e)` and the weights, so an interrupted-then-resumed run ends with the same
weights as an uninterrupted one (on the same device).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped, the last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, truncated, or from another configuration."""


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU or CUDA (a no-op context when disabled)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in config.items()}


def config_diff(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable differences between two configurations."""
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs requested {wanted.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != wanted.get(k, "<absent>")]


def load_checkpoint(path: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by `fit`, refusing a corrupt one or one from another configuration."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, unpickling error, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                              "delete it to retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a gen_lib checkpoint (format {CHECKPOINT_FORMAT}); "
                              "delete it to retrain")
    if config is not None:
        diff = config_diff(ckpt["config"], _jsonable(config))
        if diff:
            raise CheckpointError(f"checkpoint {path} was trained with another configuration: "
                                  + "; ".join(diff) + ". Delete it or use another folder to retrain")
    return ckpt


@dataclass
class TrainResult:
    """What `fit` returns: the per-epoch history and how the run started."""

    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    status: str = "trained"  # "trained" | "resumed" | "reused"
    ema: nn.Module | None = None  # EMA copy of the model, when ema_decay was given
    seconds: float = 0.0  # wall time of the epochs run in this call


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def fit(
    model: nn.Module,
    data: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    config: dict[str, Any],
    checkpoint: str | Path | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    device: torch.device | str | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    ema_decay: float | None = None,
    grad_clip: float | None = None,
    progress: bool = True,
    desc: str = "train",
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `model` by Adam on minibatches of `data` (N, ...) held in memory.

    The loss is `loss_fn(model, batch)` if given, else `model.loss(batch)`: a scalar to
    minimise. `transform(batch, generator)` makes each batch's view (e.g. dequantize).
    `eval_fn(model)` runs after each epoch in eval mode; its dict joins the history.
    `checkpoint` (a path) enables resume: the model, optimizer, EMA, history and
    `config` are saved atomically after every epoch. The model is left on `device`.
    """
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}, lr={lr}: need epochs >= 0, "
                         "batch_size >= 1, lr > 0")
    device = torch.device(device) if device is not None else default_device()
    config = _jsonable({**config, "seed": seed, "epochs_total": epochs, "batch_size": batch_size, "lr": lr})
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
    result = TrainResult(ema=ema)
    start_epoch = 0

    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, {k: v for k, v in config.items() if k != "epochs_total"})
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        result.history = ckpt["history"]
        start_epoch = ckpt["epoch"]
        if start_epoch > epochs:
            raise CheckpointError(f"checkpoint {ckpt_path} has {start_epoch} epochs, more than the {epochs} "
                                  "requested; delete it or use another folder")
        result.status = "reused" if start_epoch >= epochs else "resumed"
        log(f"{desc}: {'reusing' if start_epoch >= epochs else 'resuming'} {ckpt_path} "
            f"(epoch {start_epoch} of {epochs})")

    n = data.shape[0]
    steps = math.ceil(n / batch_size)
    data = data.to(device)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        # Every random draw of this epoch depends on (seed, epoch) only: resumable, reproducible.
        seed_everything(seed * 100_003 + epoch)
        gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen, device=device)
        model.train()
        total, count = 0.0, 0
        bar = tqdm(range(steps), desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False, mininterval=2.0)
        for step in bar:
            batch = data[order[step * batch_size:(step + 1) * batch_size]]
            if transform is not None:
                batch = transform(batch, gen)
            if channels_last and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(device, bf16):
                loss = loss_fn(model, batch) if loss_fn is not None else model.loss(batch)
            loss = loss.float()
            if not torch.isfinite(loss):
                where = f"last good checkpoint kept at {ckpt_path}" if ckpt_path else "no checkpoint was requested"
                raise NonFiniteLossError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                         f"training stopped ({where}). Try a lower lr (now {lr}) or grad_clip.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if ema is not None:
                _ema_update(ema, model, ema_decay)
            total += loss.item() * batch.shape[0]
            count += batch.shape[0]
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4g}")
        record = {"epoch": epoch + 1, "train_loss": total / count, "seconds": time.perf_counter() - t0}
        if eval_fn is not None:
            model.eval()
            with torch.no_grad():
                record.update(eval_fn(ema if ema is not None else model))
        result.history.append(record)
        if progress:
            log(f"{desc} epoch {epoch + 1}/{epochs}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch",)))
        if ckpt_path is not None:
            save_atomic({"format": CHECKPOINT_FORMAT, "config": {k: v for k, v in config.items() if k != "epochs_total"},
                         "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "ema": ema.state_dict() if ema is not None else None, "history": result.history}, ckpt_path)
    result.seconds = time.perf_counter() - t0
    model.eval()
    if ema is not None:
        ema.eval()
    return result
