"""Where things live. Every location can be moved by an environment variable, so
that tests (and the smoke profile) never overwrite what `make report` built."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
NOTEBOOKS = ("01_priors", "02_flow", "03_ddpm", "04_quality", "05_explore")  # the study, in the order they run
SOURCE_NOTEBOOKS = ROOT / "notebooks"


def _dir(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, default)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Datasets: `<root>/MNIST/raw/`, `<root>/FashionMNIST/raw/` (env GEN_LIB_DATA)."""
    return Path(os.environ.get("GEN_LIB_DATA", ROOT / "data")).resolve()


def build_dir() -> Path:
    """Checkpoints, cached results, samples, executed notebooks (env GEN_LIB_BUILD)."""
    return _dir("GEN_LIB_BUILD", ROOT / "build")


def report_dir() -> Path:
    """The LaTeX report and the figures/ and tables/ the notebooks write (env GEN_LIB_REPORT)."""
    return _dir("GEN_LIB_REPORT", ROOT / "report")


def figures_dir() -> Path:
    path = report_dir() / "figures"
    path.mkdir(exist_ok=True)
    return path


def tables_dir() -> Path:
    path = report_dir() / "tables"
    path.mkdir(exist_ok=True)
    return path


def samples_dir() -> Path:
    """Samples that 02_flow and 03_ddpm write and 04_quality reads."""
    path = build_dir() / "samples"
    path.mkdir(exist_ok=True)
    return path
