"""Test-wide settings, and the numeric path the suite runs on.

Rounding depends on the CPU's kernels, on the thread count (how reductions are split) and
on bf16 autocast; the trained fixtures depend on their seed. Every tolerance of the suite
is derived from the quantity's own error, so the numeric tests must pass on any path.
Environment variables choose the path (`tests/numeric_paths.sh` runs the suite on several):

    GEN_LIB_TEST_THREADS  torch's intra-op threads, >= 1 (default: half the cores, 1 or 2)
    GEN_LIB_TEST_BF16     1: train the trained fixtures under bf16 autocast; 0: fp32 (default)
    GEN_LIB_TEST_SEED     seed of the trained fixtures and of the randomised probes, >= 0 (default 0)

(torch's own ATEN_CPU_CAPABILITY=default|avx2|avx512 and oneDNN's ONEDNN_MAX_CPU_ISA=AVX2|...
select the kernels of another CPU on this one.)
"""

import os

import pytest
import torch

from gen_lib import system


def _env_int(name: str, default: int, allowed: str, ok) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise pytest.UsageError(f"{name}={text!r} is invalid; allowed: {allowed}")
    return value


# Two cores are shared by the notebooks' kernels and pytest: by default keep pytest to half the cores.
THREADS = _env_int("GEN_LIB_TEST_THREADS", max(1, min(2, (os.cpu_count() or 2) // 2)), "an integer >= 1",
                   lambda v: v >= 1)
BF16 = bool(_env_int("GEN_LIB_TEST_BF16", 0, "0 or 1", lambda v: v in (0, 1)))
SEED = _env_int("GEN_LIB_TEST_SEED", 0, "an integer >= 0", lambda v: v >= 0)
os.environ["GEN_LIB_THREADS"] = str(THREADS)  # for this process and the processes the tests start
system.configure_threads()  # as every gen_lib process does at its start


def pytest_report_header(config):
    return (f"numeric path: GEN_LIB_TEST_THREADS={THREADS} GEN_LIB_TEST_BF16={int(BF16)} GEN_LIB_TEST_SEED={SEED} "
            f"(torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()})")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)


@pytest.fixture(scope="session")
def seed() -> int:
    """GEN_LIB_TEST_SEED: the seed of trained fixtures and randomised probes."""
    return SEED


@pytest.fixture(scope="session")
def bf16() -> bool:
    """GEN_LIB_TEST_BF16: whether trained fixtures train under bf16 autocast."""
    return BF16


@pytest.fixture
def tmp_build(tmp_path, monkeypatch):
    """Send every output of gen_lib (build/, report/) to a temporary folder."""
    monkeypatch.setenv("GEN_LIB_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("GEN_LIB_REPORT", str(tmp_path / "report"))
    return tmp_path
