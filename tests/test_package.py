"""`pip install .` gives a working library: the wheel holds every subpackage and data file, and the library it
installs, imported from a folder outside the checkout, resolves a profile and finds the report's modules."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gen_lib

ROOT = Path(gen_lib.__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_installs_a_working_library(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, cwd=tmp_path, capture_output=True)
    wheel = next(wheels.glob("gen_lib-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "gen_lib").rglob("*") if p.suffix in (".py", ".toml")
               and "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import gen_lib, gen_lib.report.likelihood, gen_lib.report.explore, gen_lib.study.recipes\n"
             "from gen_lib.study import config\n"
             "import gen_lib.study\n"
             "print(gen_lib.__file__, gen_lib.study.__file__, config.PROFILES_FILE, config.resolve('flow', 'default')['n_layers'])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "GEN_LIB_BUILD": str(tmp_path / "b")})
    assert out.returncode == 0, out.stderr[-2000:]
    *files, layers = out.stdout.split()
    for where in files:  # gen_lib, gen_lib.study and profiles.toml: the wheel's files, not the checkout's
        assert Path(where).resolve().is_relative_to(site.resolve()), where
    assert int(layers) > 0
