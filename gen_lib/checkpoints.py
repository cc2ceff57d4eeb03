"""Checkpoints: written atomically, read without running code, refused when they come from another configuration.

A checkpoint of `gen_lib.training` (one per run: a model, or one seed of a stack) is a dict {"format", "config" (the
run's identity), "epoch", "model", "optimizer", "ema", "history", "digest"} saved by `torch.save` to a temporary
file, fsynced and renamed over the old one, so an interruption leaves the previous checkpoint whole. Every load is
`torch.load(weights_only=True)`, and the SHA-256 `digest` of every tensor's bytes is checked: a file whose bytes
changed is refused, not loaded with NaNs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, truncated, or from another configuration."""


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


def jsonable(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with every value that JSON cannot hold as its repr (what a checkpoint stores and compares)."""
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in config.items()}


def config_diff(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable differences between two configurations."""
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs requested {wanted.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != wanted.get(k, "<absent>")]


def digest(obj: Any) -> str:
    """SHA-256 of every tensor in `obj` (nested dicts, lists and tuples, in order), of their dtypes, shapes and
    bytes, and of every other leaf's repr: what a checkpoint's `digest` holds."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())
    walk(obj)
    return h.hexdigest()


def checkpoint_identity(config: dict[str, Any], **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's configuration with the loop's own fields, and its identity (without `epochs_total`, which may grow
    on resume): what a checkpoint must match."""
    config = jsonable({**config, **fields})
    return config, {k: v for k, v in config.items() if k != "epochs_total"}


def load_to_resume(path: Path | None, identity: dict[str, Any], epochs: int, label: str,
                   log: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint at `path` that a run of `epochs` epochs resumes from (None when there is none), checked against
    `identity` and refused when it has more epochs; logs whether it is resumed or reused whole."""
    if path is None or not path.exists():
        return None
    ckpt = load_checkpoint(path, identity)
    epoch = ckpt["epoch"]
    if epoch > epochs:
        raise CheckpointError(f"checkpoint {path} has {epoch} epochs, more than the {epochs} requested; delete it or "
                              "use another folder")
    log(f"{label}: {'reusing' if epoch >= epochs else 'resuming'} {path} (epoch {epoch} of {epochs})")
    return ckpt


def load_checkpoint(path: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by `gen_lib.training`, refusing a missing or corrupt one (its bytes no longer match
    its digest) or one from another configuration."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    ckpt = load_safely(path, CheckpointError)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a gen_lib checkpoint (format {CHECKPOINT_FORMAT}); "
                              "delete it to retrain")
    stored = ckpt.pop("digest", None)
    if stored is not None and digest(ckpt) != stored:
        raise CheckpointError(f"checkpoint {path} is corrupt: its bytes no longer match the digest written with "
                              "them; delete it to retrain")
    if config is not None:
        diff = config_diff(ckpt["config"], jsonable(config))
        if diff:
            raise CheckpointError(f"checkpoint {path} was trained with another configuration: "
                                  + "; ".join(diff) + ". Delete it or use another folder to retrain")
    return ckpt


def load_safely(path: str | Path, error: type[Exception] = RuntimeError) -> Any:
    """`torch.load(path, weights_only=True)`: tensors, numbers, strings, lists and dicts only.

    A file that would need to run code to unpickle (a crafted pickle, a pickled class) is refused
    with `error`, as is a corrupt or truncated one: loading a checkpoint someone sent you executes nothing.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        if "GLOBAL" not in detail:  # not a refused object: broken bytes
            raise error(f"{path} is corrupt or truncated ({detail[:200]}); delete it to recompute") from None
        raise error(f"refusing to load {path}: it holds objects other than tensors, numbers and strings, and "
                    "unpickling them could run code (gen_lib loads with torch.load(weights_only=True)): "
                    f"{detail[:300]}. Delete it to recompute") from None
    except Exception as err:  # truncated zip, garbage bytes, ...
        raise error(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); delete it to recompute") from None


def save(path: Path, identity: dict[str, Any], epoch: int, model: nn.Module, optimizer_state: dict[str, Any],
          ema: nn.Module | None, history: list[dict[str, Any]]) -> None:
    """Write a run's checkpoint of epoch `epoch` atomically."""
    ckpt = {"format": CHECKPOINT_FORMAT, "config": identity, "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer_state, "ema": ema.state_dict() if ema is not None else None, "history": history}
    save_atomic({**ckpt, "digest": digest(ckpt)}, path)
