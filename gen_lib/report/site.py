"""The grader's view of a run: `build/index.html` and a report view of every executed notebook.

`make report` executes the notebooks into `build/notebooks/<name>.ipynb` and renders each to
`<name>.html` (the full view: code, logs and outputs). Beside it, `write_report_view` writes
`<name>.report.html`, the report view: no code cells (nbconvert's `exclude_input`), no logs, only
headings, text, tables (HTML tables) and figures (embedded PNGs); error outputs stay visible.
`write_index` then writes `build/index.html`: the run's profile, dataset, date, commit, hardware and
per-notebook times (`build/timings-<profile>.json`), a link to the PDF, and for each notebook its
report view beside its full view. Every page is a single self-contained file that reads well at
1280 px (the text column is capped, tables and figures fit the width); math is typeset by MathJax
from its CDN, as in nbconvert's own pages.

    python -m gen_lib.report.site [--profile smoke] [--dataset mnist]   # rebuild the pages of an existing build
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from pathlib import Path
from typing import Any

from .. import paths, report
from ..study import plan
from ..data import info

REPORT_SUFFIX = ".report.html"
KEPT_MIMETYPES = ("image/png", "image/jpeg", "image/svg+xml", "text/html", "text/markdown", "text/latex")
WIDGET_MIMETYPE = "application/vnd.jupyter.widget-view+json"

# The text column of a report view, capped for reading; figures and tables fit in it.
_REPORT_CSS = """
<style>
  body.jp-Notebook { max-width: 1100px; margin: 0 auto; padding: 0 24px 48px; }
  .jp-OutputArea-output img { max-width: 100%; height: auto; }
  .jp-RenderedHTMLCommon table { margin: 0.5em 0 1em; font-size: 0.95em; }
  .jp-OutputArea-output { overflow-x: auto; }
  nav.gen-lib { position: sticky; top: 0; z-index: 10; background: #f6f8fa; border-bottom: 1px solid #d0d7de;
                padding: 8px 0; margin-bottom: 12px; font: 14px/1.4 system-ui, sans-serif; }
  nav.gen-lib a { margin-right: 1.2em; }
