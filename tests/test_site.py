"""The grader's pages: a report view keeps text, tables, figures and errors and drops code, logs and
widgets; the index links every view, the PDF, and states the run."""

import base64
import json

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import torch

from gen_lib import paths, training
from gen_lib.report import site
from gen_lib.study import cache, recipes

PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                                     "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


def _executed_notebook(folder, name="01_demo", error=False):
    cells = [
        new_markdown_cell("# Part 9 — A `demo` notebook\n\nIt shows what the report view keeps. More text."),
        new_code_cell("profile = 'smoke'", metadata={"tags": ["parameters"]}),
        new_code_cell("print('training log')", outputs=[new_output("stream", name="stdout", text="training log line\n")]),
        new_code_cell("cfg", outputs=[new_output("execute_result", data={"text/plain": "{'secret_cfg': 1}"},
                                                  execution_count=3)]),
        new_code_cell("table", outputs=[new_output("execute_result", execution_count=4, data={
            "text/plain": "   a\n0  1", "text/html": "<table class=\"dataframe\"><tr><th>a</th></tr><tr><td>1</td></tr></table>"})]),
        new_code_cell("fig", outputs=[new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]),
        new_code_cell("w", outputs=[new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": "VBox(children=(widget_marker,))"})]),
    ]
    if error:
        cells.append(new_code_cell("1/0", outputs=[new_output("error", ename="ZeroDivisionError",
                                                              evalue="division by zero",
                                                              traceback=["ZeroDivisionError: division by zero"])]))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(new_notebook(cells=cells), path)
    return path


def test_report_view_keeps_text_tables_figures_and_errors_only(tmp_path):
    ipynb = _executed_notebook(tmp_path, error=True)
    page = site.write_report_view(ipynb).read_text()
    assert site.write_report_view(ipynb).name == "01_demo.report.html"
    assert "Part 9" in page and "It shows what the report view keeps" in page
    assert "<table" in page and "<td>1</td>" in page  # a real HTML table
    assert f"data:image/png;base64,{PNG}" in page  # the figure embedded
    assert "ZeroDivisionError" in page  # failures stay visible
    for gone in ("print(", "training log line", "secret_cfg", "widget_marker", "profile = "):
        assert gone not in page, gone
    assert 'href="01_demo.html"' in page and 'href="../index.html"' in page
    assert "max-width: 1100px" in page


def test_index_states_the_run_and_links_every_view(tmp_build, monkeypatch):
    folder = paths.build_dir() / "notebooks"
    _executed_notebook(folder, "01_demo")
    (folder / "01_demo.html").write_text("<html>full</html>")
    _executed_notebook(folder, "02_other", error=True)
    runs = {"01_demo": {"seconds": 90.0, "peak_rss_mib": 2048, "hardware": "Test CPU, 2 cores; no GPU"}}
    (paths.build_dir() / "timings-smoke.json").write_text(json.dumps(runs))

    # provenance: the run that trained a model, not the cached re-run that reused it
    trained = recipes.Trained(torch.nn.Linear(1, 1), training.TrainResult(status="trained", seconds=5400.0),
                              cache.run_dir("flow", {"demo": 1}), {"profile": "smoke"})
    monkeypatch.setenv("GEN_LIB_NOTEBOOK", "01_demo")
    recipes._recorded(trained, "flow", 12)
    trained.result = training.TrainResult(status="reused", seconds=2.0)
    monkeypatch.setattr(cache, "hardware", lambda: "another machine")
    recipes._recorded(trained, "flow", 12)

    page = site.write_index("smoke", "fashion", notebooks=("01_demo", "02_other")).read_text()
    assert "90.0 min" in page and "another machine" not in page  # the training run's time and machine
    assert "<td>01_demo</td>" in page
    assert page.index("01_demo") < page.index("02_other")
    for text in ("<b>smoke</b>", "Fashion-MNIST", "Test CPU, 2 cores; no GPU", "1.5 min", "2.0 GiB",
                 "Part 9 — A demo notebook", "It shows what the report view keeps.",
                 'href="notebooks/01_demo.report.html"', 'href="notebooks/01_demo.html"',
                 'href="notebooks/02_other.ipynb"', "a cell failed", "No PDF in this build"):
        assert text in page, text
    assert (folder / "02_other.report.html").exists()  # rendered when missing

    (paths.build_dir() / "report.pdf").write_bytes(b"%PDF-1.5 " + b"0" * 2000)
    page = site.write_index("smoke", runs=runs, notebooks=("01_demo",)).read_text()
    assert 'href="report.pdf"' in page and "No PDF" not in page
