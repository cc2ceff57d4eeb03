"""README.md's section "## Results of this version", regenerated from one run's files alone.

    python -m gen_lib.report.readme [--build-dir build] [--report-dir report] [--readme README.md]

Every number is copied from what the run wrote: the tables (`report/tables/<name>.tex`, LaTeX tabulars converted
to Markdown), the comparing sentences (the report's `\\val{key}` macros, `report/tables/macros_*.tex`), and the
machine, plan, minutes and epochs (`build/timings-<profile>.json`, `build/plan-<profile>.json`,
`build/precision.json`, `build/provenance-<profile>.json` and each trained run's `provenance.json` and
`config.json`). Nothing is typed by hand, so the README cannot drift from a run. The section runs from its heading
to the next "## " heading; the rest of the README is left as it is. Nothing in gen_lib imports this module.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

HEADING = "## Results of this version"

# The tables, in order: (file stem in report/tables, title, the sentences after it). A sentence is a template in
# which {key} is the text of the report's macro \val{key} (the glue words are the report's own, from
# report/sections/*.tex). A key that no macros file holds is an error naming it: update it here when the report's
# macros are renamed.
TABLES = (
    ("priors_table1", "Table 1", (
        "Of the {priors.count} priors, {priors.best}; {priors.bestiwae}.",
        "Theory requires ELBO ≤ E[IWAE_K] ≤ log p(x) for every image; {priors.ordering}.",
        "How far from convergence: {priors.convergence}.")),
    ("quality_table2", "Table 2", (
        "The floor is FID {quality.fid.real} (bias-corrected {quality.fidc.real}), KID {quality.kid.real}, "
        "precision {quality.precision.real} and recall {quality.recall.real}.",
        "By bias-corrected FID the best model is {quality.best}; {quality.bestsep}.")),
    ("ddpm_fid_steps", "The DDPM's FID against sampling steps", (
        "The best sampler by bias-corrected FID is {ddpm.fid.best}; {ddpm.fid.tied}. It {ddpm.fid.floorsep}.",)),
    ("quality_table3", "Table 3", (
        "By the ranking rules: {quality.rank}.",
        "Likelihood against the bias-corrected FID of each density's own samples: {quality.agree}.")),
)

CAPTION_CHARS = 300  # a table's caption is shortened to its sentences within this many characters (the report has all)
CPU_KIND = ("To see your CPU's kind, run `lscpu` and look for `avx512_bf16` or `amx_bf16`: with them the models "
            "train in bf16, without them in float32 (slower), and where the profile's epochs do not fit the budget "
            "the plan gives fewer, never below each model's floor, or says what budget this machine needs.")

# ---------------------------------------------------------------- LaTeX to Markdown

_SYMBOLS = {r"\pm": "±", r"\sim": "~", r"\lambda": "λ", r"\sigma": "σ", r"\epsilon": "ε", r"\mu": "μ",
            r"\alpha": "α", r"\beta": "β", r"\theta": "θ",
            r"\geq": " ≥ ", r"\leq": " ≤ ", r"\ge": " ≥ ", r"\le": " ≤ ", r"\neq": " ≠ ", r"\approx": " ≈ ",
            r"\to": " → ", r"\times": "×", r"\cdot": "·", r"\mid": "|",
            r"\infty": "∞", r"\ldots": "...", r"\dots": "...", r"\textbackslash": "\\",
            **{f"\\{op}": op for op in ("log", "exp", "max", "min", "sup", "inf", "det", "Pr")}}
_STYLES = {"textbf": "**{}**", "emph": "*{}*", "textit": "*{}*", "texttt": "`{}`"}


def _group(text: str, start: int) -> tuple[str, int]:
    """The content of the brace group opening at `text[start]` ("{"), and the index after its closing brace."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0) if text[i - 1] != "\\" or i == start else 0
        if depth == 0:
            return text[start + 1:i], i + 1
    raise ValueError(f"unbalanced braces in {text[start:start + 80]!r}")


_COMMAND = re.compile(r"\\([A-Za-z]+)\*?")


