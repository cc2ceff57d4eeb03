"""What machine and which commit produced a result (for the report's meta macros, the index page and the precision
cache's key), and how many threads this process gives PyTorch (`configure_threads`, called once at the start of every
process and notebook kernel that computes)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from . import paths


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(n: int | None = None) -> int:
    """Let PyTorch use exactly `n` threads: GEN_LIB_THREADS if set, else the cores this process has.

    More threads than cores makes OpenMP threads spin against each other (many-fold slower); fewer leaves cores
    idle. Call it once at the start of a process (importing gen_lib changes nothing); returns the thread count.
    """
    if n is None:
        env = os.environ.get("GEN_LIB_THREADS", "").strip()
        if env and not env.isdigit():
            raise ValueError(f"GEN_LIB_THREADS={env!r}: expected a positive integer")
        n = int(env) if env else available_cores()
    if n < 1:
        raise ValueError(f"threads={n}: need at least 1")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def hardware() -> str:
    """CPU model and core count, and the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    else:
        text += "; no GPU"
    return text


FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def machine() -> dict:
    """What decides the speed of a precision and of a plan: CPU model and its vector/bf16/AMX flags, GPU, threads,
    torch."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return {"hardware": hardware(), "flags": " ".join(f for f in FLAGS if f in flags),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def machine_key() -> str:
    """A short hash of `machine()`: the key of every per-machine cache (precision, rates, plan)."""
    return hashlib.sha1(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:12]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=paths.ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+local changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
