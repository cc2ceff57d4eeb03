"""bf16 or float32, channels_last or not: a property of the machine, measured once and cached.

bf16 autocast trains the study's models faster than float32 on a CPU with fast bf16 matrix units and slower on
one without (emulated bf16 is many times slower; `benchmarks/README.md`). So a profile says `"auto"`, and the
training recipes ask `settle`, which times a few training steps of the configured model in each setting (`choose`)
and keeps float32 and the standard memory format unless the other wins by `MARGIN`. The choice is cached in `build/precision.json` under the machine's description
(CPU and its flags, GPU, threads, torch), so every notebook and later run on the machine trains the same way; a
run's identity records the resolved values. Evaluation is always float32.

    python -m gen_lib.study.precision          # this machine's decisions (measures what is not cached)
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Mapping

import torch

from .. import data, paths
from ..system import machine, machine_key
from ..training import adam, autocast, default_device
from . import config, models

MARGIN = 1.10  # a faster setting must win by at least 10 %: within noise, the simpler one (float32, no channels_last)
SLOW = 2.0  # a setting whose first step takes more than SLOW x float32's is not timed further (emulated bf16)


def _read() -> dict[str, Any]:
    try:
        return json.loads((paths.build_dir() / "precision.json").read_text())
    except (OSError, ValueError):
        return {}


def trainer(model: torch.nn.Module, batch: torch.Tensor, loss: Callable, bf16: bool,
             channels_last: bool) -> Callable[[], None]:
    """One training step as `training.fit` runs it (fused Adam, autocast, memory format)."""
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model, batch = model.to(batch.device, memory_format=fmt), batch.contiguous(memory_format=fmt)
    opt = adam(model, 1e-4)

    def step():
        with autocast(batch.device, bf16):
            value = loss(model, batch).float()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return step


def _time_step(step: Callable[[], None], n: int, warmup: int = 2) -> float:
    """Milliseconds per call of `step`, the mean of `n` calls after `warmup`."""
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


def _candidate(kind: str, cfg: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any], torch.Tensor, Callable, int]:
    """(cache key, section to build, its configuration, a batch, the loss, steps timed) of the model `kind` sized
    by `cfg`."""
    b, g = int(cfg.get("batch_size", 128)), torch.Generator().manual_seed(0)
    shape = data.info(cfg.get("dataset", "mnist")).shape  # the images the model is built for
    if kind == "vae":
        d = math.prod(shape)
        return f"vae {d}-512-512-2 batch {b}", "priors", {"prior": "gaussian", "dataset": cfg.get("dataset", "mnist")}, \
            (torch.rand(b, d, generator=g) > 0.5).float(), lambda m, x: m.loss(x, check=False), 20
    if kind == "flow":
        return f"flow {cfg['n_layers']}x{cfg['hidden']} batch {b}", "flow", cfg, \
            torch.rand(b, *shape, generator=g).mul(0.98).add(0.01), lambda m, x: m.loss(x), 3
    if kind == "unet":
        return f"unet c{cfg['base_channels']} m{cfg['channel_mults']} r{cfg['n_res']} batch {b}", "ddpm", cfg, \
            torch.rand(b, *shape, generator=g) * 2 - 1, lambda m, x: m.loss(x), 2
    raise ValueError(f"kind={kind!r} is unknown; choose one of vae, flow, unet")


def choose(kind: str, cfg: Mapping[str, Any], device: torch.device | str | None = None,
           log: Callable[[str], None] = print, measure: bool = True) -> dict[str, Any] | None:
    """This machine's fastest setting for the model `kind` ("vae", "flow", "unet") sized by `cfg`:
    {"bf16", "channels_last", "ms" (per setting), "machine", "measured"}, measured on first use and cached
    (`measure=False`: the cached choice or None, never a timing)."""
    key, section, build_cfg, batch, loss, n = _candidate(kind, cfg)
    mkey = machine_key()
    if (entry := _read().get(mkey, {}).get(key)) is not None or not measure:
        return entry
    batch = batch.to(torch.device(device) if device is not None else default_device())
    settings = {"fp32": (False, False), "bf16": (True, False)} | (
        {"fp32+cl": (False, True), "bf16+cl": (True, True)} if kind == "unet" else {})
    t0, ms = time.perf_counter(), {}
    for first_round in (True, False):  # alternating rounds; each setting keeps its best (the least disturbed)
        for name, (bf16, cl) in list(settings.items()):
            torch.manual_seed(0)
            step = trainer(models.build(section, build_cfg), batch, loss, bf16, cl)
            if first_round and name != "fp32" and (first := _time_step(step, 1, warmup=1)) > SLOW * ms["fp32"]:
                ms[name] = first  # far slower at its first step (emulated bf16): not timed further
                del settings[name]
                continue
            ms[name] = min(ms.get(name, float("inf")), _time_step(step, n))
    best = {p: min(v for s, v in ms.items() if s.startswith(p)) for p in ("fp32", "bf16")}
    bf16 = best["fp32"] / best["bf16"] >= MARGIN
    prefix = "bf16" if bf16 else "fp32"
    entry = {"bf16": bool(bf16), "channels_last": f"{prefix}+cl" in ms and ms[prefix] / ms[f"{prefix}+cl"] >= MARGIN,
             "ms": {k: round(v, 2) for k, v in ms.items()}, "machine": machine(),
             "measured": time.strftime("%Y-%m-%d %H:%M")}
    table = _read()  # another process may have written meanwhile
    table.setdefault(mkey, {})[key] = entry
    path = paths.build_dir() / "precision.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    log(f"precision for {key} on this machine: {describe(entry)} (measured in {time.perf_counter() - t0:.0f} s, "
        f"cached in {path})")
    return entry


def describe(entry: Mapping[str, Any]) -> str:
    """"bf16 autocast (1.78x the speed of float32 here)" or "float32 (bf16 autocast ran at 0.70x its speed here)",
    and for the U-Net the memory format with its measured ratio."""
    ms = entry["ms"]
    speed = ms["fp32"] / ms["bf16"]
    text = (f"bf16 autocast ({speed:.2f}x the speed of float32 here)" if entry["bf16"]
            else f"float32 (bf16 autocast ran at {speed:.2f}x its speed here)")
    prefix = "bf16" if entry["bf16"] else "fp32"
    if f"{prefix}+cl" in ms:
        ratio = ms[prefix] / ms[f"{prefix}+cl"]
        text += (f", channels_last ({ratio:.2f}x)" if entry["channels_last"]
                 else f", standard memory format (channels_last: {ratio:.2f}x)")
    return text


def settle(section: str, params: dict[str, Any], log: Callable[[str], None] = print,
           measure: bool = True) -> dict[str, Any]:
    """`params` with every "auto" of the section's precision keys replaced by this machine's choice (`choose`), and
    `precision` set to a sentence saying what was chosen and why (for the notebooks and the report). With
    `measure=False` an "auto" whose choice is not cached stays "auto" (nothing is timed)."""
    keys = {k: kind for k, kind in config.PRECISION_KEYS.get(section, {}).items() if k in params}
    if not keys:
        return params
    params, notes = dict(params), []
    for k, kind in keys.items():
        if params[k] == config.AUTO:
            entry = choose(kind, params, log=log, measure=measure)
            if entry is None:
                continue
            params[k], note = entry[k if k == "channels_last" else "bf16"], describe(entry)
        elif k == "channels_last":
            note = f"channels_last {'on' if params[k] else 'off'} (set by the profile)"
        else:
            note = f"{'bf16 autocast' if params[k] else 'float32'} (set by the profile)"
        if note not in notes:
            notes.append(note)
    params["precision"] = "; ".join(notes)
    return params


if __name__ == "__main__":
    from ..system import configure_threads

    configure_threads()
    for section, keys in config.PRECISION_KEYS.items():
        cfg = settle(section, config.resolve(section, "default", **dict.fromkeys(keys, config.AUTO)))
        print(f"[{section}] {cfg['precision']}")