def _commands(text: str) -> str:
    """`\\name{arg}` -> arg (styled for \\textbf, \\emph, \\texttt), a bare `\\name` -> nothing."""
    out, i = [], 0
    while i < len(text):
        m = _COMMAND.match(text, i)
        if not m:
            out.append(text[i])
            i += 1
            continue
        name, i = m.group(1), m.end()
        if i < len(text) and text[i] == "{":
            arg, i = _group(text, i)
            out.append(_STYLES.get(name, "{}").format(_commands(arg)))
    return "".join(out)


def latex_text(text: str) -> str:
    """LaTeX text (a table cell, a caption, a macro's sentence) as plain Markdown text: math and thin spaces gone,
    symbols as Unicode, \\textbf/\\emph/\\texttt as Markdown, other commands reduced to their argument."""
    text = text.replace("{,}", ",").replace("\\,", " ").replace("\\ ", " ").replace("~", " ")
    for a, b in (("\\%", "%"), ("\\&", "&"), ("\\_", "_"), ("\\#", "#"), ("\\$", "\x00")):
        text = text.replace(a, b)
    text = re.sub(r"\\[A-Za-z]+(\{\})?", lambda m: _SYMBOLS.get(m.group(0).removesuffix("{}"), m.group(0)), text)
    text = re.sub(r"\$(\s*)-(\s*)\$", "-", text)  # $-$ (a true minus sign)
    text = text.replace("$", "").replace("\x00", "$")
    text = _commands(text).replace("---", "—").replace("--", "–")
    text = text.replace("{", "").replace("}", "")
    return re.sub(r"[ \t]+", " ", text).strip()


def _split(row: str, sep: str) -> list[str]:
    """`row` split at `sep` where it is not escaped (\\&) and not inside braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(row):
        if ch in "{}" and (i == 0 or row[i - 1] != "\\"):
            depth += 1 if ch == "{" else -1
        elif depth == 0 and row.startswith(sep, i) and (i == 0 or row[i - 1] != "\\"):
            parts.append(row[start:i])
            start = i + len(sep)
    return parts + [row[start:]]


def _cells(row: str) -> list[str]:
    """A tabular row's cells as Markdown text; \\multicolumn{n}{..}{text} fills n cells."""
    cells = []
    for cell in _split(row, "&"):
        cell = cell.strip()
        m = re.match(r"\\multicolumn\{(\d+)\}", cell)
        if m:
            _, end = _group(cell, cell.index("{", m.end()))
            text, _ = _group(cell, end)
            cells += [text] + [""] * (int(m.group(1)) - 1)
        else:
            cells.append(cell)
    return [latex_text(c).replace("|", "\\|") for c in cells]


def table_markdown(tex: str, limit: int = 10_000) -> tuple[str, list[str]]:
    """A LaTeX table (`gen_lib.report.dataframe_table` or pandas `to_latex` output: a tabular, optionally in a table
    environment with a caption) as (caption, Markdown table lines); the caption's sentences up to `limit` characters
    (at least its first). The rows above \\midrule form the header (several
    are joined per column); without \\midrule the first row is the header."""
    caption = ""
    if (at := tex.find("\\caption{")) >= 0:
        caption = latex_text(_group(tex, at + len("\\caption"))[0])
        sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", caption)
        caption = " ".join(s for i, s in enumerate(sentences) if i == 0 or len(" ".join(sentences[:i + 1])) <= limit)
    begin = tex.find("\\begin{tabular}")
    if begin < 0:
        raise ValueError("no \\begin{tabular} in the table")
    spec, start = _group(tex, begin + len("\\begin{tabular}"))
    body = tex[start:tex.index("\\end{tabular}", start)]
    body = re.sub(r"(?<!\\)%[^\n]*", "", body)  # comments (an unescaped %)
    body = re.sub(r"\\(toprule|bottomrule|hline|addlinespace|endhead|endfirsthead|endfoot|endlastfoot)\b(\[[^]]*\])?",
                  "", body)
    body = re.sub(r"\\(cmidrule|cline)(\([a-z]*\))?\{[^}]*\}", "", body)
    header_part, _, rows_part = body.partition("\\midrule")
    if not rows_part:
        header_part, rows_part = "", body
    rows = lambda part: [_cells(r) for r in _split(part, "\\\\") if r.strip()]  # noqa: E731
    header_rows, rows = rows(header_part), rows(rows_part)
    if not header_rows:
        header_rows, rows = rows[:1], rows[1:]
    width = max(len(r) for r in header_rows + rows)
    pad = lambda r: r + [""] * (width - len(r))  # noqa: E731
    header = [" ".join(c for c in col if c) for col in zip(*map(pad, header_rows))]
    letters = [c for c in re.sub(r"\{[^}]*\}", "", spec) if c in "lcrpXS"]
    align = {"r": "---:", "c": ":---:"}
    rule = [align.get(letters[i], "---") if len(letters) == width else "---" for i in range(width)]
    lines = ["| " + " | ".join(r) + " |" for r in (header, rule, *map(pad, rows))]
    return caption, lines


