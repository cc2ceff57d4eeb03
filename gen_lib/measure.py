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
import time
from typing import Any, Callable

import torch

from . import data, diffusion_nll, intervals, paths, quadrature, system
from . import priors as registry
from .seeds import stack
from .study import config, models, plan, precision, recipes
from .study.plan import _read, _write
from .training import adam, autocast

RATES_FILE = "rates.json"


def _seconds(fn: Callable[[], Any], n: int = 2, warmup: int = 1) -> float:
    """Seconds per call of `fn`, the best of `n` calls after `warmup` (the least disturbed)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _step_seconds(model: torch.nn.Module, batch: Any, loss: Callable, bf16: bool, channels_last: bool = False) -> float:
    """One training step as `training.fit` runs it (fused Adam, autocast, memory format), seconds."""
    step = precision.trainer(model, batch, loss, bf16, channels_last)
    return _seconds(step, n=3)


def _elbo_per_example(model, batch, noise):
    return -model.elbo(batch, check=False, noise=noise)


def measure(profile: str, dataset: str = "mnist", log: Callable[[str], None] = print) -> dict[str, float]:
    """Seconds per unit of this machine's work under `profile` (what `work` multiplies by its counts), measured on
    untrained models of the profile's sizes (the cost of a step does not depend on the weights)."""
    r: dict[str, float] = {}
    quiet = lambda msg: None  # noqa: E731
    g = torch.Generator().manual_seed(0)
    info = data.info(dataset)
    shape = info.shape
    pri = recipes.settled("priors", config.resolve("priors", profile, dataset=dataset), quiet)
    names = registry.select(pri["priors"])
    b, S = pri["batch_size"], max(1, pri["seeds"])
    xb = (torch.rand(64, info.dim, generator=g) > 0.5).float()
    for name in names:
        nets = []
        for s in range(S):
            torch.manual_seed(s)
            nets.append(models.build("priors", {**pri, "prior": name, "seed": s}))
        if pri["stack_seeds"] and S > 1:
            batch = (torch.rand(b, S, info.dim, generator=g) > 0.5).float()
            noise = torch.randn(b, S, nets[0].latent_dim, generator=g)
            model = stack(nets)
            opt = adam(model, 1e-4)

            def step(model=model, opt=opt, batch=batch, noise=noise):
                with autocast(torch.device("cpu"), pri["bf16"]):
                    loss = _elbo_per_example(model, batch, noise).float().mean(0).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            r[f"step.priors.{name}"] = _seconds(step, n=3)
        else:
            r[f"step.priors.{name}"] = S * _step_seconds(nets[0], (torch.rand(b, info.dim, generator=g) > 0.5).float(),
                                                         lambda m, x: m.loss(x, check=False), pri["bf16"])
        vae = nets[0].eval()
        with torch.no_grad():
            r[f"iwae.{name}"] = _seconds(lambda: vae.iwae(xb[:32], pri["iwae_k"])) / 32  # per image at K
            r[f"elbo.{name}"] = _seconds(lambda: vae.elbo(xb)) / 64
            r[f"quad.{name}"] = _seconds(lambda: quadrature.log_likelihood_quadrature(
                vae, xb[:4], n_grid=pri["quadrature_grid"]), n=1) / 4  # per image at the profile's grid

    flow_cfg = recipes.settled("flow", config.resolve("flow", profile, dataset=dataset), quiet)
    flow = models.build("flow", flow_cfg)
    y = torch.rand(flow_cfg["batch_size"], *shape, generator=g).mul(0.98).add(0.01)
    r["step.flow"] = _step_seconds(flow, y, lambda m, x: m.loss(x), flow_cfg["bf16"])
    flow.eval()
    with torch.no_grad():
        r["flow.pass"] = _seconds(lambda: flow.log_prob(y)) / len(y)
        r["flow.sample"] = _seconds(lambda: flow.sample(len(y))) / len(y)

    ddpm_cfg = recipes.settled("ddpm", config.resolve("ddpm", profile, dataset=dataset), quiet)
    ddpm = models.build("ddpm", ddpm_cfg)
    x0 = torch.rand(ddpm_cfg["batch_size"], *shape, generator=g) * 2 - 1
    r["step.ddpm"] = _step_seconds(ddpm, x0, lambda m, x: m.loss(x), ddpm_cfg["bf16"], ddpm_cfg["channels_last"])
    ddpm.eval()
    n_s = min(ddpm_cfg["sample_batch"], 100)
    with torch.no_grad():
        r["unet.sample"] = _seconds(lambda: ddpm.sample(n_s, steps=4, method="ddim", bf16=ddpm_cfg["bf16"]),
                                    n=1) / (4 * n_s)  # per image and step, in the sampling precision
        t = torch.zeros(len(x0), dtype=torch.long)
        r["unet.fp32"] = _seconds(lambda: ddpm.network(x0, t), n=1) / len(x0)
    levels = len(diffusion_nll.ode_levels(ddpm.alphas_cumprod, 4))
    r["ode.level"] = _seconds(lambda: diffusion_nll.ode_nll(ddpm, x0[:8], steps=4), n=1) / (8 * levels)

    qcfg = recipes.settled("quality_vae", config.resolve("quality", profile, dataset=dataset), quiet)
    qvae = models.build("quality_vae", qcfg)
    xc = torch.rand(qcfg["vae_batch_size"], info.dim, generator=g).mul(0.98).add(0.01)
    r["step.quality_vae"] = _step_seconds(qvae, xc, lambda m, x: m.loss(x, check=False), qcfg["vae_bf16"])
    qvae.eval()
    with torch.no_grad():
        r["qvae.iwae"] = _seconds(lambda: qvae.iwae(xc[:8], qcfg["nll_k"])) / 8
        r["qvae.elbo"] = _seconds(lambda: qvae.elbo(xc)) / len(xc)
        r["qvae.quad"] = _seconds(lambda: quadrature.log_likelihood_quadrature(
            qvae, xc[:4], n_grid=qcfg["quadrature_grid"]), n=1) / 4
    clf = models.build("classifier", qcfg)
    xi, yi = torch.rand(qcfg["classifier_batch_size"], *shape, generator=g), torch.randint(0, 10, (qcfg["classifier_batch_size"],))
    opt = adam(clf, 1e-4)

    def classifier_step():
        loss = clf.loss((xi, yi))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    r["step.classifier"] = _seconds(classifier_step, n=3)

    for key, n in (("score.quality", qcfg["n_eval"]), ("score.ddpm", ddpm_cfg["fid_n"])):
        if n:
            f_ref = torch.randn(n, qcfg["feature_dim"], generator=g)
            f_set = torch.randn(n, qcfg["feature_dim"], generator=g)
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
