import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gen_lib import training
from gen_lib.training import CheckpointError, NonFiniteLossError, fit

sys.path.insert(0, str(Path(__file__).parent))
from _train_script import Noisy, make_data  # noqa: E402

SCRIPT = Path(__file__).with_name("_train_script.py")
KW = dict(batch_size=32, lr=1e-2, seed=7, config={"test": "resume"}, device="cpu", progress=False)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_equals_uninterrupted(tmp_path):
    torch.manual_seed(1)
    straight = Noisy()
    fit(straight, make_data(), epochs=2, checkpoint=tmp_path / "a.pt", **KW)

    torch.manual_seed(1)
    first = Noisy()
    r1 = fit(first, make_data(), epochs=1, checkpoint=tmp_path / "b.pt", **KW)
    torch.manual_seed(2)  # another process, other initial weights: resume must not care
    second = Noisy()
    r2 = fit(second, make_data(), epochs=2, checkpoint=tmp_path / "b.pt", **KW)
    assert r1.status == "trained" and r2.status == "resumed"
    assert [h["epoch"] for h in r2.history] == [1, 2]
    assert torch.equal(_weights(straight), _weights(second))

    r3 = fit(Noisy(), make_data(), epochs=2, checkpoint=tmp_path / "b.pt", **KW)
    assert r3.status == "reused"


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a, b, c = Noisy(), Noisy(), Noisy()
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    fit(a, make_data(), epochs=1, **KW)
    fit(b, make_data(), epochs=1, **KW)
    fit(c, make_data(), epochs=1, **{**KW, "seed": 8})
    assert torch.equal(_weights(a), _weights(b))
    assert not torch.equal(_weights(a), _weights(c))


def test_other_configuration_is_refused(tmp_path):
    fit(Noisy(), make_data(), epochs=1, checkpoint=tmp_path / "c.pt", **KW)
    with pytest.raises(CheckpointError, match=r"another configuration: lr: checkpoint 0.01 vs requested 0.001"):
        fit(Noisy(), make_data(), epochs=1, checkpoint=tmp_path / "c.pt", **{**KW, "lr": 1e-3})
    with pytest.raises(CheckpointError, match="test: checkpoint 'resume' vs requested 'other'"):
        fit(Noisy(), make_data(), epochs=1, checkpoint=tmp_path / "c.pt", **{**KW, "config": {"test": "other"}})


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_is_reported(tmp_path, damage):
    path = tmp_path / "d.pt"
    fit(Noisy(), make_data(), epochs=1, checkpoint=path, **KW)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        fit(Noisy(), make_data(), epochs=2, checkpoint=path, **KW)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    class Explodes(Noisy):
        calls = 0

        def loss(self, batch):
            Explodes.calls += 1
            loss = super().loss(batch)
            return loss * float("nan") if Explodes.calls > 20 else loss  # 16 steps per epoch

    path = tmp_path / "e.pt"
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, step 5.*last good checkpoint kept"):
        fit(Explodes(), make_data(), epochs=3, checkpoint=path, **KW)
    ckpt = training.load_checkpoint(path)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size=0"):
        fit(Noisy(), make_data(), epochs=1, **{**KW, "batch_size": 0})


def test_atomic_save_leaves_no_temporary(tmp_path):
    training.save_atomic({"a": 1}, tmp_path / "x.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    """Start training in a subprocess, SIGKILL it mid-epoch, re-run: it resumes from the last
    checkpoint, loses less than one epoch, and ends with the uninterrupted run's weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    epochs, sleep = 4, 0.02  # 16 steps of >= 20 ms: an epoch lasts about 0.4 s
    ref_out = tmp_path / "ref.pt"
    subprocess.run([sys.executable, SCRIPT, tmp_path / "ref_ckpt.pt", ref_out, str(epochs)], env=env, check=True,
                   capture_output=True)

    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    child = subprocess.Popen([sys.executable, SCRIPT, ckpt, out, str(epochs), str(sleep)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:  # wait for the first epoch's checkpoint
        time.sleep(0.01)
    time.sleep(0.15)  # now mid-way through epoch 2
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL and not out.exists()
    epoch_at_kill = training.load_checkpoint(ckpt)["epoch"]
    assert 1 <= epoch_at_kill < epochs

    done = subprocess.run([sys.executable, SCRIPT, ckpt, out, str(epochs), str(sleep)], env=env, check=True,
                          capture_output=True, text=True)
    assert f"resuming {ckpt} (epoch {epoch_at_kill} of {epochs})" in done.stdout
    a, b = torch.load(ref_out), torch.load(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
