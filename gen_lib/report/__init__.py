"""What the notebooks write for the LaTeX report: figures (PDF + PNG), tables (.tex)
and number macros. The report never types a number by hand: it writes `\\val{key}`,
which reads a macro that a notebook wrote here (a missing one prints `??`, which the
tests look for).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

from .. import paths
from ..data import info
from ..system import git_commit, hardware  # noqa: F401  (the report's meta macros; report.hardware for users)
from ..study import plan


# characters that pdfLaTeX's text fonts lack, in the labels the notebooks use (x ~ p(x|z), lambda(z))
_MATH_CHARACTERS = {"~": r"$\sim$", "λ": r"$\lambda$", "σ": r"$\sigma$", "ε": r"$\epsilon$", "≥": r"$\geq$",
                    "≤": r"$\leq$", "±": r"$\pm$", "→": r"$\to$"}


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters (\\ & % _ #) escaped, and the Greek letters and symbols of
    `_MATH_CHARACTERS` (which pdfLaTeX's text fonts lack) in math mode."""
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    for a, b in _MATH_CHARACTERS.items():
        text = text.replace(a, b)
    return text


def fmt(value: float, digits: int = 2) -> str:
    """A number for the text: fixed digits, a true minus sign."""
    return f"{value:.{digits}f}".replace("-", "$-$") if isinstance(value, float) else str(value)


def mean_pm(values, digits: int = 2) -> str:
    """The LaTeX "$m \\pm s$" of per-seed values: their mean and sample standard deviation (n − 1; 0 for one)."""
    import torch

    v = torch.as_tensor(list(values), dtype=torch.float64)
    std = v.std().item() if len(v) > 1 else 0.0
    return f"${v.mean().item():.{digits}f} \\pm {std:.{digits}f}$"


def with_interval(value: float, low: float, high: float, digits: int = 2) -> str:
    """An estimate and its interval for tables and text: "2.31 [2.16, 3.81]", fixed digits, true minus signs."""
    return f"{fmt(float(value), digits)} [{fmt(float(low), digits)}, {fmt(float(high), digits)}]"


def separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals (low, high) do not overlap: a difference the intervals resolve."""
    return a[1] < b[0] or b[1] < a[0]


def join_words(items: list[str]) -> str:
    """A list in running text: "a", "a and b", "a, b and c"."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")

# Every macro has a kind, declared here by key (exact, or a pattern with *: `fnmatch`), so that the report's lint
# (tests/test_report_text.py) can tell which macros decide a comparing word: a "sentence" is text computed from the
# results with a branch for each outcome (it carries its own direction words); a "number" or an "interval" is a
# value, which cannot turn a word the text types around it; a "name" is a label or a noun. A key declared nowhere
# is a "name": it never counts as deciding anything. The section writers (`numbers`) add their keys.
KINDS = ("number", "interval", "sentence", "name")
MACRO_KINDS: dict[str, str] = {
    "meta.items": "name", "meta.dataset": "name", "meta.source": "name", "meta.profile": "name",
    "meta.date": "name", "meta.commit": "name", "meta.hardware": "name", "meta.torch": "name",
    "meta.time.*": "number", "meta.trained": "sentence", "meta.plan": "sentence"}


def macro_kind(key: str) -> str:
    """The declared kind of macro `key` (`MACRO_KINDS`: the exact key first, then the first matching pattern);
    "name" for a key declared nowhere."""
    import fnmatch

    if key in MACRO_KINDS:
        return MACRO_KINDS[key]
    return next((kind for pattern, kind in MACRO_KINDS.items() if "*" in pattern and fnmatch.fnmatchcase(key, pattern)),
                "name")


def declare_kinds(kinds: dict[str, str]) -> None:
    """Add {key or pattern: kind} to `MACRO_KINDS` (a section's writer declares its macros once, at import)."""
    bad = {k: v for k, v in kinds.items() if v not in KINDS}
    if bad:
        raise ValueError(f"unknown macro kinds {bad}; the kinds are {KINDS}")
    MACRO_KINDS.update(kinds)


def write_macros(name: str, values: dict[str, Any]) -> Path:
    """Write `report/tables/macros_<name>.tex`: one `\\val{key}` per entry (already formatted strings), each line
    ending in a comment with the macro's declared kind (`macro_kind`), which the report's lint reads too."""
    lines = [f"% written by gen_lib.report.write_macros({name!r}); do not edit"]
    for key, value in values.items():
        value = _THOUSANDS.sub("{,}", str(value))  # "10,000" -> "10{,}000": no space after the comma in math mode
        lines.append(f"\\expandafter\\def\\csname val@{key}\\endcsname{{{value}}}% {macro_kind(key)}")
    path = paths.tables_dir() / f"macros_{name}.tex"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_table(name: str, body: str) -> Path:
    """Write a LaTeX table body (tabular or table environment) to `report/tables/<name>.tex`."""
    path = paths.tables_dir() / f"{name}.tex"
    path.write_text(f"% written by gen_lib.report.write_table({name!r}); do not edit\n{body}\n")
    return path


