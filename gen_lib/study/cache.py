"""Results cache: every trained model and computed metric lives under
`build/runs/<name>/<hash of the resolved configuration>/`, beside a `config.json`.
Re-running with the same configuration reuses it (and says so); any change of
configuration gives another folder, so nothing a user trained is overwritten.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import torch

from .. import paths
from ..data import info
from ..system import git_commit, hardware
from ..checkpoints import load_safely, save_atomic
from .sections import TRAINED_BY


def config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_path(name: str, config: dict[str, Any]) -> Path:
    """The folder of run `name` under `config`, not created (for reading)."""
    return paths.build_dir() / "runs" / name / config_hash(config)


def run_dir(name: str, config: dict[str, Any]) -> Path:
    """The folder of run `name` under `config`, created with its config.json."""
    folder = run_path(name, config)
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "config.json"
    if not meta.exists():
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, sort_keys=True, indent=1, default=repr))
        tmp.replace(meta)
    return folder


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, sort_keys=True, indent=1, default=repr))
    tmp.replace(path)


def record_training(folder: Path, section: str, profile: str, status: str, epochs: int, seconds: float,
                    config: Mapping[str, Any] | None = None) -> dict:
    """Which run trained the model in `folder`, on what machine, when and in how long: `provenance.json` there
    (kept as it is when the model was only reused; a resumed run adds its seconds to the earlier ones), and the
    folder's entry in `build/provenance-<profile>.json` under the notebook that used it (GEN_LIB_NOTEBOOK, set by
    the runner). The index page reads both, so that a cached re-run does not pass for the run that trained.
    `config`, the whole configuration section that used the model (beyond its identity, config.json), is saved
    beside the checkpoint as `config-<profile>.json`."""
    if config is not None:
        _write_json(folder / f"config-{profile or 'none'}.json", dict(config))
    path = folder / "provenance.json"
    old = json.loads(path.read_text()) if path.exists() else None
    if status == "reused" and old is not None:
        entry = old
    else:
        resumed = old is not None and status == "resumed"
        earlier = old["train_seconds"] if resumed else 0.0
        entry = {"section": section, "epochs": epochs, "train_seconds": round(earlier + seconds, 1),
                 "machine": hardware(), "finished": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                 "commit": git_commit()}
        # each call that trained epochs is a segment (a larger budget continues a run: its segments say so)
        entry["segments"] = (old.get("segments", []) if resumed else []) + [
            {k: entry[k] for k in ("epochs", "machine", "finished", "commit")} | {"status": status,
                                                                               "seconds": round(seconds, 1)}]
        _write_json(path, entry)
    index = paths.build_dir() / f"provenance-{profile}.json"
    uses = json.loads(index.read_text()) if index.exists() else {}
    uses[str(folder.relative_to(paths.build_dir()))] = {"notebook": os.environ.get("GEN_LIB_NOTEBOOK", ""),
                                                       "section": section}
    _write_json(index, uses)
    return entry


def forget_uses(profile: str, notebook: str) -> None:
    """Drop `notebook`'s entries from `build/provenance-<profile>.json` before it runs again (its run records
    the models it uses now; a model of an older configuration is no longer its)."""
    index = paths.build_dir() / f"provenance-{profile}.json"
    if index.exists():
        uses = json.loads(index.read_text())
        _write_json(index, {k: v for k, v in uses.items() if v.get("notebook") != notebook})


def memo(path: str | Path, compute: Callable[[], Any], *, log: Callable[[str], None] = print) -> Any:
    """Load `path` (a torch file) if it exists, else `compute()`, save it atomically, return it.

    Values are tensors, numbers, strings, lists and dicts: the cache is read with
    `torch.load(weights_only=True)`, so a cache entry cannot run code when loaded.
    """
    path = Path(path)
    if path.exists():
        try:
            value = load_safely(path)
            log(f"reusing cached {path.relative_to(paths.build_dir()) if path.is_relative_to(paths.build_dir()) else path}")
            return value
        except RuntimeError as err:  # a corrupt or unsafe cache entry is recomputed, never trusted
            log(f"cached {path} is not used ({err}); recomputing")
    value = compute()
    save_atomic(value, path)
    return value


def samples_path(model: str, profile: str, dataset: str = "mnist") -> Path:
    """Where notebook samples of `model` ("flow", "ddpm", "vae", ...) live for 04_quality."""
    return paths.samples_dir() / f"{model}_{profile}_{dataset}.pt"


def save_samples(model: str, images: torch.Tensor, profile: str, dataset: str = "mnist", **meta: Any) -> Path:
    """Save samples (N, C, H, W) in [0, 1], the shape of `dataset`'s images, with metadata (config, method,
    seconds per sample...)."""

    shape = info(dataset).shape
    if images.dim() != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"samples of {model} have shape {tuple(images.shape)}; "
                         f"expected (N, {', '.join(map(str, shape))})")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"samples of {model} lie in [{images.min():.3g}, {images.max():.3g}]; expected [0, 1]")
    path = samples_path(model, profile, dataset)
    meta = {k: dict(v) if isinstance(v, Mapping) else v for k, v in meta.items()}  # a config section as a dict
    save_atomic({"images": images.detach().float().cpu(), **meta}, path)
    return path


def load_samples(model: str, profile: str, dataset: str = "mnist") -> dict[str, Any]:
    """Load what `save_samples` wrote; a clear error names the notebook to run first."""
    path = samples_path(model, profile, dataset)
    if not path.exists():
        writer = TRAINED_BY.get(model, ("the notebook that trains it",))[0]
        raise FileNotFoundError(f"no {model} samples for profile {profile!r} at {path}; run notebook {writer} first "
                                f"(python -m gen_lib.run --profile {profile} --only {writer} --no-pdf)")
    return load_safely(path)
