"""The runner behind `make report` and the notebook tests.

    python -m gen_lib.run --profile default [--only 02_flow] [--no-pdf] [--param priors=gaussian,flow]
                          [--param quality_vae.prior=mog]

Executes each notebook with papermill (parameters: profile, dataset, and any `--param NAME=VALUE`
that the notebook's parameters cell declares; `--param SECTION.KEY=VALUE` changes any key of the profile,
through GEN_LIB_PARAMS, before the plan and every notebook read it) into
`build/notebooks/`, renders it to HTML beside it, writes the report's metadata
(profile, date, commit, hardware, times), then compiles `report/report.tex` with
latexmk into `build/report.pdf`. `--build-dir` and `--report-dir` move all outputs
(the tests use a temporary folder, so they never touch what `make report` built).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import data, measure, paths, report, system
from .report import site
from .study import cache, config, plan as planner
from .study import trained  # noqa: F401  (registers each dataset's classifier as a feature map)

NOTEBOOKS, SOURCE_NOTEBOOKS = paths.NOTEBOOKS, paths.SOURCE_NOTEBOOKS
SECTION_OF = {"01_priors": "priors", "02_flow": "flow", "03_ddpm": "ddpm", "04_quality": "quality",
              "05_explore": "explore"}  # the profile section each notebook's parameters cell fills
SOURCE_REPORT = paths.ROOT / "report"


def _log(msg: str) -> None:
    print(f"[gen_lib.run] {msg}", flush=True)


def parse_params(items: list[str] | None) -> dict[str, object]:
    """`["priors=gaussian,flow", "seeds=3", "bf16=false"]` -> {"priors": "gaussian,flow", "seeds": 3, "bf16": False}:
    a value is read as a Python literal where it is one (numbers, True, None), true/false/none in any case as
    the booleans and None (as profiles.toml writes them), else kept as a string. A name is a notebook parameter
    (`seeds`) or a profile key `section.key` (`quality_vae.prior`, `classifier.epochs`)."""
    words = {"true": True, "false": False, "none": None, "null": None}
    out = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not all(part.isidentifier() for part in name.split(".")) or name.count(".") > 1:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE or SECTION.KEY=VALUE")
        if text.strip().lower() in words:
            out[name] = words[text.strip().lower()]
            continue
        try:
            out[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[name] = text
    return out


def _declared(notebook: Path) -> set[str]:
    """The names the notebook's parameters cell assigns."""
    import nbformat

    cell = next(c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return {node.targets[0].id for node in ast.parse(cell.source).body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}


def execute(name: str, profile: str, dataset: str = "mnist", params: dict | None = None) -> float:
    """Run one notebook through papermill and render it to HTML; returns seconds. `params` are further
    notebook parameters; those its parameters cell does not declare are left out (another notebook's)."""
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    out_dir = paths.build_dir() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    t0 = time.perf_counter()
    # No tqdm bars in the kernel: without a terminal every redraw would become a log line. Training
    # prints one line per epoch instead. Cell output is echoed once (stdout_file), not also logged.
    os.environ["GEN_LIB_BARS"] = "0"
    os.environ["GEN_LIB_NOTEBOOK"] = name  # the recipes note which notebook used each trained model (provenance)
    cache.forget_uses(profile, name)
    source = SOURCE_NOTEBOOKS / f"{name}.ipynb"
    extra = {k: v for k, v in (params or {}).items() if k in _declared(source)}
    pm.execute_notebook(str(source), str(out), parameters={"profile": profile, "dataset": dataset, **extra},
                        cwd=str(SOURCE_NOTEBOOKS), kernel_name="python3", log_output=False,
                        progress_bar=False, stdout_file=sys.stdout, stderr_file=sys.stderr)
    seconds = time.perf_counter() - t0
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(out, as_version=4))
    (out_dir / f"{name}.html").write_text(body, encoding="utf-8")
    site.write_report_view(out)  # <name>.report.html: the same notebook without code, for graders
    return seconds


def execute_measured(name: str, profile: str, dataset: str = "mnist", params: list[str] | None = None
                     ) -> tuple[float, float]:
    """Run `execute` in a child process; returns (seconds, peak RSS in MiB of the notebook's kernel).

    A child per notebook lets wait4() report the peak RSS of that notebook alone (the kernel
    is the child's child, and Linux folds a reaped child's peak into its parent's).
    """
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "gen_lib.run", "--profile", profile, "--dataset", dataset,
                              "--only", name, "--no-pdf", "--no-meta", *(f"--param={p}" for p in params or [])])
    try:
        _, status, usage = os.wait4(child.pid, 0)
    except KeyboardInterrupt:
        child.terminate()
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"error: notebook {name} failed (exit {child.returncode}); "
                         f"the executed notebook with the error is in {paths.build_dir() / 'notebooks'}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def busy_warning(cores: int | None = None) -> str | None:
    """A warning when the 1-minute load average shows other heavy work on this machine's cores.

    Two PyTorch processes on the same cores slow each other down many-fold (their OpenMP threads
    spin against each other), so times measured then say nothing about the code.
    """

    cores = cores or system.available_cores()
    load = os.getloadavg()[0]
    if load < 0.5 * cores:
        return None
    return (f"warning: the load average is {load:.1f} on {cores} cores before this run: other heavy work is "
            "running. PyTorch processes sharing cores slow each other down many-fold, so this run will be "
            "slower and its recorded times are not representative.")


