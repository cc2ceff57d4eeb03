"""`make bench`: run every benchmarks/bench_*.py and write build/bench.md.

    python -m benchmarks [--quick] [--only vae]

Each bench module has `run(quick: bool) -> list[dict]` with keys what, baseline, ours,
ratio (> 1: ours is faster), unit, note; every ratio is measured in one run on this
machine. The peak memory (RSS) of each notebook comes from the runner's records of the
last `make report` (build/timings-<profile>.json).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import torch

from gen_lib import paths, report, system


def _modules(only: list[str] | None) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    if only:
        unknown = [o for o in only if f"bench_{o}" not in names]
        if unknown:
            raise SystemExit(f"error: --only {unknown[0]!r} is unknown; choose from "
                             + ", ".join(n.removeprefix("bench_") for n in names))
        names = [f"bench_{o}" for o in only]
    return names


def main(argv: list[str] | None = None) -> int:
    system.configure_threads()  # torch's threads for this process: GEN_LIB_THREADS, else its cores
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every benchmark runs")
    parser.add_argument("--only", action="append", help="a benchmark module without its bench_ prefix")
    parser.add_argument("--out", default=None, help="output file (default build/bench.md)")
    args = parser.parse_args(argv)

    rows, failed = [], []
    for name in _modules(args.only):
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            for row in module.run(quick=args.quick):
                rows.append({"bench": name.removeprefix("bench_"), **row})
                print(f"[bench]   {row['what']}: ratio {row['ratio']:.2f}", flush=True)
        except Exception:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            failed.append(name)
        print(f"[bench] {name} took {time.perf_counter() - t0:.0f} s", flush=True)

    machine = f"{report.hardware()}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    lines = [f"# Benchmarks{' (quick sizes)' if args.quick else ''}", "", f"Machine: {machine}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M')}; commit {report.git_commit()}", "",
             "| bench | what | baseline | ours | ratio | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bench']} | {r['what']} | {r['baseline']} | {r['ours']} | {r['ratio']:.2f}x | {r.get('note', '')} |")
    for profile in ("smoke", "default", "paper"):
        runs_file = paths.build_dir() / f"timings-{profile}.json"
        if runs_file.exists():
            runs = {k: v for k, v in json.loads(runs_file.read_text()).items() if isinstance(v, dict)}
            lines += ["", f"## Notebooks, profile {profile} (last `make report PROFILE={profile}`)", "",
                      "| notebook | wall time | peak RSS | machine |", "|---|---|---|---|"]
            for nb, v in runs.items():
                lines.append(f"| {nb} | {v['seconds'] / 60:.1f} min | {v['peak_rss_mib']} MiB | {v.get('hardware', '')} |")
    out = Path(args.out) if args.out else paths.build_dir() / "bench.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"[bench] wrote {out}")
    if failed:
        print(f"[bench] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
