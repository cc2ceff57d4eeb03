import os

import pytest
import torch

# Two cores are shared by the notebooks' kernels and pytest: keep pytest itself to one thread.
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 2) // 2)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmp_build(tmp_path, monkeypatch):
    """Send every output of gen_lib (build/, report/) to a temporary folder."""
    monkeypatch.setenv("GEN_LIB_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("GEN_LIB_REPORT", str(tmp_path / "report"))
    return tmp_path
