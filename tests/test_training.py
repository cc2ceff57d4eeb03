import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gen_lib import checkpoints, system, training
from gen_lib.checkpoints import CheckpointError
from gen_lib.training import NonFiniteLossError, fit

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
    with pytest.raises(NonFiniteLossError, match=r"loss became nan or inf at epoch 2, step 5.*last good checkpoint kept"):
        fit(Explodes(), make_data(), epochs=3, checkpoint=path, **KW)
    ckpt = checkpoints.load_checkpoint(path)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size=0"):
        fit(Noisy(), make_data(), epochs=1, **{**KW, "batch_size": 0})


def test_atomic_save_leaves_no_temporary(tmp_path):
    checkpoints.save_atomic({"a": 1}, tmp_path / "x.pt")
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
    epoch_at_kill = checkpoints.load_checkpoint(ckpt)["epoch"]
    assert 1 <= epoch_at_kill < epochs

    done = subprocess.run([sys.executable, SCRIPT, ckpt, out, str(epochs), str(sleep)], env=env, check=True,
                          capture_output=True, text=True)
    assert f"resuming {ckpt} (epoch {epoch_at_kill} of {epochs})" in done.stdout
    a, b = torch.load(ref_out), torch.load(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


class _Payload:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_loading_refuses_a_crafted_pickle_and_runs_nothing(tmp_path):
    from gen_lib.study import cache

    marker = tmp_path / "pwned"
    for name in ("model.pt", "cached.pt"):
        torch.save({"format": 1, "model": {}, "config": {}, "payload": _Payload(marker)}, tmp_path / name)
    with pytest.raises(CheckpointError, match=r"refusing to load .*model.pt.*could run code"):
        checkpoints.load_checkpoint(tmp_path / "model.pt")
    # the results cache recomputes instead of loading it, and says so
    said = []
    assert cache.memo(tmp_path / "cached.pt", lambda: {"value": torch.ones(2)}, log=said.append)["value"].sum() == 2
    assert "could run code" in said[0]
    assert not marker.exists(), "unpickling ran code"
    # what gen_lib writes loads under weights_only=True
    fit(Noisy(), make_data(), epochs=1, checkpoint=tmp_path / "ok.pt", **KW)
    assert torch.load(tmp_path / "ok.pt", weights_only=True)["epoch"] == 1


def test_lr_schedule_warmup_then_cosine_to_zero():
    total, warm = 100, 10
    f = [training.lr_factor(s, total, "cosine", warm) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[warm - 1] == pytest.approx(1.0)  # linear warm-up
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))  # then only down
    assert f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))  # reaching 0 at step `total`
    assert [training.lr_factor(s, total, "constant") for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule='linear' is unknown; choose one of constant, cosine"):
        training.lr_factor(0, total, "linear")


def test_tuple_data_and_schedule_are_trained_and_resumed(tmp_path):
    """(inputs, targets) as a tuple, a cosine schedule, and a resume that matches an uninterrupted run."""

    class Regression(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(8, 1)

        def loss(self, batch):
            x, y = batch
            return (self.net(x).squeeze(1) - y).pow(2).mean()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = x.sum(1)
    kw = dict(batch_size=32, lr=0.2, seed=1, config={"test": "tuple"}, device="cpu", progress=False,
              schedule="cosine", warmup_steps=4)
    torch.manual_seed(0)
    ref = Regression()
    result = fit(ref, (x, y), epochs=8, **kw)
    assert result.history[-1]["train_loss"] < 0.01 * result.history[0]["train_loss"]  # y is linear in x: solved
    torch.manual_seed(0)
    first = Regression()

    def interrupt(model):  # Ctrl-C during epoch 3: the checkpoint of epoch 2 is on disk
        if len(list(tmp_path.glob("r.pt"))) and checkpoints.load_checkpoint(tmp_path / "r.pt")["epoch"] == 2:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        fit(first, (x, y), epochs=8, checkpoint=tmp_path / "r.pt", eval_fn=interrupt, **kw)
    torch.manual_seed(0)
    resumed = Regression()
    fit(resumed, (x, y), epochs=8, checkpoint=tmp_path / "r.pt", **kw)
    assert torch.equal(_weights(resumed), _weights(ref))
    with pytest.raises(ValueError, match=r"first dimensions \[256, 255\]"):
        fit(Regression(), (x, y[:-1]), epochs=1, **kw)


def test_threads_follow_the_cores_or_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("GEN_LIB_THREADS", "1")
        assert system.configure_threads() == 1 == torch.get_num_threads()
        monkeypatch.delenv("GEN_LIB_THREADS")
        assert system.configure_threads() == system.available_cores() == torch.get_num_threads()
        monkeypatch.setenv("GEN_LIB_THREADS", "two")
        with pytest.raises(ValueError, match="GEN_LIB_THREADS='two'"):
            system.configure_threads()
    finally:
        torch.set_num_threads(before)
