"""The real notebooks, executed by papermill in the smoke profile through the same runner
as `make report`, and the real LaTeX report built from what they wrote."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01_priors", "02_flow", "03_ddpm", "04_quality", "05_explore")


def _run(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "gen_lib.run", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _pdf_text(pdf: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(pdf).pages)


def _check_outputs(tmp_path: Path, done) -> str:
    """Every notebook executed without error and rendered; the PDF exists with every number; returns its text."""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in NOTEBOOKS:
        assert (tmp_path / "build" / "notebooks" / f"{name}.ipynb").exists()
        html = (tmp_path / "build" / "notebooks" / f"{name}.html").read_text()
        assert "<html" in html and "Traceback" not in html
    pdf = tmp_path / "build" / "report.pdf"
    assert pdf.exists() and pdf.stat().st_size > 20_000
    text = _pdf_text(pdf)
    assert "??" not in text, "a number, table or figure of the report was not written by the notebooks"
    return text


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


def _fid_cell(table: str, row: str, column: int = 1) -> float:
    """The number in `column` of the one table row whose name starts with `row`."""
    (line,) = [line for line in table.splitlines() if line.startswith(row) and "&" in line]
    return float(line.split("&")[column].strip())


def _check_fid_cells(tmp_path, monkeypatch):
    import torch

    from gen_lib import data, features
    from gen_lib.study import cache, config, trained
    from test_metrics import _fid_scipy

    monkeypatch.setenv("GEN_LIB_BUILD", str(tmp_path / "build"))
    phi = trained.load_classifier("mnist", "smoke").features
    held_x, _ = data.load_mnist("held_out")
    test_x, _ = data.load_mnist("test")
    tables = tmp_path / "report" / "tables"

    def check(table, row, ref, images, column=1):  # the cell has 2 decimals: within half a unit of the last one
        expected = _fid_scipy(features.extract(phi, ref).double(), features.extract(phi, images).double())
        assert abs(_fid_cell(table, row, column) - expected) <= 0.005 + 1e-6 * expected, (row, expected, table)

    q = config.resolve("quality", "smoke")  # 04_quality: random test and held-out images, one generator
    gen = torch.Generator().manual_seed(q["seed"])
    test_idx, held_idx = torch.randperm(len(test_x), generator=gen), torch.randperm(len(held_x), generator=gen)
    table2, n = (tables / "quality_table2.tex").read_text(), q["n_eval"]
    check(table2, "real", test_x[test_idx[:n]], held_x[held_idx[:n]])
    check(table2, "RealNVP flow", test_x[test_idx[:n]], cache.load_samples("flow", "smoke")["images"][:n])
    d = config.resolve("ddpm", "smoke")  # 03_ddpm: random test and held-out images, one generator; DDIM's samples
    table, n = (tables / "ddpm_fid_steps.tex").read_text(), d["fid_n"]
    gen = torch.Generator().manual_seed(d["seed"])
    ref = test_x[torch.randperm(len(test_x), generator=gen)[:n]]
    held = held_x[torch.randperm(len(held_x), generator=gen)[:n]]
    check(table, "real data", ref, held, column=2)  # after "ms per sample"
    steps = int(d["compare_steps"].split(",")[0])
    (samples,) = (tmp_path / "build" / "runs" / "ddpm").glob(f"*/fid_ddim{steps}_{n}.pt")
    check(table, f"DDIM-{steps}", ref, torch.load(samples)["images"], column=2)


@pytest.mark.slow
def test_smoke_profile_runs_every_notebook_and_builds_the_pdf(tmp_path, monkeypatch):
    done = _run("--profile", "smoke", "--build-dir", str(tmp_path / "build"), "--report-dir", str(tmp_path / "report"))
    text = _check_outputs(tmp_path, done)
    assert "Profile smoke" in text and "MNIST" in text
    figures = list((tmp_path / "report" / "figures").glob("*.pdf"))
    tables = list((tmp_path / "report" / "tables").glob("*.tex"))
    assert len(figures) >= 8 and len(tables) >= 6
    names = {f.stem for f in figures} | {t.stem for t in tables}
    # Part 2 on one scale: Table 3, the extended Table 2 with intervals, FID against sampling steps
    assert {"quality_table3", "quality_table2", "ddpm_fid_steps"} <= names
    table2 = (tmp_path / "report" / "tables" / "quality_table2.tex").read_text()
    assert r"draw x $\sim$ p(x|z)" in table2 and r"parameter $\lambda$(z)" in table2 and "[" in table2  # three VAE rows, intervals
    assert "Likelihoods of the three models: exact, estimated and near-exact values beside bounds" in " ".join(text.split())
    # Table 3: the five estimates, and the numbers are those of the per-image results the notebook cached
    import torch

    table3 = (tmp_path / "report" / "tables" / "quality_table3.tex").read_text()
    for method in ("change of variables", "Heun on", "Ho et al.'s bound", "quadrature", "IWAE"):
        assert method in table3, method
    for model, name in (("flow", "flow"), ("ddpm", "ode8"), ("ddpm", "bound4"), ("quality_vae", "quad16"),
                        ("quality_vae", "iwae20")):  # the smoke profile's ode_steps, nll_t, quadrature_grid, nll_k
        (result,) = (tmp_path / "build" / "runs" / model).glob(f"*/table3_{name}_[0-9]*_b*.pt")
        assert f"{torch.load(result).double().mean():.3f} $\\pm$" in table3, (result, table3)
    # Table 2 and the DDPM's FID-against-steps table: raw FID of a model row and of the floor, recomputed here from
    # the cached samples and classifier by scipy's matrix square root (test_metrics._fid_scipy)
    _check_fid_cells(tmp_path, monkeypatch)
    # Table 1: each prior's mean test ELBO and IWAE over seeds, as the per-image results the notebook cached
    table1 = (tmp_path / "report" / "tables" / "priors_table1.tex").read_text()
    by_prior = {}
    for folder in (tmp_path / "build" / "runs" / "priors").iterdir():
        (result,) = folder.glob("eval_*.pt")
        by_prior.setdefault(json.loads((folder / "config.json").read_text())["prior"], []).append(torch.load(result))
    assert len(by_prior) == 4, by_prior.keys()
    for runs in by_prior.values():
        for key in ("elbo", "iwae"):
            values = torch.tensor([r[key].mean().item() for r in runs], dtype=torch.float64)  # as 01_priors does
            assert f"${values.mean():.2f} \\pm {values.std():.2f}$" in table1, (key, values, table1)
    # logs a person can read: one line per epoch, no progress-bar redraws, each notebook's start and end
    log = done.stdout + done.stderr
    assert "it/s]" not in log and "%|" not in log, "tqdm bars were drawn into the log"
    assert re.search(r"flow epoch 1/1: train_loss [-\d.]+, test_bpd [\d.]+.*; \d+ s", log), log[-3000:]
    for name in NOTEBOOKS:
        assert f"start {name} " in log and re.search(rf"end {name} in [\d.]+ min", log)
    assert len(re.findall(r"flow epoch 1/1:", log)) == 1, "each line is printed once"


@pytest.mark.slow
def test_fashion_mnist_runs_every_notebook_and_names_its_dataset(tmp_path):
    from gen_lib import data

    try:
        data.verify(dataset="fashion")
    except data.DataError as err:
        pytest.skip(f"Fashion-MNIST is not installed ({err}); `make test` installs it")
    done = _run("--profile", "smoke", "--dataset", "fashion", "--build-dir", str(tmp_path / "build"),
                "--report-dir", str(tmp_path / "report"))
    text = re.sub(r"-\s*\n\s*", "-", _check_outputs(tmp_path, done))  # words hyphenated at line ends
    assert "Fashion-MNIST" in text
    stray = [text[max(0, m.start() - 60):m.end() + 20] for m in re.finditer("MNIST", text.replace("Fashion-MNIST", ""))]
    assert not stray, f"the Fashion report speaks of MNIST: {stray}"
    digits = [text[max(0, m.start() - 60):m.end() + 20] for m in re.finditer("digit", text, re.I)]
    assert not digits, f"the Fashion report speaks of digits: {digits}"
    for name in NOTEBOOKS:
        html = (tmp_path / "build" / "notebooks" / f"{name}.html").read_text()
        assert "dataset: Fashion-MNIST" in html


# The paper profile's switches (IWAE K = 5000, 1000-step ancestral sampling in several batches, FID by step
# count, the paper U-Net with n_res = 2, dropout and channels_last, fp32 flow) at tiny sizes.
PAPER_TINY = """
[paper.priors]
seeds = 2
epochs = 1
train_subset = 512
test_subset = 32
quadrature_subset = 4