def _estimates(profile: str, dataset: str, runs: dict) -> dict[str, float]:
    """Expected seconds per notebook: this profile's last recorded run on this machine (the runner records each
    notebook's seconds with the machine's description); NaN where this machine has no record. Another machine's
    times are not used: machines differ more than twofold."""
    here = system.hardware()
    return {name: float(runs[name]["seconds"]) if runs.get(name, {}).get("hardware") == here and "seconds" in runs[name]
            else float("nan") for name in NOTEBOOKS}


def _minutes(seconds: float) -> str:
    return "unknown (no run of it recorded on this machine)" if seconds != seconds else f"{seconds / 60:.1f} min"


def _remaining(expected: dict[str, float], names: list[str]) -> str:
    known = [expected[n] for n in names if expected[n] == expected[n]]
    return _minutes(sum(known)) + (" + unknown" if len(known) < len(names) else "")


def build_pdf() -> Path:
    """Compile report.tex with latexmk into build/report.pdf."""
    if shutil.which("latexmk") is None:
        raise SystemExit("error: latexmk not found; install the Debian packages latexmk "
                         "texlive-latex-recommended texlive-latex-extra (or run `make tex` as root)")
    report = paths.report_dir()
    if report.resolve() != SOURCE_REPORT.resolve():  # tests: copy the sources next to the generated files
        shutil.copy2(SOURCE_REPORT / "report.tex", report / "report.tex")
        shutil.copytree(SOURCE_REPORT / "sections", report / "sections", dirs_exist_ok=True)
    out_dir = paths.build_dir() / "latex"
    done = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error",
                           f"-outdir={out_dir}", "report.tex"], cwd=report, capture_output=True, text=True)
    if done.returncode != 0:
        log = (out_dir / "report.log")
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else done.stdout[-3000:]
        raise SystemExit(f"error: latexmk failed (see {log}):\n{tail}")
    pdf = paths.build_dir() / "report.pdf"
    shutil.copy2(out_dir / "report.pdf", pdf)
    _log(f"report -> {pdf}")
    return pdf


