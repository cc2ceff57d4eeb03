"""Adding a sampler or a dataset is one file (CONTRIBUTING.md): each registered from a module outside gen_lib
(named in GEN_LIB_PLUGINS) reaches the contract tests and the pipeline with no file of the repository edited:
the sampler draws 03_ddpm's samples for 04_quality when a run names it; the dataset is fetched and verified by
the command `make test` runs (`python -m gen_lib.data fetch --all`), and the runner accepts it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''"""A sampler and a dataset from outside gen_lib."""
import dataclasses

from gen_lib import data, samplers


@samplers.register_sampler("ddim_half", "DDIM (eta = 0.5)")
def ddim_half_step(x_t, eps, t, t_prev, schedule, noise, *, clip_denoised=True):
    """Song et al.'s generalized step with eta = 0.5: between DDIM (0) and the ancestral chain (1)."""
    return samplers.ddim_eta_step(x_t, eps, t, t_prev, schedule, noise, clip_denoised=clip_denoised, eta=0.5)


# the same four MNIST files under another name (a real dataset, fetched and verified like MNIST)
data.register("mnist_again", dataclasses.replace(data.info("mnist"), title="MNIST again"))
'''


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "more_plugins.py").write_text(PLUGIN)
    path = os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "GEN_LIB_PLUGINS": "more_plugins"}


def test_the_contract_tests_cover_a_registered_sampler_and_dataset(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                           "ddim_half or mnist_again", "tests/test_registries.py"],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert int(re.search(r"(\d+) passed", done.stdout).group(1)) >= 2, done.stdout[-2000:]  # a sampler, a dataset


def test_make_tests_data_command_fetches_and_verifies_a_registered_dataset(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gen_lib.data", "fetch", "--all"], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "MNIST again:" in done.stdout and "Fashion-MNIST:" in done.stdout
    runner = subprocess.run([sys.executable, "-m", "gen_lib.run", "--profile", "smoke", "--dataset", "mnist_again",
                             "--only", "nosuch"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    assert "--only 'nosuch' is unknown" in runner.stderr and "--dataset 'mnist_again'" not in runner.stderr  # passed


@pytest.mark.slow
def test_a_registered_sampler_draws_the_samples_of_03_ddpm(tmp_path):
    build, reports = tmp_path / "build", tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "gen_lib.run", "--profile", "smoke", "--only", "03_ddpm", "--no-pdf",
                           "--param", "sample_method=ddim_half", "--build-dir", str(build), "--report-dir", str(reports)],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    samples = torch.load(build / "samples" / "ddpm_smoke_mnist.pt", weights_only=True)
    assert samples["method"] == "ddim_half"
    assert "DDIM (eta = 0.5)" in (reports / "tables" / "macros_ddpm.tex").read_text()
