"""Bad input is refused before any work, in one line naming the parameter and the allowed values; a checkpoint
whose bytes changed is refused; loading a model that was never trained times nothing and creates nothing."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


from gen_lib import checkpoints, run, samplers
from gen_lib.study import config, precision, recipes, trained
from gen_lib.training import SCHEDULES, fit

sys.path.insert(0, str(Path(__file__).parent))
from _train_script import Noisy, make_data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("section, bad, words", [
    ("flow", {"epochs": -3}, ["epochs=-3", ">= 0"]),
    ("flow", {"lr": 0.0}, ["lr=0.0", "> 0"]),
    ("flow", {"schedule": "nosuch"}, ["schedule='nosuch'", *SCHEDULES]),
    ("ddpm", {"sample_method": "nosuch"}, ["sample_method='nosuch'", *samplers.SAMPLERS]),
    ("ddpm", {"channel_mults": "1,x"}, ["channel_mults='1,x'"]),
    ("priors", {"priors": "gaussian,bogus"}, ["priors='gaussian,bogus'", "bogus"]),
    ("quality_vae", {"prior": "bogus"}, ["prior='bogus'", "[quality_vae]", "gaussian"]),
    ("classifier", {"decay_epochs": 0}, ["decay_epochs=0", "[classifier]", ">= 1"]),
    ("priors", {"batch_size": 0}, ["batch_size=0", ">= 1"]),
])
def test_resolve_refuses_bad_values_naming_them(section, bad, words):
    with pytest.raises(ValueError) as err:
        config.resolve(section, "default", **bad)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_an_overrides_file_is_named_in_its_errors(tmp_path, monkeypatch):
    bad_type = tmp_path / "type.toml"
    bad_type.write_text('[default.flow]\nepochs = "ten"\n')
    monkeypatch.setenv("GEN_LIB_PROFILE_OVERRIDES", str(bad_type))
    with pytest.raises(ValueError, match=r"epochs='ten'.*expected int"):
        config.resolve("flow", "default")
    broken = tmp_path / "broken.toml"
    broken.write_text("[default.flow\nepochs = 3\n")
    monkeypatch.setenv("GEN_LIB_PROFILE_OVERRIDES", str(broken))
    with pytest.raises(ValueError, match=r"GEN_LIB_PROFILE_OVERRIDES=.*broken.toml: not valid TOML"):
        config.resolve("flow", "default")
    monkeypatch.setenv("GEN_LIB_PROFILE_OVERRIDES", "no/such.toml")
    with pytest.raises(ValueError, match=r"GEN_LIB_PROFILE_OVERRIDES=no/such.toml: no such file"):
        config.resolve("flow", "default")


def test_the_runner_checks_every_notebooks_configuration_before_any_work(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(run, "execute_measured", lambda *a, **k: ran.append(a) or (0.0, 0.0))
    args = ["--profile", "smoke", "--no-pdf", "--build-dir", str(tmp_path / "b"), "--report-dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as err:
        run.main([*args, "--param", "priors=gaussian,bogus"])
    assert err.value.code == 2 and ran == []
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "bogus" in lines[-1] and lines[-1].count("error:") == 1
    relative = tmp_path / "over.toml"
    relative.write_text("[smoke.flow]\nepochs = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEN_LIB_PROFILE_OVERRIDES", "over.toml")
    run.main([*args, "--only", "02_flow"])
    assert os.environ["GEN_LIB_PROFILE_OVERRIDES"] == str(relative)  # what the kernel in notebooks/ reads
    assert not (tmp_path / "b" / "runs").exists()


def test_the_config_command_names_its_errors():
    py = [sys.executable, "-m", "gen_lib.study.config"]
    bad = subprocess.run([*py, "default", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "profile 'nope' is unknown" in bad.stderr and "Traceback" not in bad.stderr
    helped = subprocess.run([*py, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert helped.returncode == 0 and "usage:" in helped.stdout
    good = subprocess.run([*py, "smoke", "default"], capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0 and good.stdout.splitlines()[0].split()[:3] == ["parameter", "smoke", "default"]


@pytest.mark.parametrize("args, words", [(["PROFILE=nope"], "PROFILE=nope is unknown; choose one of: default paper smoke"),
                                          (["ONLY=02_nope"], "ONLY=02_nope is unknown; choose from: 01_priors"),
                                          (["BUDGET=ten"], "BUDGET=ten: expected minutes")])
def test_make_refuses_bad_arguments_before_any_set_up(args, words):
    done = subprocess.run(["make", "-s", "report", *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and words in done.stdout + done.stderr
    assert "pip" not in done.stdout and "apt-get" not in done.stdout


def test_make_refuses_an_unknown_dataset_right_after_the_venv_and_lists_its_targets():
    done = subprocess.run(["make", "-s", "check-dataset", "DATASET=nope"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "DATASET=nope is unknown; choose one of: mnist" in done.stdout + done.stderr
    helped = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, cwd=ROOT)
    assert all(t in helped.stdout for t in ("make report", "PROFILE=", "BUDGET=", "make test", "make bench"))


def _tensor_entries(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of each tensor's bytes in torch's zip, in the order they were pickled (the model's first,
    then the optimizer's, the EMA's last), stored uncompressed."""
    with zipfile.ZipFile(path) as z:
        entries = sorted((i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 64),
                         key=lambda i: int(i.filename.rsplit("/", 1)[1]))
        return [(i.header_offset + 30 + len(i.filename.encode()) + len(i.extra), i.file_size) for i in entries]


@pytest.mark.parametrize("where", ["model", "ema"])
def test_a_checkpoint_with_changed_bytes_is_refused(tmp_path, where):
    path = tmp_path / "c.pt"
    fit(Noisy(), make_data(), epochs=1, checkpoint=path, batch_size=32, lr=1e-2, seed=7, config={"t": 1},
        device="cpu", progress=False, ema_decay=0.9)
    good = checkpoints.load_checkpoint(path)
    offset, size = _tensor_entries(path)[0 if where == "model" else -1]
    raw = bytearray(path.read_bytes())
    raw[offset + size // 2 - 32: offset + size // 2 + 32] = b"\xff" * 64  # NaNs in float32
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoints.CheckpointError, match="corrupt: its bytes no longer match"):
        checkpoints.load_checkpoint(path)
    assert good["ema"] is not None
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(checkpoints.CheckpointError, match="corrupt or truncated"):
        checkpoints.load_checkpoint(path)
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.load_checkpoint(tmp_path / "none.pt")


def test_loading_an_untrained_model_times_nothing_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_LIB_BUILD", str(tmp_path / "b"))
    monkeypatch.setattr(precision, "trainer", lambda *a, **k: pytest.fail("a load timed a training step"))
    with pytest.raises(FileNotFoundError, match="run notebook 02_flow first"):
        trained.load("flow", config.resolve("flow", "smoke"))
    assert not (tmp_path / "b" / "runs").exists()  # no run folder for a model that was never trained