def check_profile_and_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A clear error (naming the allowed values) for an unknown --profile or --dataset, before anything runs."""
    if args.profile not in config.PROFILES:
        parser.error(f"--profile {args.profile!r} is unknown; choose one of {', '.join(config.PROFILES)}")
    if args.dataset not in data.INFO:
        parser.error(f"--dataset {args.dataset!r} is unknown; choose one of {', '.join(data.INFO)}")


def main(argv: list[str] | None = None) -> None:
    system.configure_threads()  # torch's threads for this process: GEN_LIB_THREADS, else its cores
    parser = argparse.ArgumentParser(prog="python -m gen_lib.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", help=f"one of {', '.join(config.PROFILES)}")
    parser.add_argument("--dataset", default="mnist", help=" | ".join(data.INFO))
    parser.add_argument("--only", action="append", default=None, help=f"notebook(s) to run: {', '.join(NOTEBOOKS)}")
    parser.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                        help="minutes for the whole run (default: the profile's [budget] minutes; 0 = the profile's "
                             "epochs whatever the time)")
    parser.add_argument("--no-plan", action="store_true",
                        help="skip measuring and planning (the profile's epochs or the current plan's; gen_lib.chunks)")
    parser.add_argument("--no-pdf", action="store_true", help="skip the LaTeX report")
    parser.add_argument("--pdf-only", action="store_true", help="only rebuild the PDF")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a notebook parameter, e.g. priors=gaussian,flow (for the notebooks that declare it)")
    parser.add_argument("--no-meta", action="store_true", help=argparse.SUPPRESS)  # child of execute_measured
    parser.add_argument("--build-dir", help="where checkpoints, results and notebooks go (default build/)")
    parser.add_argument("--report-dir", help="where figures/ and tables/ go (default report/)")
    args = parser.parse_args(argv)

    check_profile_and_dataset(parser, args)
    only = args.only or list(NOTEBOOKS)
    for name in only:
        if name not in NOTEBOOKS:
            parser.error(f"--only {name!r} is unknown; choose from {', '.join(NOTEBOOKS)}")
    if args.budget is not None and not args.budget >= 0:
        parser.error(f"--budget {args.budget}: expected minutes >= 0")
    try:
        params = parse_params(args.param)
    except ValueError as err:
        parser.error(str(err))
    keys = {name: params.pop(name) for name in list(params) if "." in name}  # section.key: the profile's values
    for key in params:
        if not any(key in _declared(SOURCE_NOTEBOOKS / f"{name}.ipynb") for name in only):
            parser.error(f"--param {key}: no notebook of {', '.join(only)} declares a parameter {key!r} "
                         f"(a key of a profile's section is named section.key, e.g. quality_vae.prior)")
    extra = os.environ.get("GEN_LIB_PROFILE_OVERRIDES")
    if extra:  # the kernels run in notebooks/: a relative path is the caller's
        os.environ["GEN_LIB_PROFILE_OVERRIDES"] = str(Path(extra).resolve())
    if keys:  # read by config.resolve here, in the plan and in every notebook's kernel (they inherit it)
        changes: dict[str, dict[str, object]] = {}
        for name, value in keys.items():
            section, key = name.split(".")
            changes.setdefault(section, {})[key] = value
        os.environ[config.PARAMS_ENV] = json.dumps({args.profile: changes})
    try:  # every section of the profile, with the notebooks' --param values, checked before any work
        for section in config.sections():
            name = next((nb for nb, s in SECTION_OF.items() if s == section and nb in only), None)
            declared = _declared(SOURCE_NOTEBOOKS / f"{name}.ipynb") if name else set()
            config.resolve(section, args.profile, _plan=False, dataset=args.dataset,
                           **{k: v for k, v in params.items() if k in declared and k != "dataset"})
    except ValueError as err:
        parser.error(str(err))
    if args.build_dir:
        os.environ["GEN_LIB_BUILD"] = str(Path(args.build_dir).resolve())
    if args.report_dir:
        os.environ["GEN_LIB_REPORT"] = str(Path(args.report_dir).resolve())


    if args.no_meta:  # one notebook, in a child process of execute_measured
        from papermill.exceptions import PapermillExecutionError

        for name in only:
            try:
                execute(name, args.profile, args.dataset, params)
            except PapermillExecutionError as err:  # the cell's own error, last, in one line
                first = next((line for line in err.source.splitlines() if line.strip()), "")
                raise SystemExit(f"error: {name}, cell [{err.exec_count}] ({first.strip()[:80]} ...): "
                                 f"{err.ename}: {err.evalue}") from None
        return
    runs_file = paths.build_dir() / f"timings-{args.profile}.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    runs = {k: v for k, v in runs.items() if isinstance(v, dict) and "seconds" in v}
    if not args.pdf_only:
        load_at_start = round(os.getloadavg()[0], 2)
        warning = busy_warning()
        if warning:
            _log(warning)
        expected = _estimates(args.profile, args.dataset, runs)
        the_plan = None
        if config.resolve("budget", args.profile)["plan"] and not args.no_plan:
            the_plan = planner.make(args.profile, args.dataset, args.budget,  # PlanError: stops before any training
                                    rates=lambda: measure.rates(args.profile, args.dataset, _log))
            peaks = {n: r["peak_rss_mib"] for n, r in runs.items() if r.get("hardware") == system.hardware()
                     and "peak_rss_mib" in r}
            _log(planner.describe(the_plan, only, peaks))
            expected = {name: 60 * the_plan["minutes"][name] for name in NOTEBOOKS}
        t_run = time.perf_counter()
        for i, name in enumerate(only):
            _log(f"start {name} ({i + 1}/{len(only)}, profile {args.profile}, {args.dataset}); expected "
                 f"{_minutes(expected[name])}, about {_remaining(expected, only[i:])} for what remains")
            seconds, rss = execute_measured(name, args.profile, args.dataset, args.param)
            against = f", planned {_minutes(expected[name])}: {seconds / expected[name]:.2f}x" if expected[name] else ""
            _log(f"end {name} in {_minutes(seconds)}{against} (elapsed {_minutes(time.perf_counter() - t_run)}"
                 + (f", about {_remaining(expected, only[i + 1:])} to go)" if i + 1 < len(only) else ")")
                 + f" -> {paths.build_dir() / 'notebooks' / (name + '.html')}")
            runs[name] = {"seconds": round(seconds, 1), "peak_rss_mib": round(rss), "hardware": report.hardware(),
                          "dataset": args.dataset, "load_at_start": load_at_start,
                          **({"planned_seconds": round(expected[name], 1), "plan": the_plan["why"]} if the_plan else {})}
            runs_file.write_text(json.dumps(runs, indent=1))
    report.write_meta(args.profile, {k: v["seconds"] for k, v in runs.items()}, dataset=args.dataset)
    if not args.no_pdf:
        build_pdf()
    _log(f"index -> {site.write_index(args.profile, args.dataset, runs)}")


if __name__ == "__main__":
    main()
