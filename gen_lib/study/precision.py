"""bf16 or float32, channels_last or not: a property of the machine, measured once and cached.

bf16 autocast is 1.5-2x faster than float32 for the study's models on a CPU with fast bf16 matrix
units (an AMD EPYC with AVX-512-bf16: bf16 GEMMs 3.7x faster than float32) and slower on one without
(an Intel Xeon with AVX-512-bf16 but no AMX: every model 0.70-0.86x). So a profile says `bf16 = "auto"`
(and `channels_last = "auto"` for the U-Net), and the training recipes ask `choose` (through `settle`), which times a few
training steps of the configured model in each setting on this machine and keeps the fastest: bf16 only
when it is at least `MARGIN` faster than float32 (float32 is the safer numeric path), channels_last only
when it is at least `MARGIN` faster than without. The decision is cached in `build/precision.json` under
the machine's description (CPU model and flags, GPU, threads, torch version), so that every notebook of a
run, and every later run on the machine, trains the same way; a checkpoint records the resolved values
in its run identity. Evaluation is always float32.

    python -m gen_lib.study.precision          # this machine's decisions (measures what is not cached)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import paths
from ..system import hardware
from ..training import _adam, autocast, default_device
from . import config, models

MARGIN = 1.10  # a faster setting must win by at least 10 %: within noise, the simpler one (float32, no channels_last)
SLOW = 2.0  # a setting whose first timed step takes more than SLOW x float32's is dropped from the measurement
AUTO, KEYS = config.AUTO, config.PRECISION_KEYS


def machine() -> dict[str, Any]:
    """What decides the speed of a precision: CPU model and its bf16/AMX flags, GPU, threads, torch."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    return {"hardware": hardware(), "flags": " ".join(f for f in wanted if f in flags),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def machine_key() -> str:
    return hashlib.sha1(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:12]


def _cache_file() -> Path:
    return paths.build_dir() / "precision.json"


