"""This machine's rates and the run's plan: `rates(profile)` measures, once per machine and profile (cached in
`build/rates.json`), the seconds of each unit of work the notebooks do (a training step of every trained model in
the precision `precision.settle` chooses; an IWAE image, a quadrature image, a U-Net forward per sampling step, an
ODE level, a flow pass, a bootstrap replicate of the quality scores), on untrained models of the profile's sizes:
the cost of a step does not depend on the weights. `gen_lib.study.plan` turns them into the plan.

    python -m gen_lib.measure [--profile default] [--budget 45]   # measure (once) and print this machine's plan
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import torch

from . import data, diffusion_nll, intervals, paths, quadrature, system
from . import priors as registry
from .study import config, models, plan, recipes
from .study import trained  # noqa: F401  (registers each dataset's classifier as a feature map)
from .study.plan import _read, _write
from .training import adam
from .vae import IWAE_CHUNK

RATES_FILE = "rates.json"


def _seconds(fn: Callable[[], Any], n: int = 3, warmup: int = 1) -> float:
    """Seconds per call of `fn`, the median of `n` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _in_scratch(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of `fn()` run with a fresh, empty build folder (nothing cached, nothing resumed)."""
    old = os.environ.get("GEN_LIB_BUILD")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GEN_LIB_BUILD"] = tmp
        try:
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, out
        finally:
            if old is None:
                os.environ.pop("GEN_LIB_BUILD", None)
            else:
                os.environ["GEN_LIB_BUILD"] = old


def _training(train: Callable[[int, int], Any], steps: tuple[int, int]) -> tuple[float, float, Any]:
    """(seconds per step, seconds per epoch beyond its steps, the longer run's result) of the recipe
    `train(n_steps, epochs)` run from scratch: the slope between two lengths of one epoch (the fixed costs of a call,
    building the model and the first steps' kernel choices, cancel), and what a second epoch adds beyond its steps
    (the checkpoint, the data order). Each is run twice and averaged: a long run meets the machine's disturbances
    too, so the fastest of a few would promise too much."""
    short = statistics.mean(_in_scratch(lambda: train(steps[0], 1))[0] for _ in range(2))
    runs = [_in_scratch(lambda: train(steps[1], 1)) for _ in range(2)]
    long, result = statistics.mean(r[0] for r in runs), runs[-1][1]
    per_step = max(long - short, 1e-9) / (steps[1] - steps[0])
    two = statistics.mean(_in_scratch(lambda: train(steps[0], 2))[0] for _ in range(2))
    return per_step, max(0.0, two - short - steps[0] * per_step), result


def measure(profile: str, dataset: str = "mnist", log: Callable[[str], None] = print) -> dict[str, float]:
    """Seconds per unit of this machine's work under `profile` (what `plan.work` multiplies by its counts): the
    training recipes' own loops on a few batches of the training images, and the evaluation functions on the
    models those few batches trained (a trained model's posteriors are narrower than an untrained one's, which
    the adaptive quadrature pays for)."""
    r: dict[str, float] = {}
    quiet = lambda msg: None  # noqa: E731
    g = torch.Generator().manual_seed(0)
    info = data.info(dataset)
    shape = info.shape
    steps = (4, 44)
    try:
        images = data.load_mnist("fit", dataset=dataset)[0][: steps[1] * 128]
        test = data.load_mnist("test", dataset=dataset)[0][:500]
    except Exception:  # no data on this machine (the library alone): random 8-bit images, the same sizes
        images = torch.randint(0, 256, (steps[1] * 128, *shape), generator=g).float() / 255
        test = images[:500]
    pri = recipes.settled("priors", config.resolve("priors", profile, dataset=dataset), quiet)
    names = registry.select(pri["priors"])
    b = pri["batch_size"]
    flat = data.binarize(test).flatten(1)  # vae_eval.evaluate's batch of 500
    for name in names:
        r[f"step.priors.{name}"], r[f"epoch.priors.{name}"], runs = _training(lambda n, e: recipes.train_vaes(
            {**pri, "epochs": e, "train_subset": n * b}, data.binarize(images), prior=name,
            seeds=range(pri["seeds"]), progress=False, log=quiet), steps)
        vae = runs[0].model.eval()
        with torch.no_grad():  # as vae_eval.evaluate computes them: batches of 500, IWAE in chunks
            r[f"iwae.{name}"] = _seconds(lambda: vae.iwae(flat, pri["iwae_k"], chunk=IWAE_CHUNK), n=1) / len(flat)
            r[f"elbo.{name}"] = _seconds(lambda: vae.elbo(flat)) / len(flat)
            r[f"quad.{name}"] = _seconds(lambda: quadrature.log_likelihood_quadrature(
                vae, flat[:16], n_grid=pri["quadrature_grid"]), n=1) / 16  # per image at the profile's grid

    flow_cfg = recipes.settled("flow", config.resolve("flow", profile, dataset=dataset), quiet)
    fb = flow_cfg["batch_size"]
    r["step.flow"], r["epoch.flow"], run = _training(lambda n, e: recipes.train_flow(
        {**flow_cfg, "epochs": e, "train_subset": n * fb}, images, progress=False, log=quiet), steps)
    flow = run.model.eval()
    y = data.dequantize(test[:fb], generator=g)
    with torch.no_grad():
        r["flow.pass"] = _seconds(lambda: flow.log_prob(y)) / len(y)
        r["flow.sample"] = _seconds(lambda: flow.sample(len(y))) / len(y)

    ddpm_cfg = recipes.settled("ddpm", config.resolve("ddpm", profile, dataset=dataset), quiet)
    db = ddpm_cfg["batch_size"]
    r["step.ddpm"], r["epoch.ddpm"], run = _training(lambda n, e: recipes.train_ddpm(
        {**ddpm_cfg, "epochs": e, "train_subset": n * db}, images, progress=False, log=quiet), steps)
    ddpm = run.result.ema.eval()
    x0 = data.to_signed(data.dequantize(test[:db], generator=g))
    n_s = min(ddpm_cfg["sample_batch"], 250)
    with torch.no_grad():
        r["unet.sample"] = _seconds(lambda: ddpm.sample(n_s, steps=4, method="ddim", bf16=ddpm_cfg["bf16"]),
                                    n=1) / (4 * n_s)  # per image and step, in the sampling precision
        t = torch.zeros(len(x0), dtype=torch.long)
        r["unet.fp32"] = _seconds(lambda: ddpm.network(x0, t), n=1) / len(x0)
    levels = len(diffusion_nll.ode_levels(ddpm.alphas_cumprod, 4))
    r["ode.level"] = _seconds(lambda: diffusion_nll.ode_nll(ddpm, x0[:16], steps=4), n=1) / (16 * levels)

    qcfg = config.resolve("quality", profile, dataset=dataset)
    vcfg = recipes.settled("quality_vae", config.resolve("quality_vae", profile, dataset=dataset), quiet)
    qb = vcfg["batch_size"]
    r["step.quality_vae"], r["epoch.quality_vae"], run = _training(lambda n, e: recipes.train_vae(
        {**vcfg, "epochs": e, "train_subset": n * qb}, images, section="quality_vae", progress=False, log=quiet),
        steps)
    qvae = run.model.eval()
    xc = data.dequantize(test[:qb], generator=g).flatten(1)
    with torch.no_grad():
        r["qvae.iwae"] = _seconds(lambda: qvae.iwae(xc[:16], qcfg["nll_k"]), n=1) / 16
        r["qvae.elbo"] = _seconds(lambda: qvae.elbo(xc)) / len(xc)
        r["qvae.quad"] = _seconds(lambda: quadrature.log_likelihood_quadrature(
            qvae, xc[:16], n_grid=qcfg["quadrature_grid"]), n=1) / 16
    ccfg = config.resolve("classifier", profile, dataset=dataset)
    clf = models.build("classifier", ccfg)
    cb = ccfg["batch_size"]
    xi, yi = images[:cb], torch.randint(0, 10, (cb,), generator=g)
    opt = adam(clf, 1e-4)

    def classifier_step():
        loss = clf.loss((xi, yi))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    r["step.classifier"] = _seconds(classifier_step)

    for key, n in (("score.quality", qcfg["n_eval"]), ("score.ddpm", ddpm_cfg["fid_n"])):
        if n:
            f_ref = torch.randn(n, ccfg["feature_dim"], generator=g)
            f_set = torch.randn(n, ccfg["feature_dim"], generator=g)
            r[key] = _seconds(lambda: intervals.quality_intervals_from_features(
                f_ref, f_set, n_boot=4, k=qcfg["pr_k"], seed=0), n=1) / 4  # per replicate and row
    return r


def rates(profile: str, dataset: str = "mnist", log: Callable[[str], None] = print) -> dict[str, float]:
    """`measure`, cached in `build/rates.json` under this machine and the profile's resolved sizes."""
    key = f"{system.machine_key()} {profile} {_profile_hash(profile, dataset)}"
    table = _read(paths.build_dir() / RATES_FILE)
    if key in table:
        return table[key]
    t0 = time.perf_counter()
    log(f"measuring this machine for the {profile} profile (training steps, sampling and evaluation rates; "
        "once, cached in build/rates.json) ...")
    value = measure(profile, dataset, log)
    table = _read(paths.build_dir() / RATES_FILE)
    table[key] = value
    _write(paths.build_dir() / RATES_FILE, table)
    log(f"measured in {time.perf_counter() - t0:.0f} s")
    return value


def _profile_hash(profile: str, dataset: str) -> str:
    text = json.dumps({s: dict(config.resolve(s, profile, dataset=dataset, _plan=False))
                       for s in config.sections()}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]



def main(argv: list[str] | None = None) -> None:
    system.configure_threads()  # torch's threads for this process: GEN_LIB_THREADS, else its cores
    parser = argparse.ArgumentParser(prog="python -m gen_lib.measure", description=__doc__.split("\n\n")[0].split(": ")[0])
    parser.add_argument("--profile", default="default", choices=config.PROFILES)
    parser.add_argument("--dataset", default="mnist", choices=list(data.INFO))
    parser.add_argument("--budget", type=float, help="minutes for the whole run (default: the profile's)")
    parser.add_argument("--floors", action="store_true",
                        help="print each model's floor from the learning curves of the profile's trained runs")
    args = parser.parse_args(argv)
    if args.floors:
        for run, f in plan.floors_from_runs(args.profile, args.dataset).items():
            metric, distance, kind = plan.FLOOR_RULE[run]
            print(f"{run}: floor {f['floor']} of {f['epochs']} epochs ({metric} within {distance:.3g}"
                  f"{' x its final value' if kind == 'rel' else ''}); curve " + ", ".join(f"{v:.4g}" for v in f["curve"]))
        return
    print(plan.describe(plan.make(args.profile, args.dataset, args.budget,
                                  rates=lambda: rates(args.profile, args.dataset))))


if __name__ == "__main__":
    main()