def dataframe_table(df, name: str, caption: str, label: str, column_format: str | None = None,
                    fit_width: bool = False) -> Path:
    """A pandas DataFrame (cells already formatted as strings) as a booktabs table; `fit_width` scales a wide
    one to the text width."""
    cols = column_format or ("l" + "r" * (len(df.columns)))
    header = " & ".join([latex_escape(str(df.index.name or ""))] + [latex_escape(str(c)) for c in df.columns])
    rows = [" & ".join([latex_escape(str(i))] + [str(v) for v in row]) + r" \\" for i, row in zip(df.index, df.values)]
    body = "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
                      r"\small", (r"\resizebox{\linewidth}{!}{" if fit_width else "") + rf"\begin{{tabular}}{{{cols}}}",
                      r"\toprule", header + r" \\", r"\midrule", *rows, r"\bottomrule",
                      r"\end{tabular}" + ("}" if fit_width else ""), r"\end{table}"])
    return write_table(name, body)


def remove_outputs(name: str) -> None:
    """Delete the table and figure files `name` of an earlier run, so that a run that does not make them
    leaves nothing stale for the report."""
    for stale in (paths.tables_dir() / f"{name}.tex", *paths.figures_dir().glob(f"{name}.*")):
        stale.unlink(missing_ok=True)


def save_figure(fig, name: str, dpi: int = 150) -> Path:
    """Save a matplotlib figure as `report/figures/<name>.pdf` and `.png`."""
    folder = paths.figures_dir()
    fig.savefig(folder / f"{name}.pdf", bbox_inches="tight")
    fig.savefig(folder / f"{name}.png", bbox_inches="tight", dpi=dpi)
    return folder / f"{name}.pdf"


def write_meta(profile: str, timings: dict[str, float] | None = None, dataset: str = "mnist") -> Path:
    """`report/tables/macros_meta.tex`: profile, date, commit, hardware, torch version, run times."""
    import torch


    ds = info(dataset)
    values = {"meta.profile": profile, "meta.dataset": ds.title, "meta.items": ds.items,
              "meta.source": latex_escape(ds.source), "meta.date": _dt.date.today().isoformat(),
              "meta.commit": latex_escape(git_commit()), "meta.hardware": latex_escape(hardware()),
              "meta.torch": latex_escape(torch.__version__)}
    for nb, seconds in (timings or {}).items():
        values[f"meta.time.{nb}"] = f"{seconds / 60:.1f}"
    values["meta.trained"] = trained_sentence(profile)
    values["meta.plan"] = plan_sentence(profile)
    return write_macros("meta", values)


def plan_sentence(profile: str) -> str:
    """The plan this run followed (`gen_lib.study.plan`): why each model got its epochs, and the minutes planned
    against those taken per notebook (`build/timings-<profile>.json`, where the runner records both)."""
    current = plan.current(profile)
    if current is None:
        return "this profile has no plan (its epochs are the profile's, and no minutes were planned)"
    epochs = join_words([f"{run.replace('_', ' ')} {e} of {current['profile_epochs'][run]}"
                         for run, e in current["epochs"].items()])
    timings = paths.build_dir() / f"timings-{profile}.json"
    runs = json.loads(timings.read_text()) if timings.exists() else {}
    against = join_words([f"{latex_escape(nb)} {run['planned_seconds'] / 60:.1f} against {run['seconds'] / 60:.1f}"
                          for nb, run in runs.items() if isinstance(run, dict) and "planned_seconds" in run])
    return (f"{latex_escape(current['why'])}; epochs trained against the profile's: {epochs}"
            + (f"; minutes planned against taken: {against}" if against else ""))


def trained_sentence(profile: str) -> str:
    """Who trained the models the profile's notebooks used, from the provenance the training runs recorded
    (`study.cache.record_training`): per notebook the training minutes, machines and the last finish."""
    index = paths.build_dir() / f"provenance-{profile}.json"
    uses = json.loads(index.read_text()) if index.exists() else {}
    by_notebook: dict[str, list[dict]] = {}
    for folder, use in uses.items():
        path = paths.build_dir() / folder / "provenance.json"
        if path.exists():
            by_notebook.setdefault(use.get("notebook") or "a session outside the runner", []).append(
                json.loads(path.read_text()))
    if not by_notebook:
        return "no training run is recorded for this profile"
    parts = []
    for nb, entries in sorted(by_notebook.items()):
        machines = sorted({e["machine"] for e in entries})
        parts.append(f"the {len(entries)} model{'s' if len(entries) > 1 else ''} of {latex_escape(nb)} trained "
                     f"for {sum(e['train_seconds'] for e in entries) / 60:.1f} minutes on "
                     f"{latex_escape(' and '.join(machines))}, finished {max(e['finished'] for e in entries)}")
    return join_words(parts)
