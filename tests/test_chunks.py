"""The chunk runner for short GPU leases (gen_lib.chunks): its argument checks and its bookkeeping. The whole
campaign, stopped and resumed, runs in tests/test_notebooks.py (the paper profile at tiny sizes)."""

import json
import subprocess
import sys

import pytest

from gen_lib import chunks


@pytest.mark.parametrize("argv, match", [
    (["--limit", "10"], "--limit 10.0: a chunk needs at least 30 seconds"),
    (["--profile", "fast"], "--profile 'fast' is unknown"),
    (["--dataset", "cifar"], "--dataset 'cifar' is unknown"),
])
def test_bad_arguments_are_refused_before_anything_runs(argv, match, capsys):
    with pytest.raises(SystemExit):
        chunks.main(argv)
    assert match in capsys.readouterr().err


def test_a_chunk_that_changes_nothing_is_an_error_not_an_endless_loop(tmp_build, monkeypatch):
    """A notebook step longer than the chunk: the runner is stopped before it writes anything, every time."""
    real_popen = subprocess.Popen  # chunks.subprocess is the subprocess module: keep the real one

    class Stuck:
        def __init__(self, *args, **kwargs):
            self.proc = real_popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
            self.pid = self.proc.pid

        def wait(self, timeout=None):
            return self.proc.wait(timeout=timeout)

    monkeypatch.setattr(chunks.subprocess, "Popen", Stuck)
    lines = []
    assert chunks.chunk("smoke", limit=8, log=lines.append) == 1
    assert "no progress" in lines[-1]
    state = json.loads((tmp_build / "build" / "chunks-smoke-mnist.json").read_text())
    assert state["done"] == [] and state["chunks"] == 1 and state["seconds"]["01_priors"] >= 2
