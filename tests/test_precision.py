"""The per-machine precision choice (gen_lib.study.precision) and the ceiling benchmark's recorder."""

import pytest
import torch
from torch import nn

from gen_lib.study import config, precision


@pytest.fixture
def fake_times(monkeypatch):
    """Step times by setting, without running models: {"fp32": ms, "bf16": ms, ...}; counts the measurements."""
    state = {"ms": {}, "calls": 0}

    def trainer(model, batch, loss, bf16, channels_last):
        return ("bf16" if bf16 else "fp32") + ("+cl" if channels_last else "")

    def time_step(setting, n, warmup=2):
        state["calls"] += 1
        return state["ms"][setting]
    monkeypatch.setattr(precision, "trainer", trainer)
    monkeypatch.setattr(precision, "_time_step", time_step)
    return state


def settled(section, **overrides):
    """A section's configuration as a training recipe sees it: resolved, then its "auto" precisions settled."""
    return precision.settle(section, config.resolve(section, "smoke", **overrides))


def test_auto_takes_the_faster_setting_and_caches_it_per_machine(tmp_build, fake_times):
    fake_times["ms"] = {"fp32": 10.0, "bf16": 5.0}
    cfg = settled("priors", bf16="auto")
    assert cfg["bf16"] is True and "bf16 autocast (2.00x" in cfg["precision"]
    calls = fake_times["calls"]
    fake_times["ms"] = {"fp32": 5.0, "bf16": 10.0}  # a re-measurement would now choose fp32: the cache must win
    assert settled("priors", bf16="auto")["bf16"] is True
    assert fake_times["calls"] == calls
    (tmp_build / "build" / "precision.json").unlink()  # another machine (or a cleared cache) measures again
    cfg = settled("priors", bf16="auto")
    assert cfg["bf16"] is False and cfg["precision"].startswith("float32 (bf16 autocast ran at 0.50x")


def test_bf16_must_win_by_the_margin(tmp_build, fake_times):
    fake_times["ms"] = {"fp32": 10.0, "bf16": 10.0 / (precision.MARGIN - 0.05)}
    assert settled("priors", bf16="auto")["bf16"] is False


def test_channels_last_for_the_unet(tmp_build, fake_times):
    fake_times["ms"] = {"fp32": 200.0, "fp32+cl": 170.0, "bf16": 120.0, "bf16+cl": 100.0}
    cfg = settled("ddpm", bf16="auto", channels_last="auto")
    assert cfg["bf16"] is True and cfg["channels_last"] is True
    assert "channels_last (1.20x)" in cfg["precision"]


def test_explicit_values_are_kept_and_said(tmp_build, fake_times):
    cfg = settled("flow", bf16=False)
    assert cfg["bf16"] is False and cfg["precision"] == "float32 (set by the profile)"
    assert fake_times["calls"] == 0


def test_resolving_a_configuration_runs_nothing(tmp_build, fake_times):
    assert config.resolve("ddpm", "paper", bf16="auto")["bf16"] == "auto" and fake_times["calls"] == 0


def test_a_bad_value_is_refused_naming_the_choices(tmp_build):
    with pytest.raises(ValueError, match=r"bf16='yes' in \[flow\]: choose true, false or \"auto\""):
        config.resolve("flow", "smoke", bf16="yes")


def test_a_real_measurement_gives_booleans_and_times(tmp_build):
    entry = precision.choose("vae", {"batch_size": 16}, log=lambda s: None)
    assert isinstance(entry["bf16"], bool) and entry["channels_last"] is False
    assert set(entry["ms"]) == {"fp32", "bf16"} and all(v > 0 for v in entry["ms"].values())
    assert entry["machine"]["threads"] == torch.get_num_threads()


def test_the_ceiling_records_exactly_the_gemms_autograd_runs():
    from benchmarks import ceiling

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(8, 6)

    def step():
        net(x).square().sum().backward()
    calls = ceiling.record(step)
    # forward: 2 addmm; backward: the 2 weight gradients and the hidden layer's input gradient (not the input's)
    assert len(calls) == 5
    flops = 2 * 8 * (6 * 5 + 5 * 3) * 2 + 2 * 8 * 5 * 3
    assert ceiling._gflop(calls) * 1e9 == pytest.approx(flops)
    result = ceiling.ceiling(step)
    assert result["ms"] > 0 and result["dtype"] in ("float32", "bfloat16") and result["ops"] == 5


def test_paired_fractions_use_the_ceiling_replayed_around_each_loop():
    from benchmarks import ceiling

    net = nn.Linear(6, 5)
    x = torch.randn(8, 6)
    top = ceiling.ceiling(lambda: net(x).sum().backward(), draws=1)
    seen = []

    def loop(ms):
        def run():
            seen.append(ms)
            return ms
        return run
    got = ceiling.paired(top, {"a": loop(2.0), "b": loop(4.0)}, rounds=2, min_seconds=0.001)
    assert seen == [2.0, 4.0, 2.0, 4.0]  # the loops in turn, each round
    c = got["ceiling"]
    assert len(c) == 5 and all(v > 0 for v in c)  # one replay before the first loop, one after each
    assert got["a"]["ms"] == [2.0, 2.0] and got["b"]["ms"] == [4.0, 4.0]
    assert got["a"]["fraction"] == pytest.approx([(c[0] + c[1]) / 2 / 2.0, (c[2] + c[3]) / 2 / 2.0])
    assert got["b"]["fraction"] == pytest.approx([(c[1] + c[2]) / 2 / 4.0, (c[3] + c[4]) / 2 / 4.0])
    assert ceiling.spread([0.5, 0.4, 0.6]) == "50% (40%-60%)"


def test_a_setting_far_slower_at_its_first_step_is_not_timed_further(tmp_build, fake_times):
    """bf16 emulated on a CPU without bf16 units runs 10-25x slower: one step says so, the full timing is skipped."""
    fake_times["ms"] = {"fp32": 10.0, "bf16": 10.0 * precision.SLOW * 1.5}
    entry = precision.choose("vae", {"batch_size": 16}, log=lambda s: None)
    assert entry["bf16"] is False and entry["ms"]["bf16"] == fake_times["ms"]["bf16"]
    assert fake_times["calls"] == 2 * 1 + 1  # fp32 twice (two rounds), bf16 once
