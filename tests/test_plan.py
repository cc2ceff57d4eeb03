"""The run's plan (gen_lib.study.plan): a simulated slow machine gets fewer epochs and, below a floor, a refusal
that names the budget it needs; the same machine gets the same plan twice (also with its rates perturbed);
a larger budget continues the same runs; `paper` is never budgeted; a first run's log gives minutes.

The machines are simulated by their rates (seconds per unit of work, what `gen_lib.measure.rates` measures):
nothing here times anything."""

import json
import math

import pytest
import torch

from gen_lib import paths, run, system
from gen_lib import priors as registry
from gen_lib.study import config, plan, recipes

# Seconds per unit of one simulated machine (the order of magnitude of a 2-core CPU); `machine(k)` is k times slower.
UNITS = {"step.flow": 0.05, "flow.pass": 1.5e-4, "flow.sample": 1.5e-4, "step.ddpm": 0.14, "unet.sample": 4e-4,
         "unet.fp32": 8e-4, "ode.level": 2.8e-3, "step.quality_vae": 0.01, "qvae.iwae": 0.03, "qvae.elbo": 3.5e-5,
         "qvae.quad": 0.19, "step.classifier": 0.033, "score.quality": 0.043, "score.ddpm": 0.0055}
PER_PRIOR = {"step.priors": 0.02, "iwae": 1.2e-3, "elbo": 2.5e-5, "quad": 0.065}


def machine(k: float = 1.0) -> dict[str, float]:
    rates = {key: k * v for key, v in UNITS.items()}
    for name in registry.REGISTRY:
        rates.update({f"{key}.{name}": k * v for key, v in PER_PRIOR.items()})
    return rates


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_LIB_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(plan, "_precisions", lambda profile, dataset: "float32")  # no timing in these tests
    return tmp_path / "build"


def _profile_epochs(profile: str) -> dict[str, int]:
    return {run_: config.resolve(run_, profile, _plan=False)["epochs"] for run_ in plan.BUDGETED}


def _total(p: dict) -> float:
    return sum(p["minutes"].values())


def test_a_fast_machine_keeps_the_profiles_epochs(build):
    p = plan.make("default", rates=lambda: machine(1.0))
    assert p["epochs"] == _profile_epochs("default")
    assert _total(p) <= p["budget"]
    assert "every model trains the profile's epochs" in p["why"]


def _first_cut(budget: float) -> float:
    """The smallest slowdown k (in steps of 0.05) at which the profile's epochs no longer fit `budget` minutes."""
    _, shares, floors = plan.budget_of("default")
    wanted = _profile_epochs("default")
    for i in range(200):
        k = 1.0 + 0.05 * i
        if plan.decide(plan.work("default", machine(k)), budget * 60, shares, {}) != wanted:
            return k
    raise AssertionError("no slowdown up to 11x cuts an epoch")


def test_a_slow_machine_gets_fewer_epochs_within_the_budget_and_above_the_floors(build):
    budget, shares, floors = plan.budget_of("default")
    k = _first_cut(budget)
    slow = plan.make("default", rates=lambda: machine(k))
    wanted = _profile_epochs("default")
    assert any(slow["epochs"][m] < wanted[m] for m in wanted), slow
    assert all(floors[m] <= slow["epochs"][m] <= wanted[m] for m in wanted), slow
    assert _total(slow) <= budget
    assert "fewer epochs for" in slow["why"]
    assert config.resolve("flow", "default")["epochs"] == slow["epochs"]["flow"]  # the notebooks see the plan
    assert config.resolve("ddpm", "default")["epochs"] == slow["epochs"]["ddpm"]
    assert config.resolve("quality_vae", "default")["epochs"] == slow["epochs"]["quality_vae"]
    assert config.resolve("priors", "default", epochs=3)["epochs"] == 3  # an explicit override still wins


def test_below_a_floor_nothing_trains_and_the_error_names_the_budget_needed(build):
    with pytest.raises(plan.PlanError) as err:
        plan.make("default", rates=lambda: machine(20.0))
    text = str(err.value)
    assert "BUDGET=" in text and "GPU" in text and "floor" in text
    need = int(text.split("BUDGET=")[1].split("`")[0])
    assert need > 45
    p = plan.make("default", budget=need, rates=lambda: machine(20.0))  # that budget gives every model its floor
    _, _, floors = plan.budget_of("default")
    assert all(p["epochs"][m] >= min(floors[m], e) for m, e in _profile_epochs("default").items())
    assert plan.current("default") == p


def test_the_same_machine_twice_gets_the_same_plan_even_with_rates_perturbed(build):
    k = _first_cut(plan.budget_of("default")[0])  # a machine whose plan cuts epochs
    first = plan.make("default", rates=lambda: machine(k))
    calls = []
    for factor in (0.9, 1.1):
        again = plan.make("default", rates=lambda f=factor: calls.append(f) or machine(k * f))
        assert again == first
    assert calls == []  # cached per machine, profile and budget: not measured again
    stored = json.loads((build / "plan-default.json").read_text())
    assert stored["current"].startswith(system.machine_key() + " ")