def _read() -> dict[str, Any]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write(table: dict[str, Any]) -> None:
    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _time_step(step: Callable[[], None], n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1000


def _trainer(model: torch.nn.Module, batch: torch.Tensor, loss: Callable, bf16: bool,
             channels_last: bool) -> Callable[[], None]:
    """One training step as `training.fit` runs it (fused Adam, autocast, memory format)."""

    device = batch.device
    model = model.to(device=device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if channels_last and batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    opt = _adam(model, 1e-4)

    def step():
        with autocast(device, bf16):
            value = loss(model, batch).float()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return step


def _candidate(kind: str, cfg: Mapping[str, Any], device: torch.device):
    """(model key, model factory, batch, loss, steps timed) of the model `kind` configured by `cfg`."""
    g = torch.Generator().manual_seed(0)
    if kind == "vae":

        b = int(cfg.get("batch_size", 128))  # [quality] arrives with its vae_ prefixes stripped (settle)
        batch = (torch.rand(b, 784, generator=g) > 0.5).float().to(device)
        return (f"vae 784-512-512-2 batch {b}", lambda: models.build("priors", {"prior": "gaussian"}), batch,
                lambda m, x: m.loss(x, check=False), 20)
    if kind == "flow":

        b = int(cfg["batch_size"])
        batch = torch.rand(b, 1, 28, 28, generator=g).mul(0.98).add(0.01).to(device)
        return (f"flow {cfg['n_layers']}x{cfg['hidden']} batch {b}",
                lambda: models.build("flow", cfg), batch, lambda m, x: m.loss(x), 3)
    if kind == "unet":

        b = int(cfg["batch_size"])
        batch = (torch.rand(b, 1, 28, 28, generator=g) * 2 - 1).to(device)
        return (f"unet c{cfg['base_channels']} m{cfg['channel_mults']} r{cfg['n_res']} batch {b}",
                lambda: models.build("ddpm", cfg), batch, lambda m, x: m.loss(x), 2)
    raise ValueError(f"kind={kind!r} is unknown; choose one of vae, flow, unet")


def choose(kind: str, cfg: Mapping[str, Any], device: torch.device | str | None = None,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """This machine's fastest setting for the model `kind` ("vae", "flow", "unet") sized by `cfg`:
    {"bf16", "channels_last", "ms" (per setting), "machine"}, measured on first use and cached."""

    device = torch.device(device) if device is not None else default_device()
    key, factory, batch, loss, n = _candidate(kind, cfg, device)
    mkey = machine_key()
    table = _read()
    entry = table.get(mkey, {}).get(key)
    if entry is not None:
        return entry
    settings = {"fp32": (False, False), "bf16": (True, False)}
    if kind == "unet":
        settings.update({"fp32+cl": (False, True), "bf16+cl": (True, True)})
    t0 = time.perf_counter()
    ms: dict[str, float] = {}
    for _round in range(2):  # alternate, keep each setting's best round (the least disturbed)
        for name, (bf16, cl) in settings.items():
            torch.manual_seed(0)
            step = _trainer(factory(), batch, loss, bf16, cl)
            if _round == 0 and name != "fp32":  # one step first: a setting already far slower is not timed on
                first = _time_step(step, 1, warmup=1)  # (bf16 emulated on a CPU without bf16 units: 10-25x)
                if first > SLOW * ms["fp32"]:
                    ms[name] = first
                    settings = {k: v for k, v in settings.items() if k != name}
                    continue
            ms[name] = min(ms.get(name, float("inf")), _time_step(step, n))
    bf16 = ms["fp32"] / ms["bf16"] >= MARGIN if kind != "unet" else \
        min(ms["fp32"], ms["fp32+cl"]) / min(ms["bf16"], ms["bf16+cl"]) >= MARGIN
    prefix = "bf16" if bf16 else "fp32"
    cl = kind == "unet" and ms[prefix] / ms[f"{prefix}+cl"] >= MARGIN
    entry = {"bf16": bool(bf16), "channels_last": bool(cl), "ms": {k: round(v, 2) for k, v in ms.items()},
             "machine": machine(), "measured": time.strftime("%Y-%m-%d %H:%M")}
    table = _read()  # another process may have written meanwhile
    table.setdefault(mkey, {})[key] = entry
    _write(table)
    log(f"precision for {key} on this machine: {describe(entry)} (measured in {time.perf_counter() - t0:.0f} s, "
        f"cached in {_cache_file()})")
    return entry


def describe(entry: Mapping[str, Any]) -> str:
    """"bf16 autocast (1.78x the speed of float32 here)" or "float32 (bf16 autocast ran at 0.70x its speed
    here)", and for the U-Net the memory format with its measured ratio."""
    ms = entry["ms"]
    speed = ms["fp32"] / ms["bf16"]
    text = (f"bf16 autocast ({speed:.2f}x the speed of float32 here)" if entry["bf16"]
            else f"float32 (bf16 autocast ran at {speed:.2f}x its speed here)")
    if "fp32+cl" in ms:
        prefix = "bf16" if entry["bf16"] else "fp32"
        ratio = ms[prefix] / ms[f"{prefix}+cl"]
        text += (f", channels_last ({ratio:.2f}x)" if entry["channels_last"]
                 else f", standard memory format (channels_last: {ratio:.2f}x)")
    return text


def settle(section: str, params: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """`params` with every "auto" of `KEYS[section]` replaced by this machine's choice (`choose`), and
    `precision` set to a sentence saying what was chosen and why (for the notebooks and the report)."""
    keys = {k: kind for k, kind in KEYS.get(section, {}).items() if k in params}
    if not keys:
        return params
    params = dict(params)
    notes = []
    for k, kind in keys.items():
        if params[k] == AUTO:
            sized = {k2.removeprefix("vae_"): v for k2, v in params.items()} if section == "quality" else params
            entry = choose(kind, sized, log=log)
            params[k] = entry["channels_last"] if k == "channels_last" else entry["bf16"]
            note = describe(entry)
        elif k == "channels_last":
            note = f"channels_last {'on' if params[k] else 'off'} (set by the profile)"
        else:
            note = f"{'bf16 autocast' if params[k] else 'float32'} (set by the profile)"
        if note not in notes:
            notes.append(note)
    params["precision"] = "; ".join(notes)
    return params


if __name__ == "__main__":
    for section, keys in KEYS.items():
        cfg = settle(section, config.resolve(section, "default", **{k: AUTO for k in keys}))
        print(f"[{section}] {cfg['precision']}")
