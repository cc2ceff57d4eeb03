"""`python -m gen_lib.report.readme`: README.md's "Results of this version" regenerated from one run's files.

The conversion of a LaTeX table to Markdown on a small literal table; then the script on a smoke run's files,
writing into a copy of the README: every number of the section is one of the run's (or a stated derivation of
one: minutes from seconds, GiB from MiB, a sum of minutes), every sentence is the text of the report's macro, and
the rest of the README is unchanged."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gen_lib.report import readme

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")


def test_a_latex_table_becomes_a_markdown_table():
    tex = r"""% written by gen_lib.report.write_table('t'); do not edit
\begin{table}[t]
\centering
\caption{Scores of \texttt{smoke}: 95\,\% intervals, N = 10{,}000.}
\label{tab:t}
\resizebox{\linewidth}{!}{\begin{tabular}{lrc}
\toprule
model & FID, bias-corr. [95 \%] & p \\
\midrule
draw x $\sim$ p(x|z) & $-$0.01 [$-$0.40, 0.17] & -- \\
\textbf{flow} & $-215.48 \pm 0.39$ & 0.446 \\
\multicolumn{2}{l}{both \& more} & 1 \\
\bottomrule
\end{tabular}}
\end{table}"""
    caption, lines = readme.table_markdown(tex)
    assert caption == "Scores of `smoke`: 95 % intervals, N = 10,000."
    assert lines == ["| model | FID, bias-corr. [95 %] | p |",
                     "| --- | ---: | :---: |",
                     "| draw x ~ p(x\\|z) | -0.01 [-0.40, 0.17] | – |",
                     "| **flow** | -215.48 ± 0.39 | 0.446 |",
                     "| both & more |  | 1 |"]


def test_pandas_to_latex_output_and_two_header_rows():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"ELBO": ["-1.50", "-2.25"], "n": [3, 4]}, index=pd.Index(["a", "b"], name="prior"))
    caption, lines = readme.table_markdown(df.to_latex())
    assert caption == ""
    assert lines[0] == "| prior | ELBO | n |" and lines[2:] == ["| a | -1.50 | 3 |", "| b | -2.25 | 4 |"]


def test_a_missing_macro_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no macro 'quality.rank'"):
        readme.sentence("By the ranking rules: {quality.rank}.", {}, "Table 3")


def test_the_plan_minutes_and_epochs_from_the_runs_json(tmp_path):
    run = tmp_path / "runs" / "flow" / "abc"
    run.mkdir(parents=True)
    (run / "provenance.json").write_text(json.dumps({"epochs": 9, "commit": "1234abc", "section": "flow"}))
    (run / "config.json").write_text(json.dumps({"bf16": True}))
    (tmp_path / "provenance-default.json").write_text(json.dumps({"runs/flow/abc": {"notebook": "02_flow",
                                                                                    "section": "flow"}}))
    (tmp_path / "timings-default.json").write_text(json.dumps({
        "02_flow": {"seconds": 252.0, "planned_seconds": 300.0, "peak_rss_mib": 2355, "hardware": "X, 2 cores"}}))
    plan = {"epochs": {"flow": 9}, "profile_epochs": {"flow": 12}, "budget": 45.0, "flags": "avx2", "machine": "X"}
    (tmp_path / "plan-default.json").write_text(json.dumps({"current": "k", "plans": {"k": plan}}))
    lines = readme.run_lines(tmp_path, "default", {"meta.hardware": "X, 2 cores; no GPU"})
    assert lines == ["- Machine: X, 2 cores; no GPU; CPU flags: avx2; precision chosen per model: flow bf16.",
                     "- Plan: budget 45 minutes; minutes taken (planned) per notebook: 02_flow 4.2 (5.0); in all 4.2 "
                     "(5.0), the PDF not included; peak memory of a notebook 2.3 GiB.",
                     "- Epochs each model trained, of the profile's where the plan could cut them: flow 9 of 12."]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One smoke run of every notebook (no PDF): its build and report folders."""
    tmp = tmp_path_factory.mktemp("readme_smoke")
    done = subprocess.run([sys.executable, "-m", "gen_lib.run", "--profile", "smoke", "--no-pdf",
                           "--build-dir", str(tmp / "build"), "--report-dir", str(tmp / "report")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "build", tmp / "report"


def _numbers(text: str) -> set[float]:
    return {float(n.replace(",", "")) for n in NUMBER.findall(text.replace("{,}", ","))}


def _json_numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [n for item in items for n in _json_numbers(item)]


def _source_numbers(build: Path, report: Path) -> set[float]:
    """The numbers of every file the script reads, and the derivations it states (minutes from seconds, GiB from
    MiB, the sums of the notebooks' minutes)."""
    texts = [p.read_text() for p in (report / "tables").glob("*.tex")]
    texts += [p.read_text() for p in [*build.glob("*.json"), *build.glob("runs/*/*/*.json")]]
    found = set().union(*map(_numbers, texts))
    for path in build.glob("*.json"):
        found |= set(_json_numbers(json.loads(path.read_text())))
    for path in build.glob("timings-*.json"):
        runs = [r for r in json.loads(path.read_text()).values() if isinstance(r, dict)]
        for key in ("seconds", "planned_seconds"):
            values = [r[key] for r in runs if key in r]
            found |= {round(s / 60, 1) for s in values} | ({round(sum(values) / 60, 1)} if values else set())
        found |= {round(r["peak_rss_mib"] / 1024, 1) for r in runs if "peak_rss_mib" in r}
    return found


@pytest.mark.slow
def test_the_results_section_is_copied_from_the_run(smoke_run, tmp_path):
    build, report = smoke_run
    copy = tmp_path / "README.md"
    shutil.copy2(ROOT / "README.md", copy)
    before = copy.read_text()
    done = subprocess.run([sys.executable, "-m", "gen_lib.report.readme", "--build-dir", str(build),
                           "--report-dir", str(report), "--readme", str(copy)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = copy.read_text()

    def split(text):
        start = text.index("\n" + readme.HEADING + "\n") + 1
        end = text.index("\n## ", start) + 1
        return text[:start], text[start:end], text[end:]

    head, section, tail = split(after)
    assert (head, tail) == split(before)[::2], "the README outside the results section changed"
    assert section.startswith(readme.HEADING + "\n") and len(section.splitlines()) <= 80
    assert not re.search(r"\\[A-Za-z]|\$", section), "LaTeX left in the section"

    # every number comes from the run's files
    missing = _numbers(section) - _source_numbers(build, report)
    assert not missing, f"numbers in the section that no file of the run holds: {sorted(missing)}"

    # each table is there, with as many rows as its .tex file
    for stem, title, _ in readme.TABLES:
        tex = (report / "tables" / f"{stem}.tex").read_text()
        rows = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0].count("\\\\")
        _, lines = readme.table_markdown(tex)
        assert len(lines) == rows + 2 and "\n".join(lines) in section, title
        assert f"**{title}.**" in section

    # every sentence is the macro's text, converted as the script converts it
    macros = {}
    for path in (report / "tables").glob("macros_*.tex"):
        for line in path.read_text().splitlines():
            m = re.match(r"\\expandafter\\def\\csname val@(.+?)\\endcsname\{(.*)\}(?:%.*)?$", line)
            if m:
                macros[m.group(1)] = m.group(2)
    keys = [k for _, _, templates in readme.TABLES for t in templates for k in re.findall(r"\{([\w.\-]+)\}", t)]
    assert keys
    for key in keys:
        text = readme.latex_text(macros[key])
        assert text[1:] in section, (key, text)  # the first letter may be capitalised

    # the run's identity and the machine
    assert f"profile `{macros['meta.profile']}`" in section and macros["meta.date"] in section
    assert readme.latex_text(macros["meta.hardware"]) in section
    assert "`lscpu`" in section and "avx512_bf16" in section