def test_a_plan_of_another_machine_is_not_applied(build):
    plan.make("default", budget=46, rates=lambda: machine(1.0))
    path = build / "plan-default.json"
    stored = json.loads(path.read_text())
    stored["current"] = "0123456789ab" + stored["current"][12:]
    stored["plans"] = {stored["current"]: next(iter(stored["plans"].values()))}
    path.write_text(json.dumps(stored))
    assert config.resolve("flow", "default")["epochs"] == config.resolve("flow", "default", _plan=False)["epochs"]


def test_paper_is_not_budgeted(build):
    p = plan.make("paper", rates=lambda: machine(50.0))  # a very slow machine
    assert p["budget"] == 0 and p["epochs"] == _profile_epochs("paper")
    assert "no budget" in p["why"]
    assert config.resolve("ddpm", "paper")["epochs"] == 100


def test_allocate_shares_and_caps():
    cost, shares = {"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 0.5}
    assert plan.allocate(cost, {"a": 2, "b": 100}, shares, 50) == {"a": 2, "b": 48}  # a's unused share goes to b
    assert plan.allocate(cost, {"a": 100, "b": 100}, shares, 50) == {"a": 25, "b": 25}
    assert plan.allocate(cost, {"a": 3, "b": 3}, shares, 1000) == {"a": 3, "b": 3}  # never more than wanted


def test_a_larger_budget_continues_the_run(build):
    """Epochs are not part of a run's identity: the larger plan's run resumes the smaller one's checkpoint."""
    x = (torch.rand(64, 784) > 0.5).float()
    cfg = {**config.resolve("quality_vae", "smoke"), "train_subset": 64}
    small = recipes.train_vae({**cfg, "epochs": 1}, x.view(64, 1, 28, 28) * 0.5 + 0.25, section="quality_vae",
                              progress=False)
    large = recipes.train_vae({**cfg, "epochs": 2}, x.view(64, 1, 28, 28) * 0.5 + 0.25, section="quality_vae",
                              progress=False)
    assert large.folder == small.folder
    assert large.result.status == "resumed" and len(large.history) == 2
    assert large.history[0] == small.history[0]
    segments = json.loads((large.folder / "provenance.json").read_text())["segments"]
    assert [s["status"] for s in segments] == ["trained", "resumed"] and segments[-1]["epochs"] == 2


def test_a_first_runs_log_gives_minutes_and_a_refusal_comes_before_any_work(build, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run.measure, "rates", lambda profile, dataset, log: machine(1.0))
    done = []
    monkeypatch.setattr(run, "execute_measured", lambda name, *a, **k: done.append(name) or (60.0, 100.0))
    run.main(["--profile", "default", "--no-pdf", "--only", "02_flow", "--build-dir", str(build),
              "--report-dir", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert done == ["02_flow"]
    assert "unknown" not in out and "plan:" in out
    start = next(line for line in out.splitlines() if "start 02_flow" in line)
    assert "expected" in start and " min" in start
    assert "planned" in next(line for line in out.splitlines() if "end 02_flow" in line)
    timings = json.loads((build / "timings-default.json").read_text())
    assert timings["02_flow"]["planned_seconds"] > 0
    done.clear()
    monkeypatch.setattr(run.measure, "rates", lambda profile, dataset, log: machine(20.0))
    with pytest.raises(SystemExit) as err:
        run.main(["--profile", "default", "--budget", "30", "--no-pdf", "--build-dir", str(build),
                  "--report-dir", str(tmp_path / "report")])
    assert "BUDGET=" in str(err.value) and done == []
    assert not (build / "runs").exists()
    assert paths.build_dir() == build


def test_a_floor_is_the_first_epoch_from_which_the_curve_stays_within_its_distance():
    assert plan.floor_epoch([10.0, 5.0, 3.0, 2.9, 2.95, 2.9], 0.2) == 3
    assert plan.floor_epoch([10.0, 2.9, 5.0, 2.9], 0.2) == 4  # came close, then left: not yet
    assert plan.floor_epoch([0.05, 0.04, 0.031, 0.030], 0.05, "rel") == 3  # within 5 % of 0.030
    assert plan.floor_epoch([1.0], 0.0) == 1


def test_part_1_is_planned_on_the_whole_training_split():
    r = machine(1.0)
    pri = config.resolve("priors", "default", _plan=False)
    names = registry.select(pri["priors"])
    per_epoch, _ = plan.work("default", r)["01_priors"]["train"]["priors"]
    evals = sum(pri["seeds"] * min(2000, pri["test_subset"] or 10_000) * r[f"elbo.{n}"] for n in names)
    steps = math.ceil((pri["train_subset"] or 60_000) / pri["batch_size"])
    assert recipes.TRAIN_SPLIT["priors"] == "train" and not pri["train_subset"]
    assert per_epoch - evals == pytest.approx(steps * sum(r[f"step.priors.{n}"] for n in names))
