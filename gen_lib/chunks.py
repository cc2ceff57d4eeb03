"""Run a profile in chunks of at most `--limit` seconds, resuming where the last chunk stopped.

    python -m gen_lib.chunks --profile paper [--limit 540] [--dataset mnist] [--build-dir D] [--report-dir R]

Made for GPU leases that allow at most 10 minutes per command: call the same command again and again
until it says "done" (exit status 0). Each call runs the notebooks that are not done yet, in order,
through `python -m gen_lib.run`, and stops that process when `--limit` seconds have passed. Nothing
is lost by stopping: `training.fit` checkpoints every epoch (atomically) and resumes from the last one,
and every sample set and metric is cached (`cache.memo`), so the next chunk re-executes the interrupted
notebook from its first cell and skips what is already on disk. When every notebook is done, the
chunk that finds it builds the PDF.

Exit status: 0 done; 75 (EX_TEMPFAIL) call again; 1 an error, or a chunk that made no progress (no new
checkpoint, cache file or finished notebook in `--limit` seconds: one step, an epoch or one cached
computation, takes longer than a chunk; raise `--limit` or lower the step's size).

State: `<build>/chunks-<profile>-<dataset>.json`: the notebooks done, the wall time each took summed over
chunks, and the number of chunks. Delete it to start the campaign over (the caches stay).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import data, paths, system
from .study import config
from .run import NOTEBOOKS, check_profile_and_dataset

AGAIN = 75  # EX_TEMPFAIL: not finished, call again


def _state_path(profile: str, dataset: str) -> Path:
    return paths.build_dir() / f"chunks-{profile}-{dataset}.json"


def _snapshot() -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under the build folder's runs/ and samples/ (what a chunk produces)."""
    out = {}
    for sub in ("runs", "samples"):
        for f in (paths.build_dir() / sub).rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                st = f.stat()
                out[str(f)] = (st.st_size, st.st_mtime_ns)
    return out


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the runner's whole process group (runner, notebook process, kernel), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def chunk(profile: str, dataset: str = "mnist", limit: float = 540.0, extra: list[str] | None = None,
          log=print) -> int:
    """One chunk (see the module's note); returns the exit status."""
    state_file = _state_path(profile, dataset)
    state = json.loads(state_file.read_text()) if state_file.exists() else {"done": [], "seconds": {}, "chunks": 0}
    state["chunks"] += 1
    todo = [nb for nb in NOTEBOOKS if nb not in state["done"]]
    t0 = time.monotonic()
    before = _snapshot()
    for name in todo:
        left = limit - (time.monotonic() - t0)
        if left <= 5:
            break
        log(f"[gen_lib.chunks] chunk {state['chunks']}: {name}, at most {left:.0f} s")
        t_nb = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "gen_lib.run", "--profile", profile, "--dataset", dataset,
                                 "--only", name, "--no-pdf", "--no-plan", *(extra or [])], start_new_session=True)
        try:
            code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            _stop(proc)
            code = None
        state["seconds"][name] = round(state["seconds"].get(name, 0.0) + time.monotonic() - t_nb, 1)
        if code is None:
            break
        if code != 0:
            state_file.write_text(json.dumps(state, indent=1))
            log(f"[gen_lib.chunks] error: {name} failed (exit {code}); its executed notebook is in "
                f"{paths.build_dir() / 'notebooks'}")
            return 1
        state["done"].append(name)
    state_file.write_text(json.dumps(state, indent=1))
    if len(state["done"]) == len(NOTEBOOKS):
        done = subprocess.run([sys.executable, "-m", "gen_lib.run", "--profile", profile, "--dataset", dataset,
                               "--pdf-only", *(extra or [])])
        if done.returncode != 0:
            return 1
        total = sum(state["seconds"].values())
        log(f"[gen_lib.chunks] done in {state['chunks']} chunk(s): " + ", ".join(
            f"{k} {v / 60:.1f} min" for k, v in state["seconds"].items()) + f"; {total / 60:.1f} min in all")
        return 0
    if _snapshot() == before and not any(nb in state["done"] for nb in todo):
        log(f"[gen_lib.chunks] error: no progress in {limit:.0f} s (no new checkpoint, cache file or finished notebook): "
            "one step takes longer than a chunk; raise --limit")
        return 1
    log(f"[gen_lib.chunks] chunk {state['chunks']} stopped after {time.monotonic() - t0:.0f} s; done: "
        f"{', '.join(state['done']) or 'none'}. Run the same command again to resume.")
    return AGAIN


def main(argv: list[str] | None = None) -> int:
    system.configure_threads()  # torch's threads for this process: GEN_LIB_THREADS, else its cores
    parser = argparse.ArgumentParser(prog="python -m gen_lib.chunks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="paper", help=f"one of {', '.join(config.PROFILES)}")
    parser.add_argument("--dataset", default="mnist", help=" | ".join(data.INFO))
    parser.add_argument("--limit", type=float, default=540.0, help="seconds per chunk (default 540: 9 minutes)")
    parser.add_argument("--build-dir", help="where checkpoints, results and notebooks go (default build/)")
    parser.add_argument("--report-dir", help="where figures/ and tables/ go (default report/)")
    args = parser.parse_args(argv)
    check_profile_and_dataset(parser, args)
    if not args.limit >= 30:
        parser.error(f"--limit {args.limit}: a chunk needs at least 30 seconds (start-up alone takes several)")
    extra = []
    if args.build_dir:
        os.environ["GEN_LIB_BUILD"] = str(Path(args.build_dir).resolve())
        extra += ["--build-dir", args.build_dir]
    if args.report_dir:
        os.environ["GEN_LIB_REPORT"] = str(Path(args.report_dir).resolve())
        extra += ["--report-dir", args.report_dir]
    return chunk(args.profile, args.dataset, args.limit, extra)


if __name__ == "__main__":
    sys.exit(main())
