import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_every_benchmark_runs_at_quick_sizes(tmp_path):
    out = tmp_path / "bench.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env={**__import__("os").environ,
                                                               "GEN_LIB_BUILD": str(tmp_path / "build")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert "| bench | what | baseline | ours | ratio |" in text
    for part in ("vae", "flow", "ddpm", "metrics", "steps"):
        assert f"| {part} |" in text, f"no benchmark row for {part}"