# ---------------------------------------------------------------- the run's files


def read_macros(tables: Path) -> dict[str, str]:
    """Every `\\val{key}` the run wrote (`report/tables/macros_*.tex`): key -> its LaTeX text."""
    values = {}
    for path in sorted(tables.glob("macros_*.tex")):
        text = path.read_text()
        for m in re.finditer(r"\\csname val@(.+?)\\endcsname\{", text):
            values[m.group(1)] = _group(text, m.end() - 1)[0]
    return values


def sentence(template: str, values: dict[str, str], where: str) -> str:
    """`template` with each {key} replaced by its macro's text, in Markdown; the first letter capitalised."""
    def value(m):
        if m.group(1) not in values:
            raise SystemExit(f"error: no macro {m.group(1)!r} (a sentence of {where} in gen_lib/report/readme.py) "
                             "in the run's report/tables/macros_*.tex: was it renamed? Update TABLES there.")
        return values[m.group(1)]
    text = latex_text(re.sub(r"\{([A-Za-z0-9_.\-]+)\}", value, template))
    return text[:1].upper() + text[1:]


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def trained_runs(build: Path, profile: str) -> dict[str, list[dict]]:
    """Per section (priors, flow, ...) the runs the profile's notebooks used (`provenance-<profile>.json`), each
    its provenance.json with its config.json and config-<profile>.json beside it."""
    runs: dict[str, list[dict]] = {}
    for folder, use in _json(build / f"provenance-{profile}.json").items():
        prov = _json(build / folder / "provenance.json")
        if prov:
            runs.setdefault(use.get("section") or prov.get("section", "?"), []).append(
                {**prov, "config": _json(build / folder / "config.json"),
                 "resolved": _json(build / folder / f"config-{profile}.json")})
    return runs


def _one_or_range(values: list) -> str:
    values = sorted(set(values))
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def run_lines(build: Path, profile: str, values: dict[str, str]) -> list[str]:
    """The machine (CPU, cores, flags, precision per model), the plan with minutes per notebook, and the epochs each
    model trained against the profile's, as a short Markdown list."""
    stored = _json(build / f"plan-{profile}.json")
    plan = stored.get("plans", {}).get(stored.get("current", ""), {})
    timings = {nb: t for nb, t in _json(build / f"timings-{profile}.json").items() if isinstance(t, dict)}
    runs = trained_runs(build, profile)
    hardware = values.get("meta.hardware") or plan.get("machine") or next(
        (t["hardware"] for t in timings.values() if "hardware" in t), "unknown")
    flags = plan.get("flags")
    if flags is None:
        entries = [e for per in _json(build / "precision.json").values() for e in per.values()]
        flags = next((e["machine"]["flags"] for e in entries if "machine" in e), "")
    precision = ", ".join(f"{s} {'bf16' if r[0]['config']['bf16'] else 'float32'}" for s, r in runs.items()
                          if "bf16" in r[0]["config"])
    lines = [f"- Machine: {latex_text(hardware)}; CPU flags: {flags or 'no AVX2'}"
             + (f"; precision chosen per model: {precision}" if precision else "") + "."]
    if timings:
        parts = [f"{nb} {_minutes(t['seconds'])}" + (f" ({_minutes(t['planned_seconds'])})" if "planned_seconds" in t
                                                    else "") for nb, t in timings.items()]
        total = _minutes(sum(t["seconds"] for t in timings.values()))
        planned = [t["planned_seconds"] for t in timings.values() if "planned_seconds" in t]
        peak = max((t.get("peak_rss_mib", 0) for t in timings.values()), default=0)
        lines.append(("- Plan: budget {:g} minutes; ".format(plan["budget"]) if plan.get("budget") else
                      "- Plan: no budget; " if plan else "- Plan: none (this profile is not planned); ")
                     + "minutes taken" + (" (planned)" if planned else "") + " per notebook: " + ", ".join(parts)
                     + f"; in all {total}" + (f" ({_minutes(sum(planned))})" if planned else "")
                     + (f", the PDF not included; peak memory of a notebook {peak / 1024:.1f} GiB" if peak else "")
                     + ".")
    wanted = plan.get("profile_epochs", {})
    epochs = [f"{section} {_one_or_range([r['epochs'] for r in rs if 'epochs' in r])}"
              + (f" of {wanted[section]}" if section in wanted else "")
              for section, rs in runs.items() if any("epochs" in r for r in rs)]
    if epochs:
        lines.append(("- Epochs each model trained, of the profile's where the plan could cut them: " if wanted else
                      "- Epochs each model trained (no plan cut them): ") + ", ".join(epochs) + ".")
    return lines


