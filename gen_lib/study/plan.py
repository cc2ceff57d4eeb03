"""The run's plan: before anything trains, how long each notebook will take on this machine, and how many epochs
each model can have within the profile's budget.

`gen_lib.measure.rates(profile)` measures, once per machine and configuration (`build/rates.json`), what the
notebooks spend their time on: a training step of every trained model in the precision `precision.settle`
chooses, and the evaluation units (an IWAE image, a quadrature image, a U-Net forward per sampling step, an ODE
level, a flow pass, a bootstrap replicate of the quality scores). `work(profile, rates)` turns the resolved
profile into seconds per notebook: training (epochs x seconds per epoch) and everything else (evaluation,
sampling, the kernel's start and the HTML), which the budget never touches.

`allocate` is the budget's rule (written in `profiles.toml`, [budget]): where the profile's epochs would not fit
`minutes`, the training time left after the fixed work is shared among the budgeted models by their `share_*`
(a model that needs less than its share keeps its epochs and frees the rest for the others), and no model may
fall below its `floor_*`, the epoch at which its measured learning curve came within a stated distance of its
value at the profile's epochs. Below a floor nothing trains: `PlanError` says what budget this machine needs.

The plan is cached per machine, profile and budget (`build/plan-<profile>.json`), so a re-run trains the same
epochs and reuses its models; `config.resolve` reads the current plan, so that JupyterLab and the later
notebooks see the epochs the run trained. A larger budget continues the same runs: epochs are not part of a run's
identity, so training resumes from the last checkpoint. The VAEs' and the DDPM's learning rates are constant and
simply continue; the flow's cosine is re-stretched to the new horizon (its learning rate rises from near zero to
the new cosine's value at the resumed step, then anneals to zero at the new end).

    python -m gen_lib.measure [--profile default] [--budget 45]   # print this machine's plan
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import data, diffusion_nll, paths, system
from .. import priors as registry
from . import config, models, recipes, trained

# the budgeted models' runs: each configured by the section of its name, whose `epochs` the plan may cut
BUDGETED = ("priors", "flow", "ddpm", "quality_vae")
NOTEBOOK_OVERHEAD_S = 20.0  # a kernel's start, imports, figures and the HTML: the smoke profile's notebooks take 15-25 s
PLAN_VERSION = 2  # 2: the Part-2 VAE's epochs are [quality_vae] epochs


class PlanError(SystemExit):
    """The budget cannot give a model its floor on this machine: nothing was trained."""


def _plan_path(profile: str) -> Path:
    return paths.build_dir() / f"plan-{profile}.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- what each notebook does


def _steps(n_images: int, batch: int) -> int:
    return math.ceil(n_images / batch)


def work(profile: str, r: Mapping[str, float], dataset: str = "mnist") -> dict[str, dict[str, Any]]:
    """Per notebook: {"train": {run: (seconds per epoch, the profile's epochs)}, "fixed": seconds of everything
    else}, from the profile's counts and the rates `r` (`measure`). A notebook named here by no formula (a new
    one: CONTRIBUTING.md) is planned at the kernel's overhead alone."""
    n_all = 60_000  # the training split of either dataset
    n_fit = n_all - data.HELD_OUT  # the "fit" split
    pri = config.resolve("priors", profile, dataset=dataset, _plan=False)
    names = registry.select(pri["priors"])
    S, n_test = pri["seeds"], pri["test_subset"] or 10_000
    n_train = pri["train_subset"] or (n_all if recipes.TRAIN_SPLIT["priors"] == "train" else n_fit)
    Q, G, ks = pri["quadrature_subset"], pri["quadrature_grid"], [int(k) for k in pri["k_table"].split(",")]
    n_conv = min(10, max(2, Q // 8))
    fixed01 = 0.0
    per_epoch = 0.0
    for n in names:
        per_epoch += _steps(n_train, pri["batch_size"]) * r[f"step.priors.{n}"] + r.get(f"epoch.priors.{n}", 0.0) \
            + S * min(2000, n_test) * r[f"elbo.{n}"]
        fixed01 += S * (n_test * (r[f"elbo.{n}"] + r[f"iwae.{n}"]) + Q * r[f"quad.{n}"])
        fixed01 += Q * sum(ks) / pri["iwae_k"] * r[f"iwae.{n}"]  # the IWAE-vs-K table
        fixed01 += n_conv * sum(g * g for g in (4, 8, 16, 32, 64, 128)) / G ** 2 * r[f"quad.{n}"]  # grid convergence
    if pri["brute_grid"]:
        fixed01 += 1.25 * pri["brute_grid"] ** 2 / G ** 2 * max(r[f"quad.{n}"] for n in names)

    fl = config.resolve("flow", profile, dataset=dataset, _plan=False)
    n_flow = fl["train_subset"] or n_fit
    flow_epoch = _steps(n_flow, fl["batch_size"]) * r["step.flow"] + r.get("epoch.flow", 0.0) \
        + (fl["eval_subset"] or 10_000) * r["flow.pass"]
    fixed02 = 3 * (fl["test_subset"] or 10_000) * r["flow.pass"] + (fl["n_samples"] + 128) * r["flow.sample"]

    dd = config.resolve("ddpm", profile, dataset=dataset, _plan=False)
    qv = config.resolve("quality_vae", profile, dataset=dataset, _plan=False)
    cl = config.resolve("classifier", profile, dataset=dataset, _plan=False)
    q = config.resolve("quality", profile, dataset=dataset, _plan=False)
    T, steps = dd["T"], [int(s) for s in str(dd["compare_steps"]).split(",")]
    ddpm_epoch = _steps(dd["train_subset"] or n_fit, dd["batch_size"]) * r["step.ddpm"] + r.get("epoch.ddpm", 0.0) \
        + 1000 * r["unet.fp32"]
    unet_images = (dd["n_samples"] * dd["sample_steps"] + 4 * T + dd["compare_n"] * sum(steps)
                   + dd["compare_ancestral"] * T + dd["fid_n"] * (sum(steps) + T * dd["fid_ancestral"]))
    rows03 = len(steps) + dd["fid_ancestral"] + 1
    classifier = (cl["epochs"] + cl["decay_epochs"]) * _steps(cl["train_subset"] or n_fit, cl["batch_size"]) \
        * r["step.classifier"]
    fixed03 = unet_images * r["unet.sample"] + (rows03 * dd["n_boot"] * r["score.ddpm"] if dd["fid_n"] else 0.0) \
        + classifier

    n_q = qv["train_subset"] or n_fit
    qvae_epoch = _steps(n_q, qv["batch_size"]) * r["step.quality_vae"] + r.get("epoch.quality_vae", 0.0) \
        + 2000 * r["qvae.elbo"]
    N, n_lik, cn = q["n_eval"], min(q["nll_n"], 10_000), q["check_n"]
    abar = models.build("ddpm", dd).alphas_cumprod
    levels = lambda s: len(diffusion_nll.ode_levels(abar, s))  # noqa: E731
    halved = lambda s: diffusion_nll.halved(diffusion_nll.ode_levels(abar, s))  # noqa: E731  the check's grid
    fixed04 = (10_000 * r["qvae.elbo"] + n_lik * r["qvae.iwae"] * 1.0
               + (n_lik + cn / 4) * r["qvae.quad"] * (1.0 if q["quadrature_grid"] else 0.0)  # the check: half grid
               + N * 2 * (levels(q["ode_steps"]) - 1) * r["unet.fp32"]  # the ODE's samples: 2 float32 calls a step
               + (n_lik * levels(q["ode_steps"]) + cn * len(halved(q["ode_steps"]))) * r["ode.level"]
               + n_lik * ((q["nll_t"] or T) + 1) * r["unet.fp32"] + n_lik * r["flow.pass"]
               + 7 * q["n_boot"] * r["score.quality"])
    known = {"01_priors": {"train": {"priors": (per_epoch, pri["epochs"])}, "fixed": fixed01},
             "02_flow": {"train": {"flow": (flow_epoch, fl["epochs"])}, "fixed": fixed02},
             "03_ddpm": {"train": {"ddpm": (ddpm_epoch, dd["epochs"])}, "fixed": fixed03},
             "04_quality": {"train": {"quality_vae": (qvae_epoch, qv["epochs"])}, "fixed": fixed04},
             "05_explore": {"train": {}, "fixed": 10.0}}
    return {nb: known.get(nb, {"train": {}, "fixed": 0.0}) for nb in paths.NOTEBOOKS}  # a new one: its kernel alone


# ---------------------------------------------------------------- the budget's rule


def allocate(cost: Mapping[str, float], wanted: Mapping[str, int], shares: Mapping[str, float],
             seconds: float) -> dict[str, int]:
    """Epochs per model within `seconds` of training: each model's `cost` (seconds per epoch) against its share of
    the time; a model whose `wanted` epochs cost less than its share keeps them and frees the rest (water-filling).
    Never more than `wanted`."""
    out, active, left = {}, [m for m in wanted if wanted[m] > 0], max(0.0, seconds)
    out.update({m: 0 for m in wanted if wanted[m] <= 0})
    while active:
        total = sum(shares[m] for m in active)
        fits = [m for m in active if wanted[m] * cost[m] <= left * shares[m] / total]
        if not fits:
            break
        for m in fits:
            out[m] = wanted[m]
            left -= wanted[m] * cost[m]
            active.remove(m)
    for m in active:
        total = sum(shares[n] for n in active)
        out[m] = min(wanted[m], int(left * shares[m] / total / cost[m]))
    return out


def decide(w: Mapping[str, Mapping[str, Any]], budget_s: float, shares: Mapping[str, float],
           floors: Mapping[str, int]) -> dict[str, int]:
    """The epochs of every budgeted model under `budget_s` seconds for the whole run (`w` from `work`). Raises
    PlanError naming the budget this machine needs when a model would fall below its floor."""
    cost = {m: c for nb in w.values() for m, (c, _) in nb["train"].items()}
    wanted = {m: e for nb in w.values() for m, (_, e) in nb["train"].items()}
    fixed = sum(nb["fixed"] + NOTEBOOK_OVERHEAD_S for nb in w.values())
    if budget_s <= 0:
        return dict(wanted)
    epochs = allocate(cost, wanted, shares, budget_s - fixed)
    low = {m: (epochs[m], min(floors.get(m, 0), wanted[m])) for m in epochs if epochs[m] < min(floors.get(m, 0), wanted[m])}
    if low:
        need = budget_s
        while any(allocate(cost, wanted, shares, need - fixed)[m] < min(floors.get(m, 0), wanted[m]) for m in wanted):
            need += 60
        what = ", ".join(f"{m} {e} epochs (floor {f})" for m, (e, f) in low.items())
        raise PlanError(
            f"error: a budget of {budget_s / 60:.0f} min gives {what} on this machine "
            f"({system.hardware()}): below the floors, so nothing was trained. This machine needs about "
            f"{math.ceil(need / 60)} min: run `make report BUDGET={math.ceil(need / 60)}`, or use a GPU.")
    return epochs


# ---------------------------------------------------------------- the plan


# How each floor is read off a learning curve: (metric in the run's history, distance, "abs" or "rel"). The floor is
# the first epoch from which the metric stays within the distance of its value at the profile's epochs.
FLOOR_RULE = {"priors": ("test_elbo", 1.0, "abs"),  # nats per image, mean over seeds, the latest prior
              "flow": ("test_bpd", 0.05, "abs"),  # bits/dim
              "ddpm": ("test_loss", 0.03, "rel"),  # 3 % of the EMA model's test ε-MSE
              "quality_vae": ("test_elbo", 0.05 * 784 * math.log(2), "abs")}  # 0.05 bits/dim in nats per image


def floor_epoch(curve: list[float], distance: float, kind: str = "abs") -> int:
    """The first epoch (1-based) from which every value of `curve` lies within `distance` of its last value
    (`kind` "rel": a fraction of it)."""
    tol = distance * abs(curve[-1]) if kind == "rel" else distance
    epoch = len(curve)
    while epoch > 1 and abs(curve[epoch - 2] - curve[-1]) <= tol:
        epoch -= 1
    return epoch


def floors_from_runs(profile: str = "default", dataset: str = "mnist") -> dict[str, dict[str, Any]]:
    """Each budgeted model's floor from the learning curves of its trained runs under `profile` (the histories in
    their checkpoints): {run: {"floor", "curve", "epochs"}}. For Part 1 the curve of each prior is the mean over its
    seeds, and the floor the latest prior's."""
    out = {}
    for run in BUDGETED:
        metric, distance, kind = FLOOR_RULE[run]
        cfg = config.resolve(run, profile, dataset=dataset)
        if run == "priors":
            curves = []
            for name in registry.select(cfg["priors"]):
                seeds = [trained.history("priors", {**cfg, "prior": name, "seed": s}) for s in range(cfg["seeds"])]
                curves.append([sum(h[e][metric] for h in seeds) / len(seeds) for e in range(len(seeds[0]))])
        else:
            curves = [[h[metric] for h in trained.history(run, cfg)]]
        floors = [floor_epoch(c, distance, kind) for c in curves]
        out[run] = {"floor": max(floors), "curve": curves[floors.index(max(floors))], "epochs": len(curves[0])}
    return out


def budget_of(profile: str, budget: float | None = None) -> tuple[float, dict[str, float], dict[str, int]]:
    """(minutes, shares, floors) of the profile's [budget] section; `budget` (minutes) replaces its minutes."""
    b = config.resolve("budget", profile, _plan=False)
    minutes = float(b["minutes"] if budget is None else budget)
    return (minutes, {m: b[f"share_{m}"] for m in BUDGETED}, {m: b[f"floor_{m}"] for m in BUDGETED})


def make(profile: str, dataset: str = "mnist", budget: float | None = None, *,
         rates: Callable[[], Mapping[str, float]]) -> dict[str, Any]:
    """This machine's plan for `profile` (cached per machine, profile and budget in `build/plan-<profile>.json`,
    which becomes the current plan that `config.resolve` applies): {"epochs": {run: n}, "profile_epochs",
    "minutes": {notebook: planned}, "train_minutes", "budget", "machine", "why"}. `r`: the rates to plan with
    (`gen_lib.measure.rates`, measured once per machine), asked only when no plan is cached."""
    minutes, shares, floors = budget_of(profile, budget)
    mkey = system.machine_key()
    key = f"{mkey} {profile} {dataset} budget {minutes:g} v{PLAN_VERSION}"
    path = _plan_path(profile)
    stored = _read(path)
    if key in stored.get("plans", {}):
        plan = stored["plans"][key]
    else:
        w = work(profile, rates(), dataset)
        epochs = decide(w, minutes * 60, shares, floors)
        planned, train = {}, {}
        for nb, spec in w.items():
            train[nb] = sum(c * epochs[m] for m, (c, _) in spec["train"].items())
            planned[nb] = round((train[nb] + spec["fixed"] + NOTEBOOK_OVERHEAD_S) / 60, 2)
        wanted = {m: e for spec in w.values() for m, (_, e) in spec["train"].items()}
        plan = {"epochs": epochs, "profile_epochs": wanted, "minutes": planned,
                "train_minutes": {nb: round(s / 60, 2) for nb, s in train.items()}, "budget": minutes,
                "machine": system.hardware(), "flags": system.machine()["flags"], "made": time.strftime("%Y-%m-%d %H:%M"),
                "precision": _precisions(profile, dataset)}
        plan["why"] = why(plan)
        plan["overrides"] = {}
        for run, e in epochs.items():
            plan["overrides"][run] = {"epochs": int(e)}
    stored.setdefault("plans", {})[key] = plan
    stored["current"] = key
    _write(path, stored)
    return plan


def _precisions(profile: str, dataset: str) -> str:
    quiet = lambda msg: None  # noqa: E731
    words = {}
    for run in ("priors", "flow", "ddpm"):
        cfg = recipes.settled(run, config.resolve(run, profile, dataset=dataset, _plan=False), quiet)
        words[run] = "bf16" if cfg["bf16"] else "float32"
    kinds = sorted(set(words.values()))
    return kinds[0] if len(kinds) == 1 else ", ".join(f"{m} {p}" for m, p in words.items())


def why(plan: Mapping[str, Any]) -> str:
    """One sentence: the budget, the machine, and whether the profile's epochs stood."""
    cut = {m: e for m, e in plan["epochs"].items() if e < plan["profile_epochs"][m]}
    machine = f"{plan['machine']}, {plan['flags'] or 'no AVX2'}; trains in {plan['precision']}"
    where = f"budget {plan['budget']:g} min on this machine ({machine})" if plan["budget"] \
        else f"no budget in this profile ({machine})"
    if not cut:
        return f"{where}: every model trains the profile's epochs"
    return where + ": fewer epochs for " + ", ".join(f"{m} ({e} of {plan['profile_epochs'][m]})" for m, e in cut.items())


def current(profile: str) -> dict[str, Any] | None:
    """The plan the last run of `profile` made on this machine, or None."""
    stored = _read(_plan_path(profile))
    key = stored.get("current")
    if not key or not key.startswith(system.machine_key() + " "):
        return None
    return stored.get("plans", {}).get(key)


def describe(plan: Mapping[str, Any], notebooks: list[str] | None = None,
             peaks: Mapping[str, float] | None = None) -> str:
    """The plan as the runner prints it: per notebook, its epochs and minutes (and `peaks`, the peak memory in MiB
    of its last run on this machine, where known); the total against the budget."""
    nbs = notebooks or list(plan["minutes"])
    runs_of = {"01_priors": ["priors"], "02_flow": ["flow"], "03_ddpm": ["ddpm"], "04_quality": ["quality_vae"]}
    lines = [f"plan: {plan['why']}"]
    for nb in nbs:
        trained = ", ".join(f"{m} {plan['epochs'][m]} of {plan['profile_epochs'][m]} epochs"
                            for m in runs_of.get(nb, []))
        peak = (peaks or {}).get(nb)
        lines.append(f"  {nb:11s} {plan['minutes'][nb]:5.1f} min" + (
            f"  ({trained}: training {plan['train_minutes'][nb]:.1f} min)" if trained else "")
            + (f"; peak memory {peak / 1024:.1f} GiB in its last run here" if peak
               else "; peak memory: measured by its first run here"))
    total = sum(plan["minutes"][nb] for nb in nbs)
    lines.append(f"  total       {total:5.1f} min" + (f" of a {plan['budget']:g}-minute budget" if plan["budget"] else ""))
    return "\n".join(lines)