</style>
"""

_INDEX_CSS = """
  body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 0; }
  main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
  h1 { font-size: 1.8em; margin: 0.2em 0 0.1em; }
  p.sub { color: #59636e; margin-top: 0; }
  table { border-collapse: collapse; width: 100%; margin: 1em 0 1.5em; }
  th, td { text-align: left; padding: 8px 10px; border-bottom: 1px solid #d0d7de; vertical-align: top; }
  th { background: #f6f8fa; font-weight: 600; }
  td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
  table.meta { width: auto; min-width: 60%; }
  table.meta th, table.meta td { padding: 4px 14px 4px 0; background: none; }
  table.meta th { width: 8em; color: #59636e; font-weight: 500; }
  .pdf { display: inline-block; padding: 10px 16px; background: #0969da; color: #fff; border-radius: 6px;
         text-decoration: none; font-weight: 600; }
  .missing { color: #9a6700; }
  .failed { color: #cf222e; font-weight: 600; }
  .views a { display: inline-block; margin-right: 0.8em; white-space: nowrap; }
  small { color: #59636e; }
"""


def _kept_output(output: dict[str, Any]) -> bool:
    """Report view: keep figures, HTML tables, rich text and errors; drop logs, plain-text reprs and widgets."""
    if output.get("output_type") == "error":
        return True
    if output.get("output_type") not in ("display_data", "execute_result"):
        return False  # stream: stdout/stderr logs
    data = output.get("data", {})
    return WIDGET_MIMETYPE not in data and any(m in data for m in KEPT_MIMETYPES)


def report_notebook(nb):
    """A copy of notebook `nb` for the report view: markdown cells, and code cells reduced to their kept outputs
    (cells left without output are dropped)."""
    import copy

    out = copy.deepcopy(nb)
    cells = []
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if _kept_output(o)]
            if not cell.outputs:
                continue
        if cell.cell_type in ("markdown", "code"):
            cells.append(cell)
    out.cells = cells
    out.metadata.pop("widgets", None)  # no widget state: nothing to load from a CDN
    return out


def _nav(links: list[tuple[str, str]]) -> str:
    return '<nav class="gen-lib">' + "".join(f'<a href="{html.escape(h)}">{html.escape(t)}</a>' for t, h in links) \
        + "</nav>"


def write_report_view(ipynb: str | Path) -> Path:
    """Render executed notebook `ipynb` without its code into `<name>.report.html` beside it; returns that path."""
    import nbformat
    from nbconvert import HTMLExporter

    ipynb = Path(ipynb)
    name = ipynb.stem
    nb = report_notebook(nbformat.read(ipynb, as_version=4))
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"{name} (report view)"}})
    nav = _nav([("← index", "../index.html"), (f"{name}: full view with code", f"{name}.html"),
                ("notebook (.ipynb)", f"{name}.ipynb")])
    body = body.replace("</head>", _REPORT_CSS + "</head>", 1)
    start = body.index(">", body.index("<body")) + 1  # right after the <body ...> tag
    body = body[:start] + "\n" + nav + body[start:]
    path = ipynb.with_name(name + REPORT_SUFFIX)
    path.write_text(body, encoding="utf-8")
    return path


def _summary(ipynb: Path) -> dict[str, Any]:
    """Title (first heading), first sentence of the introduction, and whether a cell failed."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    title, intro = ipynb.stem, ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = [line.strip() for line in cell.source.splitlines()]
            heads = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
            text = " ".join(line for line in lines if line and not line.startswith("#"))
            text = re.sub(r"[*`$]|\\(?=[a-zA-Z])", "", text)  # plain text: no emphasis, code or math markers
            if heads and title == ipynb.stem:
                title = re.sub(r"[*`$]|\\(?=[a-zA-Z])", "", heads[0])  # as text, like the introduction
            if text and not intro:
                intro = re.split(r"(?<=[.?!])\s", text, maxsplit=1)[0]  # the first sentence, at most ~180 chars
                intro = intro if len(intro) <= 180 else intro[:180].rsplit(" ", 1)[0] + " …"
            if title != ipynb.stem and intro:
                break
    failed = any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return {"title": title, "intro": intro, "failed": failed,
            "executed": _dt.datetime.fromtimestamp(ipynb.stat().st_mtime).strftime("%Y-%m-%d %H:%M")}


def _trained_rows(profile: str) -> list[str]:
    """One table row per trained model the profile's notebooks used (`build/provenance-<profile>.json`), from the
    `provenance.json` that the run which trained it wrote beside its checkpoint."""
    build = paths.build_dir()
    index = build / f"provenance-{profile}.json"
    uses = json.loads(index.read_text()) if index.exists() else {}
    wanted = (plan.current(profile) or {}).get("profile_epochs", {})
    rows = []
    for folder, use in sorted(uses.items(), key=lambda kv: (kv[1].get("notebook", ""), kv[0])):
        path = build / folder / "provenance.json"
        if not path.exists():
            continue
        p = json.loads(path.read_text())
        of = f" of {wanted[p['section']]}" if p["section"] in wanted else ""
        segments = "<br>".join(f"{s['status']} to epoch {s['epochs']}: {s['seconds'] / 60:.1f} min, {s['finished']}"
                               for s in p.get("segments", [])[-3:]) if len(p.get("segments", [])) > 1 else ""
        rows.append(f"<tr><td>{html.escape(p['section'])} <small><code>{html.escape(folder)}</code></small></td>"
                    f"<td>{html.escape(use.get('notebook', ''))}</td><td class=\"num\">{p['epochs']}{of}"
                    f"{'<br><small>' + html.escape(segments) + '</small>' if segments else ''}</td>"
                    f"<td class=\"num\">{p['train_seconds'] / 60:.1f} min</td><td><small>{html.escape(p['machine'])}"
                    f"</small></td><td class=\"num\"><small>{html.escape(p['finished'])}</small></td></tr>")
    return rows


def write_index(profile: str, dataset: str = "mnist", runs: dict[str, dict[str, Any]] | None = None,
                notebooks: tuple[str, ...] | None = None) -> Path:
    """Write `build/index.html` for the executed notebooks in `build/notebooks/`.

    `runs` maps notebook names to what `gen_lib.run` records in `build/timings-<profile>.json`
    (`seconds`, `peak_rss_mib`, `hardware`); by default that file is read. `notebooks` fixes the order
    (default: the runner's list, then any other executed notebook). Missing report views are rendered here.
    """

    build = paths.build_dir()
    if runs is None:
        timings = build / f"timings-{profile}.json"
        runs = json.loads(timings.read_text()) if timings.exists() else {}
    if notebooks is None:
        notebooks = paths.NOTEBOOKS
    folder = build / "notebooks"
    executed = sorted(folder.glob("*.ipynb")) if folder.exists() else []
    order = [n for n in notebooks if (folder / f"{n}.ipynb").exists()]
    order += [p.stem for p in executed if p.stem not in order]

    rows = []
    for name in order:
        ipynb = folder / f"{name}.ipynb"
        if not (folder / f"{name}{REPORT_SUFFIX}").exists() or \
                (folder / f"{name}{REPORT_SUFFIX}").stat().st_mtime < ipynb.stat().st_mtime:
            write_report_view(ipynb)
        s = _summary(ipynb)
        run = runs.get(name, {})
        seconds = run.get("seconds")
        rss, planned = run.get("peak_rss_mib"), run.get("planned_seconds")
        full = f'<a href="notebooks/{name}.html">full view, with code</a>' if (folder / f"{name}.html").exists() \
            else '<span class="missing">no full view</span>'
        status = ' <span class="failed">(a cell failed)</span>' if s["failed"] else ""
        rows.append(
            f"<tr><td><b>{html.escape(s['title'])}</b>{status}<br><small>{html.escape(s['intro'])}</small></td>"
            f'<td class="views"><a href="notebooks/{name}{REPORT_SUFFIX}"><b>report view</b></a>{full}'
            f'<a href="notebooks/{name}.ipynb">.ipynb</a></td>'
            f'<td class="num">{f"{seconds / 60:.1f} min" if seconds is not None else "–"}</td>'
            f'<td class="num">{f"{planned / 60:.1f} min" if planned is not None else "–"}</td>'
            f'<td class="num">{f"{rss / 1024:.1f} GiB" if rss else "–"}</td>'
            f'<td class="num"><small>{s["executed"]}</small></td></tr>')
    total = sum(runs[n]["seconds"] for n in order if "seconds" in runs.get(n, {}))
    hardware = sorted({run["hardware"] for run in runs.values() if isinstance(run, dict) and run.get("hardware")})

    trained = _trained_rows(profile)
    pdf = build / "report.pdf"
    pdf_link = (f'<a class="pdf" href="report.pdf">The report (PDF, {pdf.stat().st_size / 1e6:.1f} MB)</a>'
                if pdf.exists() else '<p class="missing">No PDF in this build (the runner ran with --no-pdf or LaTeX '
                                     'failed); run <code>make report</code>.</p>')
    import torch

    meta = [("Profile", f"<b>{html.escape(profile)}</b>"),
            ("Dataset", html.escape(info(dataset).title)),
            ("Date", _dt.datetime.now().strftime("%Y-%m-%d %H:%M")),
            ("Commit", f"<code>{html.escape(report.git_commit())}</code>"),
            ("Hardware", "<br>".join(html.escape(h) for h in (hardware or [report.hardware()]))),
            ("Software", f"torch {html.escape(torch.__version__)}"),
            ("Run time", f"{total / 60:.1f} min for the notebooks listed below" if total else "–"),
            ("Plan", html.escape(current["why"]) if (current := plan.current(profile)) else "none (no budget, no plan)")]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Deep generative models on {html.escape(info(dataset).title)}: {html.escape(profile)} run</title>
<style>{_INDEX_CSS}</style></head>
<body><main>
<h1>Deep generative models on {html.escape(info(dataset).title)}</h1>
<p class="sub">VAE priors, a RealNVP flow and a DDPM: the study re-run by <code>make report</code>.
Each notebook has a <em>report view</em> (headings, text, tables and figures) and a <em>full view</em> (with the code
and its logs).</p>
<p>{pdf_link}</p>
<table class="meta">{"".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in meta)}</table>
<h2>Notebooks</h2>
<table class="notebooks">
<thead><tr><th>notebook</th><th>views</th><th>time</th><th>planned</th><th>peak memory</th><th>executed</th></tr></thead>
<tbody>
{chr(10).join(rows) if rows else '<tr><td colspan="6" class="missing">no executed notebooks in this build</td></tr>'}
</tbody></table>
<p><small>Times: wall clock of each notebook's last papermill run, models reused from the cache where they were already
trained (<code>build/runs/</code>); peak memory: the notebook kernel's peak resident set. Which run trained each model
is in the next table.</small></p>
<h2>Trained models</h2>
<table class="notebooks">
<thead><tr><th>model</th><th>used by</th><th>epochs</th><th>training time</th><th>machine</th><th>finished</th></tr></thead>
<tbody>
{chr(10).join(trained) if trained else '<tr><td colspan="6" class="missing">no trained models recorded for this profile</td></tr>'}
</tbody></table>
<p><small>As recorded by the run that trained (or last resumed) each model, whatever run reused it since.</small></p>
</main></body></html>
"""
    path = build / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gen_lib.report.site", description="Rebuild build/index.html")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args(argv)
    print(write_index(args.profile, args.dataset))


if __name__ == "__main__":
    main()