[paper.flow]
epochs = 1
train_subset = 256
eval_subset = 64
test_subset = 64
n_samples = 64

[paper.ddpm]
epochs = 1
train_subset = 128
base_channels = 8
n_samples = 32
sample_batch = 16
compare_n = 4
compare_ancestral = 2
fid_n = 32
n_boot = 20

[paper.quality_vae]
epochs = 1
train_subset = 512

[paper.classifier]
epochs = 1
train_subset = 512
feature_dim = 16

[paper.quality]
n_eval = 32
fid_curve_max = 64
n_boot = 20
nll_n = 16
nll_t = 4
nll_k = 20
ode_steps = 4
check_n = 8
quadrature_grid = 16
"""


@pytest.mark.slow
def test_paper_profile_code_paths_at_tiny_sizes(tmp_path):
    from gen_lib.study import config

    tiny = tmp_path / "paper_tiny.toml"
    tiny.write_text(PAPER_TINY)
    env = {"GEN_LIB_PROFILE_OVERRIDES": str(tiny)}
    os.environ.update(env)  # so that config.resolve below sees what the notebooks see
    try:
        ddpm, priors = config.resolve("ddpm", "paper"), config.resolve("priors", "paper")
    finally:
        del os.environ["GEN_LIB_PROFILE_OVERRIDES"]
    # the branches only `paper` reaches are still switched on
    assert ddpm["fid_n"] > 0 and ddpm["sample_method"] == "ancestral" and ddpm["sample_steps"] == ddpm["T"]
    assert ddpm["n_samples"] > ddpm["sample_batch"] and ddpm["n_res"] == 2 and ddpm["dropout"] > 0
    assert ddpm["channels_last"] and priors["iwae_k"] == 5000
    # through the chunk runner a GPU lease needs (gen_lib.chunks): a first chunk far shorter than the whole run
    # (minutes here), so that it must stop and resume, then chunks long enough that no single step of a slower
    # machine can starve one (a limit tuned to this machine's step times would be a flaky test elsewhere)
    chunks = []
    for i in range(20):
        done = subprocess.run([sys.executable, "-m", "gen_lib.chunks", "--profile", "paper",
                               "--limit", "45" if i == 0 else "600",
                               "--build-dir", str(tmp_path / "build"), "--report-dir", str(tmp_path / "report")],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
        chunks.append(done.returncode)
        if done.returncode != 75:  # 75: not finished, call again
            break
    assert chunks[-1] == 0 and len(chunks) >= 2 and set(chunks[:-1]) == {75}, (chunks, done.stdout[-3000:])
    state = json.loads((tmp_path / "build" / "chunks-paper-mnist.json").read_text())
    assert state["done"] == list(NOTEBOOKS) and state["chunks"] == len(chunks)
    text = _check_outputs(tmp_path, done)
    assert "Profile paper" in text
    assert "DDIM-10" in (tmp_path / "build" / "notebooks" / "03_ddpm.html").read_text()  # FID by step count ran
