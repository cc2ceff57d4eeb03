"""CONTRIBUTING.md's six recipes, each carried out on a copy of the repository: the test makes the edits the
recipe describes, counts the files they touched against the recipe's "Files touched: N", and runs the recipe's
check in the copy (its own gen_lib first on the path, the real MNIST files)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _recipe_files(title: str) -> int:
    """The "Files touched: N" of the CONTRIBUTING.md section `title`."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return int(re.search(r"Files touched: (\d+)", section).group(1))


class Copy:
    """The repository's files (tracked and not ignored) in `root`, and what was changed in it since."""

    def __init__(self, root: Path):
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.split()
        self.root, self.files = root, [f for f in listed if (ROOT / f).is_file()]
        for f in self.files:
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, root / f)

    def append(self, path: str, text: str) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((target.read_text() if target.exists() else "") + text)

    def replace(self, path: str, old: str, new: str) -> None:
        text = (self.root / path).read_text()
        assert old in text, (path, old)
        (self.root / path).write_text(text.replace(old, new, 1))

    def touched(self) -> list[str]:
        now = subprocess.run(["find", ".", "-type", "f", "-not", "-path", "*/__pycache__/*", "-not", "-path",
                              "./build/*", "-not", "-path", "./.pytest_cache/*"], cwd=self.root, capture_output=True,
                             text=True, check=True).stdout.split()
        now = {p.removeprefix("./") for p in now}
        return sorted(f for f in now if f not in self.files or (self.root / f).read_bytes() != (ROOT / f).read_bytes())

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(self.root), "GEN_LIB_DATA": str(ROOT / "data"),
               "GEN_LIB_BUILD": str(self.root / "build"), "GEN_LIB_REPORT": str(self.root / "report"), **env}
        done = subprocess.run([sys.executable, *args], cwd=self.root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return done


@pytest.fixture
def copy(tmp_path) -> Copy:
    return Copy(tmp_path / "repo")


def _passed(done) -> int:
    return int(re.search(r"(\d+) passed", done.stdout).group(1))


PRIOR = '''

class ScaledGaussianPrior(nn.Module):
    """A Gaussian with a learnable per-dimension scale (CONTRIBUTING.md's example)."""

    def __init__(self, latent_dim: int, scale: float = 1.5):
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((latent_dim,), float(scale)).log())

    def forward(self) -> Distribution:
        scale = self.log_scale.exp()
        return Independent(Normal(torch.zeros_like(scale), scale, validate_args=False), 1, validate_args=False)


register("scaled", ScaledGaussianPrior, "Scaled Gaussian ({scale})", ("scale",), "a Gaussian of learnable scale")
'''


def test_add_a_prior(copy):
    copy.append("gen_lib/priors.py", PRIOR)
    assert copy.touched() == ["gen_lib/priors.py"] and _recipe_files("Add a prior") == 1
    done = copy.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-k", "scaled",
                    "tests/test_priors.py", "tests/test_vae.py", "tests/test_registries.py")
    assert _passed(done) >= 6, done.stdout[-2000:]  # the prior's contracts, the VAE's, the registry's


SAMPLER = '''

@register_sampler("ddim_half", "DDIM (eta = 0.5)")
def ddim_half_step(x_t, eps, t, t_prev, schedule, noise, *, clip_denoised=True):
    """Song et al.'s generalized step with eta = 0.5, between DDIM (0) and the ancestral chain (1)."""
    return ddim_eta_step(x_t, eps, t, t_prev, schedule, noise, clip_denoised=clip_denoised, eta=0.5)
'''


def test_add_a_sampler(copy):
    copy.append("gen_lib/samplers.py", SAMPLER)
    assert copy.touched() == ["gen_lib/samplers.py"] and _recipe_files("Add a sampler") == 1
    done = copy.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "ddim_half", "tests/test_diffusion.py",
                    "tests/test_registries.py")
    assert _passed(done) >= 2, done.stdout[-2000:]  # the Gaussian oracle, the registry's contract


def test_add_a_dataset(copy):
    copy.append("gen_lib/data.py", '\n\nregister("mnist_again", DatasetInfo(**{**vars(INFO["mnist"]), "title": "MNIST again"}))\n')
    assert copy.touched() == ["gen_lib/data.py"] and _recipe_files("Add a dataset") == 1
    copy.run("-m", "gen_lib.data", "fetch", "mnist_again")
    done = copy.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "mnist_again", "tests/test_registries.py")
    assert _passed(done) >= 2, done.stdout[-2000:]


