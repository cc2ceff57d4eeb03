"""The README's library example runs as written: its Python block is read from README.md at test time and
executed, so the README cannot drift from the library."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_the_readmes_python_block_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    monkeypatch.setenv("GEN_LIB_BUILD", str(tmp_path / "build"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 (the README's own code)
    assert namespace["model"].iwae(namespace["xb"][:4], k=10).shape == (4,)
