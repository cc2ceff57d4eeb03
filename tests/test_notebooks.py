"""The real notebooks, executed by papermill in the smoke profile through the same runner
as `make report`, and the real LaTeX report built from what they wrote."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01_priors", "02_flow", "03_ddpm", "04_quality", "05_explore")


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "gen_lib.run", *args], cwd=cwd, capture_output=True, text=True)


def test_runner_rejects_unknown_profile_and_notebook():
    bad = _run("--profile", "fast", "--no-pdf")
    assert bad.returncode != 0 and "--profile 'fast' is unknown; choose one of smoke, default, paper" in bad.stderr
    bad = _run("--profile", "smoke", "--only", "05_gan", "--no-pdf")
    assert bad.returncode != 0 and "--only '05_gan' is unknown" in bad.stderr


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    import nbformat

    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs committed"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and 'profile = "default"' in params[0].source, name
        assert code[0] is params[0], f"{name}: the parameters cell must be the first code cell"


@pytest.mark.slow
def test_smoke_profile_runs_every_notebook_and_builds_the_pdf(tmp_path):
    done = _run("--profile", "smoke", "--build-dir", str(tmp_path / "build"), "--report-dir", str(tmp_path / "report"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in NOTEBOOKS:
        assert (tmp_path / "build" / "notebooks" / f"{name}.ipynb").exists()
        html = (tmp_path / "build" / "notebooks" / f"{name}.html").read_text()
        assert "<html" in html and "Traceback" not in html
    pdf = tmp_path / "build" / "report.pdf"
    assert pdf.exists() and pdf.stat().st_size > 20_000

    from pypdf import PdfReader

    text = "\n".join(page.extract_text() for page in PdfReader(pdf).pages)
    assert "Profile smoke" in text
    assert "??" not in text, "a number, table or figure of the report was not written by the notebooks"
    figures = list((tmp_path / "report" / "figures").glob("*.pdf"))
    tables = list((tmp_path / "report" / "tables").glob("*.tex"))
    assert len(figures) >= 8 and len(tables) >= 6