METRIC_CHECK = '''
import torch
from gen_lib import intervals
from gen_lib.report import quality

g = torch.Generator().manual_seed(0)
real, fake = torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g) + 0.5
v = intervals.quality_intervals_from_features(real, fake, n_boot=50)
assert v["mean_shift_low"] <= v["mean_shift"] <= v["mean_shift_high"], v
q = quality.score(real, {"shifted": fake}, n_boot=50, k=3, seed=0)
assert "mean shift [95 %]" in quality.frame(q).columns
print("ok")
'''


def test_add_a_metric(copy):
    copy.append("gen_lib/metrics.py", '''

def mean_shift_weighted(xr, wr, xf, wf, **_):
    """Distance between the feature means, per row of weights (R, N) and (R, M): the bootstrap's form."""
    return ((wr @ xr) / wr.sum(1, keepdim=True) - (wf @ xf) / wf.sum(1, keepdim=True)).norm(dim=1)


METRICS["mean_shift"] = Metric(mean_shift_weighted, (0.0, math.inf), 3, "mean shift [95 %]")
''')
    assert copy.touched() == ["gen_lib/metrics.py"] and _recipe_files("Add a metric") == 1
    assert "ok" in copy.run("-c", METRIC_CHECK).stdout


NOTEBOOK = r'''{
 "cells": [
  {"cell_type": "code", "execution_count": null, "metadata": {"tags": ["parameters"]}, "outputs": [],
   "source": ["profile = \"default\"\n", "dataset = \"mnist\""]},
  {"cell_type": "markdown", "metadata": {}, "source": ["## The test images' mean intensity (writes macros_extra.tex)"]},
  {"cell_type": "code", "execution_count": null, "metadata": {}, "outputs": [],
   "source": ["from gen_lib import data, report, system\n", "system.configure_threads()\n",
              "x, _ = data.load_mnist(\"test\", dataset=dataset)\n",
              "report.write_macros(\"extra\", {\"extra.mean\": f\"{x.mean():.4f}\"})"]}
 ],
 "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
 "nbformat": 4, "nbformat_minor": 5
}
'''


def test_add_a_notebook(copy):
    copy.append("notebooks/06_extra.ipynb", NOTEBOOK)
    copy.replace("gen_lib/paths.py", '"05_explore")', '"05_explore", "06_extra")')
    assert copy.touched() == ["gen_lib/paths.py", "notebooks/06_extra.ipynb"]
    assert _recipe_files("Add a notebook") == 2
    copy.run("-m", "gen_lib.run", "--profile", "smoke", "--only", "06_extra", "--no-pdf")
    assert "extra.mean" in (copy.root / "report" / "tables" / "macros_extra.tex").read_text()
    assert (copy.root / "build" / "notebooks" / "06_extra.html").exists()


@pytest.mark.slow
def test_add_a_profile_runs_part_2_to_its_end(copy):
    """A profile `tiny`, the smoke profile's values under a new name, runs 02-04 (04 reads 02's and 03's samples)."""
    toml = (copy.root / "gen_lib/study/profiles.toml").read_text()
    smoke = "".join(block for block in re.split(r"(?m)^(?=\[)", toml) if block.startswith("[smoke."))
    copy.append("gen_lib/study/profiles.toml", "\n" + smoke.replace("[smoke.", "[tiny."))
    copy.replace("gen_lib/study/config.py", '"paper")', '"paper", "tiny")')
    assert copy.touched() == ["gen_lib/study/config.py", "gen_lib/study/profiles.toml"]
    assert _recipe_files("Add a profile") == 2
    copy.run("-m", "gen_lib.study.config", "smoke", "tiny")
    copy.run("-m", "gen_lib.run", "--profile", "tiny", "--only", "02_flow", "--only", "03_ddpm", "--only",
             "04_quality", "--no-pdf")
    assert (copy.root / "build" / "notebooks" / "04_quality.html").exists()
    assert "val@meta.profile\\endcsname{tiny}" in (copy.root / "report" / "tables" / "macros_meta.tex").read_text()
