"""Adding a prior is one `register` call: a toy fifth prior, registered from a module outside gen_lib
(named in GEN_LIB_PLUGINS), appears in Table 1, Figure 1 and the samples figure of 01_priors run in the
smoke profile with a `priors` parameter that names it, and the contract tests cover it, with no file of
the repository edited."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''"""A toy prior: a Gaussian with a learnable mean and learnable per-dimension scales."""
import math

import torch
from torch import nn
from torch.distributions import Independent, Normal

from gen_lib import priors


class ToyPrior(nn.Module):
    def __init__(self, latent_dim, scale=1.5):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), math.log(math.expm1(scale))))  # softplus -> scale

    def forward(self):
        scale = nn.functional.softplus(self.raw_scale)
        return Independent(Normal(self.loc, scale, validate_args=False), 1, validate_args=False)


priors.register("toy", ToyPrior, "Toy ({scale})", ("scale",), "a toy Gaussian with a learnable mean and scales")
'''


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "toy_prior_plugin.py").write_text(PLUGIN)
    path = os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "GEN_LIB_PLUGINS": "toy_prior_plugin"}


def _pdf_text(pdf: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(pdf).pages)


def test_the_contract_tests_cover_a_registered_prior(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "toy", "-m", "not slow",
                           "tests/test_priors.py", "tests/test_vae.py", "tests/test_registries.py"],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed >= 6, done.stdout[-2000:]  # 3 prior contracts, 1 VAE contract, 2 registry contracts


@pytest.mark.slow
def test_a_fifth_prior_reaches_table_1_and_the_figures(tmp_path):
    build, reports = tmp_path / "build", tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "gen_lib.run", "--profile", "smoke", "--only", "01_priors", "--no-pdf",
                           "--param", "priors=gaussian,mog,flow,vamp,toy", "--build-dir", str(build),
                           "--report-dir", str(reports)], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    table = (reports / "tables" / "priors_table1.tex").read_text()
    assert "Toy (1.5) &" in table and table.count(r"\\") == 6, table  # header and five priors
    assert "Toy (1.5) & -- & --" in (reports / "tables" / "priors_original.tex").read_text()  # not in the study
    for figure in ("priors_fig1", "priors_samples"):
        text = _pdf_text(reports / "figures" / f"{figure}.pdf")
        for label in ("Gaussian", "MoG (16)", "Flow (10 layers)", "VampPrior (16)", "Toy (1.5)"):
            assert label in text, (figure, label, text[:500])
    macros = (reports / "tables" / "macros_priors.tex").read_text()
    assert r"\csname val@priors.count\endcsname{5}" in macros
    assert "for Toy (1.5)" in macros and "a toy Gaussian" in macros  # the report's sentences name it