def results_section(build: Path, report: Path, readme: Path) -> str:
    """The whole section, heading included, from the run's files in `build` and `report`."""
    tables = report / "tables"
    values = read_macros(tables)
    profile = latex_text(values.get("meta.profile", ""))
    if not profile:
        found = sorted(p.stem.removeprefix("timings-") for p in build.glob("timings-*.json"))
        if len(found) != 1:
            raise SystemExit(f"error: no macro meta.profile in {tables} and {len(found)} timings files in {build}")
        profile = found[0]
    commits = sorted({r["commit"] for rs in trained_runs(build, profile).values() for r in rs if "commit" in r})
    commit = latex_text(values.get("meta.commit", "")) or ", ".join(commits) or "unknown"
    pdf = build / "report.pdf"
    try:
        link = os.path.relpath(pdf.resolve(), readme.resolve().parent)
    except ValueError:
        link = str(pdf)
    link = link if not link.startswith("..") else "build/report.pdf"
    lines = [HEADING, "",
             f"Generated by `python -m gen_lib.report.readme` from the files of one run: profile `{profile}`, "
             f"{latex_text(values.get('meta.date', 'date unknown'))}, commit {commit}"
             + (f" (models trained at {', '.join(commits)})" if commits and commits != [commit] else "")
             + f". Everything else is in the report, [`{link}`]({link}).", "",
             *run_lines(build, profile, values), f"- {CPU_KIND}"]
    for stem, title, templates in TABLES:
        path = tables / f"{stem}.tex"
        if not path.exists():
            raise SystemExit(f"error: {path} is missing: the run did not write {title}")
        caption, table = table_markdown(path.read_text(), CAPTION_CHARS)
        lines += ["", f"**{title}.** {caption}".rstrip(), "", *table, "",
                  " ".join(sentence(t, values, title) for t in templates)]
    return "\n".join(lines) + "\n"


def replace_section(readme: str, section: str) -> str:
    """`readme` with the text from HEADING to the next "## " heading (or the end) replaced by `section`."""
    start = readme.find("\n" + HEADING + "\n")
    if start < 0:
        raise SystemExit(f"error: the README has no line {HEADING!r}")
    start += 1
    end = readme.find("\n## ", start + len(HEADING))
    end = len(readme) if end < 0 else end + 1
    return readme[:start] + section + ("\n" if end < len(readme) else "") + readme[end:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gen_lib.report.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default="build", help="the run's build folder (default build/)")
    parser.add_argument("--report-dir", default="report", help="the run's folder of tables/ (default report/)")
    parser.add_argument("--readme", default="README.md", help="the README to update in place (default README.md)")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    section = results_section(Path(args.build_dir), Path(args.report_dir), readme)
    readme.write_text(replace_section(readme.read_text(), section))
    print(f"{readme}: {HEADING!r} regenerated ({section.count(chr(10))} lines)")


if __name__ == "__main__":
    main()
