"""The numbers and tables of each report section, computed from a notebook's results and written for
LaTeX: one function per section writes its `\\val{...}` macros (`priors`, `flow`, `ddpm`, `quality`),
and one per table writes that table. The notebooks only call them, so every macro name lives here and
is tested on small synthetic results (tests/test_report_numbers.py).

The sentences themselves come from `table1`, `quality` and `likelihood`; this module only gathers them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from .. import data, samplers, stats
from .. import priors as prior_registry
from ..flows import mean_and_stderr
from ..study import config, models, recipes
from . import dataframe_table, declare_kinds, fmt, join_words, latex_escape, mean_pm, write_macros
from . import likelihood as likelihood_text
from . import quality as quality_text
from . import table1


# Each macro's kind (`gen_lib.report.MACRO_KINDS`): "sentence" for text computed with a branch per outcome, the
# only kind that decides a comparing word of the report; "number"/"interval" for values; "name" for labels.
_PER_PRIOR = ("elbo", "elbostd", "iwae", "iwaestd", "logpx", "gap", "iwaeelbo", "kl", "kone", "kmax", "lastgain",
              "finalstd")
declare_kinds({
    **{f"priors.{k}": "number" for k in ("seeds", "epochs", "iwaek", "ntest", "nquad", "ntrain", "grid", "kmax",
                                          "minutes", "trainminutes", "evalminutes", "gridchange", "count",
                                          "flow.nlayers", "ncompare", "gapmin", "gapmax", "gapmean", "frac-above",
                                          "origgap", "origiwae", "origperpixel", "detectable")},
    **{f"priors.{k}": "name" for k in ("labels", "described", "split", "kl.analytic", "kl.mc", "base", "precision",
                                        "stacking")},
    **{f"priors.{k}": "sentence" for k in ("best", "bestiwae", "ordering", "kcurve", "convergence", "brute",
                                            "iwaeelbo.side", "gap.side", "gapmean.side", "gridconv", "orig.verdict",
                                            "orig.vsours")},
    "priors.*.list": "number", "priors.*.iwaeelboside": "sentence", "priors.*.gapside": "sentence",
    **{f"priors.*.{k}": "number" for k in _PER_PRIOR},
    "flow.schedule": "name", "flow.precision": "name", "flow.*": "number",
    **{f"ddpm.{k}": "name" for k in ("bf16", "method", "device", "fid.on", "fid.samplers", "fid.best", "mults")},
    "ddpm.fid.realci": "interval", "ddpm.fid.list": "interval",
    **{f"ddpm.{k}": "sentence" for k in ("fid.tied", "fid.floorsep", "speed")},
    "ddpm.*": "number",
    **{f"quality.{k}": "name" for k in ("scope", "ddpmname", "ddpmodename", "best", "vae.bestout")},
    **{f"quality.{k}": "sentence" for k in ("copies", "bestsep", "check.ode", "check.quad", "rank", "agree",
                                             "vae.best", "curve.real.move", "smallbias", "check.rule")},
    "quality.gap.*": "sentence",
    **{f"quality.{k}.*": "interval" for k in ("fidc", "kid", "precision", "recall", "bpd")},
    "quality.*": "number"})


def _f2(value, digits: int = 2) -> str:
    return fmt(float(value), digits)


def _side(difference: float, unit: str = " nats") -> str:
    """"0.50 nats above it" or "0.30 nats below it" by the sign of `difference`; "level with it" when it rounds to
    zero: the direction word of a signed difference, decided by the number."""
    size = f"{abs(difference):.2f}"
    if float(size) == 0:
        return "level with it (to 0.01)"
    return f"{size}{unit} {'above' if difference > 0 else 'below'} it"


def _detectable(seeds: int) -> str:
    """The smallest difference, in seed-to-seed standard deviations, that reaches two-sided p < 0.05 (unadjusted) in
    a t-test of two groups of `seeds` with equal spreads: t_{0.975, 2n-2} * sqrt(2/n); "n/a" for one seed."""
    from scipy.stats import t as student_t

    return f"{student_t.ppf(0.975, 2 * seeds - 2) * (2 / seeds) ** 0.5:.1f}" if seeds > 1 else "n/a"


def _grid_sentence(change: Mapping[str, Mapping[int, float]], label: Mapping[str, str]) -> str:
    """Whether the quadrature's change to the finest grid shrinks at every refinement, per prior."""
    bad = []
    for n, by_grid in change.items():
        steps = [by_grid[g] for g in sorted(by_grid)][:-1]  # the finest grid's change to itself is 0
        if any(b > a for a, b in zip(steps, steps[1:])):
            bad.append(label[n])
    return ("the change to the finest grid shrinks at every refinement for every prior" if not bad else
            f"the change to the finest grid does not shrink at every refinement for {join_words(bad)}")


def _original_sentences(original, logpx: Mapping[str, float], kl: Mapping[str, float], label) -> dict[str, str]:
    """The original study's IWAE column against ours: its mean IWAE - ELBO against the largest room between the
    ELBO and log p(x) that our models leave (their KL), and its mean IWAE against our best near-exact log p(x)."""
    quoted = [o for o in original.values() if o]
    if not quoted:
        return {"priors.origiwae": "n/a", "priors.origperpixel": "n/a",
                "priors.orig.verdict": "the original study quotes none of the priors compared here",
                "priors.orig.vsours": "the original study quotes none of the priors compared here"}
    gap, iwae = _original_gap(original), sum(o[2] for o in quoted) / len(quoted)
    widest, best = max(kl, key=kl.get), max(logpx, key=logpx.get)
    verdict = (f"exceeds the whole room between the ELBO and $\\log p(x)$ of every one of our models (at most "
               f"{_f2(kl[widest])} nats, the {label[widest]} prior's)" if gap > kl[widest] else
               f"does not exceed the room between the ELBO and $\\log p(x)$ of our models (up to {_f2(kl[widest])} "
               f"nats, the {label[widest]} prior's), so this column alone does not show an error")
    vs = (f"{'above' if iwae > logpx[best] else 'below'} the near-exact $\\log p(x)$ of our best model (the "
          f"{label[best]} prior, {_f2(logpx[best])} nats) by {_f2(abs(iwae - logpx[best]))} nats")
    return {"priors.origiwae": _f2(iwae), "priors.origperpixel": f"{-iwae / 784:.3f}",
            "priors.orig.verdict": verdict, "priors.orig.vsours": vs}


# ---------------------------------------------------------------------------------------------------------------
# Part 1: the priors (01_priors)

def priors_per_seed(metrics: Mapping[tuple[str, int], Mapping[str, torch.Tensor]], n_quad: int) -> pd.DataFrame:
    """One row per (prior, seed): the mean test ELBO, IWAE, quadrature log p(x) and the IWAE on the quadrature's
    first `n_quad` images, from the per-image results `metrics[prior, seed]` ({"elbo", "iwae", "log_px"})."""
    return pd.DataFrame([{"prior": n, "seed": s, "elbo": m["elbo"].mean().item(), "iwae": m["iwae"].mean().item(),
                          "log_px": m["log_px"].mean().item(), "iwae_sub": m["iwae"][:n_quad].mean().item()}
                         for (n, s), m in metrics.items()])


def _by_prior(per_seed: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {n: per_seed[per_seed.prior == n] for n in dict.fromkeys(per_seed.prior)}


def _labels(names, cfg) -> dict[str, str]:
    return {n: prior_registry.label(n, cfg) for n in names}


def priors_pvalues(per_seed: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Welch's t-test of every prior against the first (the baseline) on the per-seed means, Holm-corrected over
    the ELBO and IWAE columns together (one family): {"elbo" | "iwae": {prior: p}}."""
    by_prior = _by_prior(per_seed)
    base = next(iter(by_prior))
    return stats.holm_family({m: stats.welch_vs_baseline({n: v[m].tolist() for n, v in by_prior.items()}, base,
                                                         adjust=False) for m in ("elbo", "iwae")})


def priors_table1(per_seed: pd.DataFrame, cfg: Mapping[str, Any], n_test: int) -> pd.DataFrame:
    """Table 1 (`priors_table1.tex`): mean +- std over seeds of each metric and the Holm-corrected p-values."""
    by_prior, pvals = _by_prior(per_seed), priors_pvalues(per_seed)
    names = list(by_prior)
    base, label = names[0], _labels(names, cfg)
    table = pd.DataFrame({
        "ELBO": [mean_pm(by_prior[n].elbo) for n in names],
        f"IWAE (K={cfg['iwae_k']})": [mean_pm(by_prior[n].iwae) for n in names],
        f"log p(x), quad. (first {cfg['quadrature_subset']})": [mean_pm(by_prior[n].log_px) for n in names],
        "IWAE, same images": [mean_pm(by_prior[n].iwae_sub) for n in names],
        "p ELBO": [f"{pvals['elbo'][n]:.3g}" if n != base else "--" for n in names],
        "p IWAE": [f"{pvals['iwae'][n]:.3g}" if n != base else "--" for n in names],
    }, index=pd.Index([label[n] for n in names], name="prior"))
    dataframe_table(table, "priors_table1", label="tab:priors", column_format="lrrrrrr", fit_width=True, caption=(
        f"Test-set results of the priors: mean $\\pm$ std over {cfg['seeds']} seeds, nats per image ({n_test} test "
        f"images, {cfg['epochs']} epochs, profile \\texttt{{{cfg['profile']}}}). p: Welch's t-test against the "
        f"{label[base]} prior, Holm-corrected over the table's {2 * (len(names) - 1)} comparisons (one family: both "
        "columns)."))
    return table


def _original(names) -> dict[str, tuple | None]:
    return {n: prior_registry.spec(n).original for n in names}


def _original_gap(original: Mapping[str, tuple | None]) -> float | None:
    """The original study's mean IWAE - ELBO over its priors, None when it quotes none of ours."""
    quoted = [o for o in original.values() if o]
    return sum(o[2] - o[0] for o in quoted) / len(quoted) if quoted else None


def priors_original_table(per_seed: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The original study's Table 1 beside ours (`priors_original.tex`); "--" for a prior it did not have."""
    by_prior = _by_prior(per_seed)
    names = list(by_prior)
    original, label = _original(names), _labels(names, cfg)
    iwae_minus_elbo = [(by_prior[n].iwae - by_prior[n].elbo).mean() for n in names]
    compare = pd.DataFrame({
        "original ELBO": [f"${o[0]:.2f} \\pm {o[1]:.2f}$" if o else "--" for o in original.values()],
        "original IWAE": [f"${o[2]:.2f}$" if o else "--" for o in original.values()],
        "ours ELBO": [mean_pm(by_prior[n].elbo) for n in names],
        "ours IWAE": [mean_pm(by_prior[n].iwae) for n in names],
        "ours IWAE - ELBO": [f"${d:.2f}$" for d in iwae_minus_elbo],
    }, index=pd.Index([label[n] for n in names], name="prior"))
    dataframe_table(compare, "priors_original", label="tab:priors-original", column_format="lrrrrr",
                    fit_width=True, caption=(
                        f"The original study's Table 1 (10 seeds, 20 epochs) beside ours. Its IWAE column lies on "
                        f"average {_original_gap(original) or 0:.0f} nats above its own ELBO; ours lies "
                        f"{min(iwae_minus_elbo):.2f} to {max(iwae_minus_elbo):.2f} nats above (mean over seeds, "
                        "by prior)."))
    return compare


def priors_k_table(sweep: Mapping[str, Mapping[int, float]], metrics, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """IWAE against K for seed 0 of each prior (`priors_iwae_k.tex`), beside its ELBO and quadrature log p(x)."""
    names, n_quad = list(sweep), cfg["quadrature_subset"]
    label = _labels(names, cfg)
    kt = pd.DataFrame({f"K={k}": [f"${sweep[n][k]:.2f}$" for n in names] for k in next(iter(sweep.values()))},
                      index=pd.Index([label[n] for n in names], name="prior"))
    kt["ELBO"] = [f"${metrics[n, 0]['elbo'][:n_quad].mean():.2f}$" for n in names]
    kt["quadrature"] = [f"${metrics[n, 0]['log_px'].mean():.2f}$" for n in names]
    dataframe_table(kt, "priors_iwae_k", label="tab:priors-k", caption=(
        f"IWAE bound against K for seed 0 of each prior, mean over the first {n_quad} test "
        "images (nats), beside the single-sample ELBO and the quadrature log p(x) on the same images."))
    return kt


def _quad_change(conv: Mapping[str, Mapping[int, torch.Tensor]]) -> dict[str, dict[int, float]]:
    """Per prior and grid n: the largest change of the quadrature log p(x) from grid n to the finest grid."""
    out = {}
    for name, by_grid in conv.items():
        finest = by_grid[max(by_grid)]
        out[name] = {g: (v - finest).abs().max().item() for g, v in by_grid.items()}
    return out


def priors_quadrature_table(conv: Mapping[str, Mapping[int, torch.Tensor]], cfg: Mapping[str, Any],
                            n_images: int) -> pd.DataFrame:
    """The quadrature's convergence (`priors_quad_convergence.tex`): `conv[prior][n]` is log p(x) of the same
    `n_images` images on an n x n grid (`quadrature.quadrature_convergence`)."""
    change = _quad_change(conv)
    names, grids = list(change), sorted(next(iter(conv.values())))
    ct = pd.DataFrame({f"n={g}": [f"{change[n][g]:.1e}" for n in names] for g in grids[:-1]},
                      index=pd.Index([_labels(names, cfg)[n] for n in names], name="prior"))
    dataframe_table(ct, "priors_quad_convergence", label="tab:priors-quad", caption=(
        f"Largest absolute change (nats) of the quadrature log p(x) over {n_images} test images between an n x n "
        f"grid and the {grids[-1]} x {grids[-1]} grid (seed 0). The notebook uses n = {cfg['quadrature_grid']}."))
    return ct


def split_words(split: str) -> str:
    """Which training images a model saw, for the report: its split (`recipes.TRAIN_SPLIT`) in words."""
    return {"train": "all training images", "fit": f"all training images but the held-out {data.HELD_OUT:,}"}[split]


def priors(cfg: Mapping[str, Any], runs: Mapping[tuple[str, int], Any], metrics, sweep, conv, *, brute: str,
           n_train: int, total_seconds: float, eval_seconds: float) -> dict[str, str]:
    """Write `macros_priors.tex`, every `\\val{priors.*}` of Part 1, and return it.

    `runs[prior, seed]`: the trained runs (`.model`, `.history`, `.config`, `.result.seconds`); `metrics[prior,
    seed]`: per-image {"elbo", "iwae", "log_px"}; `sweep[prior][K]`: seed 0's IWAE by K; `conv[prior][n]`: the
    quadrature's convergence by grid; `brute`: the brute-force sentence (`table1.brute_force_sentence`)."""
    n_quad = cfg["quadrature_subset"]
    per_seed = priors_per_seed(metrics, n_quad)
    by_prior, pvals = _by_prior(per_seed), priors_pvalues(per_seed)
    names = list(by_prior)
    base, label = names[0], _labels(names, cfg)
    seeds = sorted({s for _, s in runs})
    ks = sorted(next(iter(sweep.values())))
    original = _original(names)
    change = _quad_change(conv)

    def each(values):  # {prior: text} -> "x for A, y for B and z for C"
        return join_words([f"{v} for {label[n]}" for n, v in values.items()]) or "none"

    macros = {"priors.seeds": str(cfg["seeds"]), "priors.epochs": str(cfg["epochs"]),
              "priors.iwaek": str(cfg["iwae_k"]), "priors.ntest": f"{len(next(iter(metrics.values()))['elbo']):,}",
              "priors.nquad": str(n_quad), "priors.ntrain": f"{n_train:,}", "priors.grid": str(cfg["quadrature_grid"]),
              "priors.split": split_words(recipes.TRAIN_SPLIT["priors"]),
              "priors.kmax": str(ks[-1]), "priors.minutes": f"{total_seconds / 60:.1f}",
              "priors.trainminutes": f"{sum(run.result.seconds for run in runs.values()) / 60:.1f}",
              "priors.evalminutes": f"{eval_seconds / 60:.1f}",
              "priors.gridchange": f"{max(change[n].get(cfg['quadrature_grid'], float('nan')) for n in names):.1e}",
              "priors.count": str(len(names)), "priors.labels": join_words(list(label.values())),
              "priors.flow.nlayers": str(prior_registry.params("flow", cfg)["n_layers"])}

    gaps = {n: by_prior[n].log_px - by_prior[n].iwae_sub for n in names}
    histories = {n: torch.tensor([[h["test_elbo"] for h in runs[n, s].history] for s in seeds]) for n in names}
    curves = table1.convergence(histories)
    diffs = table1.differences({n: [metrics[n, s] for s in seeds] for n in names})  # per image, seed-averaged
    others, kl = [n for n in names if n != base], {n: runs[n, 0].model.kl_method() for n in names}
    macros.update({
        "priors.described": join_words([prior_registry.describe(n, cfg) for n in names]),
        "priors.kl.analytic": join_words([label[n] for n in names if kl[n] == "analytic"]) or "none",
        "priors.kl.mc": join_words([label[n] for n in names if kl[n] == "mc"]) or "none",
        "priors.base": label[base], "priors.ncompare": str(2 * len(others)),
        "priors.precision": latex_escape(next(iter(runs.values())).config["precision"]),
        "priors.stacking": ("trained together as one stacked model, each seed's loss, Adam state and checkpoint its "
                            "own (\\texttt{gen\\_lib/seeds.py})" if cfg["stack_seeds"]
                            else "trained one after the other")})
    macros.update({  # lists and sentences, each computed from the results (gen_lib.report.table1)
        "priors.delbo.list": each({n: _f2(by_prior[n].elbo.mean() - by_prior[base].elbo.mean()) for n in others}),
        "priors.pelbo.list": each({n: f"{pvals['elbo'][n]:.2g}" for n in others}),
        "priors.piwae.list": each({n: f"{pvals['iwae'][n]:.2g}" for n in others}),
        "priors.iwaeelbo.list": each({n: _f2((by_prior[n].iwae - by_prior[n].elbo).mean()) for n in names}),
        "priors.gap.list": each({n: _f2(gaps[n].mean()) for n in names}),
        "priors.best": table1.best_sentence({n: by_prior[n].elbo.mean() for n in names}, pvals["elbo"], base, label),
        "priors.bestiwae": table1.best_sentence({n: by_prior[n].iwae.mean() for n in names}, pvals["iwae"], base,
                                                label, what="mean IWAE bound"),
        "priors.ordering": table1.ordering_sentence(diffs, label),
        "priors.kcurve": table1.k_curve_sentence(sweep, {n: metrics[n, 0]["log_px"].mean().item() for n in names},
                                                 label),
        "priors.convergence": table1.convergence_sentence(histories, label), "priors.brute": brute,
        "priors.lastgain.list": each({n: _f2(g) if g == g else "n/a" for n, (g, _) in curves.items()}),
        "priors.finalstd.list": each({n: _f2(s) if s == s else "n/a" for n, (_, s) in curves.items()}),
    })
    elbo_q = {n: sum(metrics[n, s]["elbo"][:n_quad].mean().item() for s in seeds) / len(seeds)
              for n in names}  # the ELBO on the quadrature images
    for n in names:  # per prior ("base" repeats the baseline's), for sentences about one prior
        s = by_prior[n]
        one = {"elbo": _f2(s.elbo.mean()), "elbostd": _f2(s.elbo.std(ddof=1)), "iwae": _f2(s.iwae.mean()),
               "iwaestd": _f2(s.iwae.std(ddof=1)), "logpx": _f2(s.log_px.mean()), "gap": _f2(gaps[n].mean()),
               "iwaeelbo": _f2((s.iwae - s.elbo).mean()), "kl": _f2(s.log_px.mean() - elbo_q[n]),
               "kone": _f2(sweep[n][ks[0]]), "kmax": _f2(sweep[n][ks[-1]]), "lastgain": _f2(curves[n][0]),
               "finalstd": _f2(curves[n][1])}
        macros.update({f"priors.{n}.{k}": v for k, v in one.items()})
        if n == base:
            macros.update({f"priors.base.{k}": v for k, v in one.items()})
    all_gaps = torch.cat([m["log_px"] - m["iwae"][:n_quad].double() for m in metrics.values()])
    macros.update({"priors.gapmin": _f2(all_gaps.min().item()), "priors.gapmax": _f2(all_gaps.max().item()),
                   "priors.gapmean": _f2(all_gaps.mean().item()),
                   "priors.frac-above": f"{(all_gaps < 0).float().mean().item() * 100:.1f}"})
    gap = _original_gap(original)
    macros["priors.origgap"] = _f2(gap, 1) if gap is not None else "n/a"
    macros.update(_priors_directions(by_prior, gaps, all_gaps, change, original, elbo_q, label, len(seeds)))
    write_macros("priors", macros)
    return macros


def _priors_directions(by_prior, gaps, all_gaps, change, original, elbo_q, label, seeds: int) -> dict[str, str]:
    """The macros that decide Part 1's direction words: each signed difference as "x nats above/below it", whether
    the quadrature converges, the smallest detectable difference, and the original study's column against ours."""
    names = list(by_prior)

    def each(values):
        return join_words([f"{v} for {label[n]}" for n, v in values.items()])

    out = {"priors.iwaeelbo.side": each({n: _side((by_prior[n].iwae - by_prior[n].elbo).mean()) for n in names}),
           "priors.gap.side": each({n: _side(gaps[n].mean()) for n in names}),
           "priors.gapmean.side": _side(all_gaps.mean().item()), "priors.gridconv": _grid_sentence(change, label),
           "priors.detectable": _detectable(seeds)}
    for n in names:
        out[f"priors.{n}.iwaeelboside"] = _side((by_prior[n].iwae - by_prior[n].elbo).mean())
        out[f"priors.{n}.gapside"] = _side(gaps[n].mean())
    base = names[0]
    out["priors.base.iwaeelboside"], out["priors.base.gapside"] = out[f"priors.{base}.iwaeelboside"], out[
        f"priors.{base}.gapside"]
    logpx = {n: by_prior[n].log_px.mean() for n in names}
    kl = {n: logpx[n] - elbo_q[n] for n in names}
    out.update(_original_sentences(original, logpx, kl, label))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Part 2: the flow (02_flow)

def flow_table(bpd: Mapping[str, torch.Tensor], profile: str) -> pd.DataFrame:
    """Bits/dim of the flow (`flow_bpd.tex`): `bpd[row name]` per-image values, mean with its standard error."""
    rows = {}
    for name, values in bpd.items():
        mean, se = mean_and_stderr(values)
        rows[name] = {"images": f"{len(values):,}", "bits/dim": f"{mean:.3f}", "s.e.": f"{se:.3f}"}
    table = pd.DataFrame(rows).T
    table.index.name = "model"
    dataframe_table(table, "flow_bpd", caption=f"Bits per dimension of the RealNVP flow (profile {profile}); "
                    "mean over images with its standard error; fixed dequantization, float32.", label="tab:flow-bpd")
    return table


def flow(cfg: Mapping[str, Any], run, test_bpd: torch.Tensor, train_bpd: torch.Tensor, init_bpd: torch.Tensor, *,
         n_train: int, n_eval: int, n_samples: int, sample_seconds: float, clamped: float,
         recon_err: float) -> dict[str, str]:
    """Write `macros_flow.tex`, every `\\val{flow.*}`, and return it. `run`: the trained flow (`.model`, `.result`,
    `.config`); the bits/dim are per image; `clamped`: the share of sample pixels outside [0, 1]; `recon_err`: the
    largest |y - f^-1(f(y))|; `paper_epochs` come from the paper profile (the report compares)."""
    history = run.result.history
    bpd_mean, bpd_se = mean_and_stderr(test_bpd)
    train_mean, init_mean = mean_and_stderr(train_bpd)[0], mean_and_stderr(init_bpd)[0]
    mantissa, exponent = f"{recon_err:.1e}".split("e")
    n_params = sum(p.numel() for p in run.model.parameters())
    values = {
        "flow.bpd": f"{bpd_mean:.3f}", "flow.bpd-se": f"{bpd_se:.3f}", "flow.train-bpd": f"{train_mean:.3f}",
        "flow.gap": fmt(bpd_mean - train_mean, 3), "flow.init-bpd": f"{init_mean:.3f}",
        "flow.n-test": f"{len(test_bpd):,}", "flow.n-train": f"{n_train:,}", "flow.n-eval": f"{n_eval:,}",
        "flow.epochs": str(len(history)), "flow.epochs-paper": str(config.resolve("flow", "paper")["epochs"]),
        "flow.layers": str(cfg["n_layers"]), "flow.hidden": str(cfg["hidden"]), "flow.alpha": f"{cfg['logit_alpha']}",
        "flow.lr": f"{cfg['lr']:g}", "flow.batch": str(cfg["batch_size"]), "flow.clip": f"{cfg['grad_clip']:g}",
        "flow.schedule": "on a cosine to 0" if cfg["schedule"] == "cosine" else "constant",
        "flow.params": f"{n_params / 1e6:.1f}", "flow.precision": latex_escape(run.config["precision"]),
        "flow.train-minutes": f"{(history[-1]['seconds'] / 60 if history else 0.0):.1f}",
        "flow.n-samples": f"{n_samples:,}", "flow.sample-ms": f"{1e3 * sample_seconds / n_samples:.2f}",
        "flow.clamped": f"{100 * clamped:.2f}", "flow.recon-err": f"${mantissa}\\times 10^{{{int(exponent)}}}$",
    }
    values.update(_flow_background(cfg["logit_alpha"]))
    write_macros("flow", values)
    return values


def _flow_background(alpha: float) -> dict[str, str]:
    """Where a background pixel (x = 0, dequantized to y in [0, 1/256)) lands after the logit pre-transform, and the
    width of that interval: the numbers behind the flow section's conditioning argument."""
    import math

    def logit(u):
        return math.log(u / (1 - u))

    low, high = logit(alpha), logit(alpha + (1 - 2 * alpha) / 256)
    return {"flow.bg.logit": fmt(low, 2), "flow.bg.width": f"{high - low:.3f}"}


# ---------------------------------------------------------------------------------------------------------------
# Part 2: the DDPM (03_ddpm)

def ddpm_steps_table(steps: pd.DataFrame, device: str, profile: str) -> pd.DataFrame:
    """Sampling time by sampler and step count (`ddpm_steps.tex`) from the rows {"sampler", "steps",
    "ms per sample", "speed-up vs ancestral"} the notebook measured."""
    table = steps.copy()
    table["ms per sample"] = table["ms per sample"].map(lambda v: f"{v:.1f}")
    table["speed-up vs ancestral"] = table["speed-up vs ancestral"].map(lambda v: "--" if v != v else f"{v:.1f}x")
    table = table.set_index("sampler")
    dataframe_table(table, "ddpm_steps", caption=f"Sampling time per image by sampler and step count "
                    f"({device}, {profile} profile).", label="tab:ddpm-steps")
    return table


def ddpm_fid_table(fid_q: Mapping[str, Mapping[str, float]], fid_ms: Mapping[str, float], floor: str, *,
                   feature_dim: int, n_boot: int, device: str) -> pd.DataFrame:
    """FID against sampling steps (`ddpm_fid_steps.tex`): `fid_q[row]` scored by `quality.score` on N images per
    set, `fid_ms[row]` the milliseconds per sample of each sampler row, `floor` the real-data row."""
    n = f"{int(fid_q[floor]['n_fake']):,}"
    table = quality_text.frame(fid_q).loc[[*fid_ms, floor]].rename(columns={"FID": f"FID (N = {n})"})
    table.insert(0, "ms per sample", [f"{ms:.1f}" for ms in fid_ms.values()] + ["--"])
    table.index.name = "sampler"
    dataframe_table(table, "ddpm_fid_steps", label="tab:ddpm-fid-steps", column_format="lrrrrrr", fit_width=True,
                    caption=(
        f"DDPM samples by sampler and step count, {n} per row against the same {n} random test images, in the "
        f"{feature_dim}-d classifier features; the last row is a random sample of held-out real images that neither "
        f"the DDPM nor the classifier was trained on (the floor). Intervals: 95\\%, {n_boot} replicates over both sets: "
        f"basic bootstrap; precision and recall from random halves of each set (no duplicates); the "
        f"bias-corrected FID is the raw value minus the bootstrap's estimate of its bias. Time per sample on the "
        f"{device} of this run."))
    return table


def _speed_sentence(ancestral_ms, ddim_ms: float, steps: int, timed: bool) -> str:
    """DDIM's time per sample against the ancestral sampler's, the direction word decided by the ratio."""
    if not timed or ancestral_ms is None:
        return "the profile did not time the ancestral sampler"
    ratio = ancestral_ms / ddim_ms
    if ratio >= 1:
        return f"DDIM with {steps} steps was {ratio:.0f} times faster than the ancestral sampler here"
    return f"DDIM with {steps} steps was {1 / ratio:.1f} times slower than the ancestral sampler here"


def device_word(device) -> str:
    """"GPU" or "CPU": where this run's timings were taken, for captions and text."""
    return "GPU" if torch.device(device).type == "cuda" else "CPU"


def ddpm(cfg: Mapping[str, Any], run, *, n_train: int, ms_per_sample: float, steps: pd.DataFrame, device,
         fid_q: Mapping[str, Mapping[str, float]] | None = None, fid_ms: Mapping[str, float] | None = None,
         floor: str = "real data") -> dict[str, str]:
    """Write `macros_ddpm.tex`, every `\\val{ddpm.*}`, and return it. `run`: the trained DDPM (`.model.network`,
    `.result.history`, `.config` as trained); `ms_per_sample`: the samples for 04's; `steps`: the sampler timing
    rows of `ddpm_steps_table`; `fid_q`/`fid_ms` the FID-against-steps rows, None or empty when the profile skips
    them: then no `ddpm.fid.*` is written and the report leaves that part out (it tests for `ddpm.fid.on`)."""
    model, history, trained = run.model, run.result.history, run.config
    last = history[-1]
    steps_per_epoch = -(-min(n_train, trained["train_subset"] or n_train) // trained["batch_size"])
    paper_unet = models.build("ddpm", config.resolve("ddpm", "paper"))  # sizes only
    values = {
        "ddpm.params": f"{sum(p.numel() for p in model.network.parameters()) / 1e6:.2f}",
        "ddpm.base": str(trained["base_channels"]), "ddpm.mults": str(trained["channel_mults"]).replace(",", ", "),
        "ddpm.nres": str(trained["n_res"]), "ddpm.epochs": str(len(history)),
        "ddpm.steps": f"{len(history) * steps_per_epoch:,}", "ddpm.batch": str(trained["batch_size"]),
        "ddpm.lr": f"{trained['lr']:g}", "ddpm.ema": f"{trained['ema_decay']:g}",
        "ddpm.bf16": latex_escape(trained["precision"]), "ddpm.trainmin": f"{last['seconds'] / 60:.1f}",
        "ddpm.trainloss": f"{last['train_loss']:.4f}", "ddpm.testloss": f"{last['test_loss']:.4f}",
        "ddpm.nsamples": f"{cfg['n_samples']:,}", "ddpm.method": samplers.sampler(cfg["sample_method"]).label,
        "ddpm.samplesteps": str(cfg["sample_steps"]), "ddpm.msper": f"{ms_per_sample:.1f}",
        "ddpm.device": device_word(device), "ddpm.ancn": str(cfg["compare_ancestral"]),
        "ddpm.paperparams": f"{sum(p.numel() for p in paper_unet.parameters()) / 1e6:.2f}",  # a count, not a result
    }
    ddim = samplers.sampler("ddim").label
    ms = {int(r["steps"]) if r["sampler"] == ddim else "anc": r["ms per sample"] for _, r in steps.iterrows()}
    fastest = min(k for k in ms if k != "anc")
    values["ddpm.speedup"] = f"{ms['anc'] / ms[fastest]:.0f}" if cfg["compare_ancestral"] else "n/a"
    values["ddpm.speedupsteps"] = str(fastest) if cfg["compare_ancestral"] else "n/a"
    values["ddpm.speed"] = _speed_sentence(ms.get("anc"), ms[fastest], fastest, bool(cfg["compare_ancestral"]))
    if fid_ms:  # FID against sampling steps: each sentence follows from the intervals (gen_lib.report.quality)
        top, tied = quality_text.best(fid_q, list(fid_ms))
        compared = [f"DDIM at {join_words([str(int(s)) for s in str(cfg['compare_steps']).split(',')])} steps"]
        values.update({
            "ddpm.fid.on": "1", "ddpm.fidn": f"{cfg['fid_n']:,}", "ddpm.nboot": str(cfg["n_boot"]),
            "ddpm.fid.samplers": join_words(compared + ([f"the {trained['T']}-step ancestral sampler"]
                                                        if cfg["fid_ancestral"] else [])),
            "ddpm.fid.list": join_words([f"{n} {fid_q[n]['fid']:.2f} (bias-corrected "
                                         f"{quality_text.cell(fid_q[n], 'fid')}, {t:.1f}\\,ms per sample)"
                                         for n, t in fid_ms.items()]),
            "ddpm.fid.real": f"{fid_q[floor]['fid']:.2f}", "ddpm.fid.realci": quality_text.cell(fid_q[floor], "fid"),
            "ddpm.fid.best": top, "ddpm.fid.tied": quality_text.tied_sentence(tied, "sampler", len(fid_ms) - 1),
            "ddpm.fid.floorsep": quality_text.floor_sentence(fid_q, top, floor),
        })
    write_macros("ddpm", values)
    return values


# ---------------------------------------------------------------------------------------------------------------
# Part 2: sample quality and likelihood (04_quality)

OWN_SAMPLES = {"flow": "flow", "ddpm_ode": "ddpmode", "vae": "vaedraw"}  # a density -> the model key of its samples
VAE_WORDS = {"vae": "the mean", "vaeparam": "the parameter $\\lambda$", "vaedraw": "the draw"}  # the VAE's outputs


def table3_tag(n: int, seed: int, batch: int, epochs: tuple[int, ...]) -> str:
    """The part of Table 3's cached per-image results' names that changes their numbers: the images (`n`, `seed`),
    the batches, the models' epochs (flow, DDPM, VAE) and the estimators' `likelihood.VERSION`."""
    return f"{n}_s{seed}_b{batch}_e{'-'.join(str(e) for e in epochs)}_v{likelihood_text.VERSION}"


def quality_table2(q: Mapping[str, Mapping[str, float]], fid_small: Mapping[str, float], models: Mapping[str, str], *,
                   n: int, scope: str, feature_dim: int, dataset_title: str, accuracy: float, n_boot: int,
                   pr_k: int) -> pd.DataFrame:
    """Table 2 (`quality_table2.tex`): every scored row of `q` (`quality.score`) at N = `n`, its FID at the original
    study's N (`fid_small`, N = min(256, n)) and the original study's numbers; `models`: model key -> row name."""
    n_small = min(256, n)
    table = quality_text.frame(q)  # raw FID at N, then FID (bias-corrected), KID, precision, recall
    table[f"FID@{n_small}"] = [f"{fid_small[name]:.2f}" for name in q]
    original = {models[k]: v for k, v in quality_text.ORIGINAL.items()}  # the original study's Table 2, as reported
    table["orig. FID"] = [f"{original[name][0]:.3f}" if name in original else "--" for name in q]
    table["orig. KID"] = [f"{original[name][1]:.3f}" if name in original else "--" for name in q]
    table.index = [name.replace("real data", "real") for name in table.index]
    table.index.name = "model"
    caption = (f"Sample quality at N = {n:,} generated vs {n:,} test images ({scope}), in the {feature_dim}-d "
               f"features of a {dataset_title} classifier ({100 * accuracy:.2f}\\% test accuracy). "
               f"Intervals: 95\\%, {n_boot} replicates over both sets: basic bootstrap; precision and recall from "
               f"random halves of each set (no duplicates); the bias-corrected FID is "
               f"the raw value minus the bootstrap's estimate of its bias. KID: unbiased MMD$^2$ over all pairs. "
               f"Precision/recall: $k = {pr_k}$. The VAE is scored three ways (same $z$). First row: held-out real "
               f"images (the floor). FID@{n_small}: FID at N = {n_small}, mean over disjoint subsets. "
               "The last two columns quote the original study (256 vs 256, Inception-v3 features): not comparable.")
    dataframe_table(table, "quality_table2", caption, "tab:quality", column_format="lrrrrrrrr", fit_width=True)
    return table


def quality_table3(estimates: Sequence, q: Mapping[str, Mapping[str, float]],
                   models: Mapping[str, str]) -> pd.DataFrame:
    """Table 3 (`quality_table3.tex`): the likelihood `estimates` (`likelihood.Estimate`, the same images each) beside
    the bias-corrected FID of each density's own samples in Table 2."""
    n_lik = len(estimates[0].values)
    fid = {d: quality_text.cell(q[models[k]], "fid") for d, k in OWN_SAMPLES.items()}
    table3 = likelihood_text.table3_frame(list(estimates), fid=fid)
    dataframe_table(table3, "quality_table3", label="tab:likelihood", column_format="llrrrrr", fit_width=True, caption=(
        f"Likelihoods of the three models: exact, estimated and near-exact values beside bounds. Bits/dim of the same "
        f"{n_lik:,} dequantized test images, a fixed random sample (mean $\\pm$ standard error over the images; lower "
        f"is better). The DDPM's two rows are two densities of one $\\epsilon$-network: its probability-flow ODE "
        f"(deterministic DDIM in the continuous limit), whose value is an estimate (Hutchinson's trace, unbiased; "
        f"Heun's solver) of the density of the data smoothed at the smallest noise level $\\bar\\sigma_0$, and its "
        f"ancestral sampler ($\\sigma_t^2=\\beta_t$), whose bound is held against the ODE's value. Allowance: the "
        f"bound on a value's numerical error (solver, quadrature grid) by Richardson's estimate from the grid of half "
        f"the steps. Columns: the paired difference to the flow and a bound's excess over the exact value, with 95\\% "
        f"intervals widened by both values' allowances; the FID (bias-corrected) of the density's own samples in "
        f"Table~\\ref{{tab:quality}} (the VAE: draws; the ODE: Heun's method on the same levels, no clipping)."))
    return table3


def quality(cfg: Mapping[str, Any], models: Mapping[str, str], real: str, q, fid_small, curve, nn_dist, estimates,
            checks: Mapping[str, str], *, scope: str, accuracy: float, vae_cfg: Mapping[str, Any],
            classifier_cfg: Mapping[str, Any], vae_elbo: float, vae_images: Mapping[str, torch.Tensor],
            test_images: torch.Tensor, nn_reference: str = "test images", ode_grid: Sequence[int] = (),
            sigma0: float = 0.0, smoothing: Mapping[str, float] | None = None) -> dict[str, str]:
    """Write `macros_quality.tex`, every `\\val{quality.*}`, and return it.

    `models`: model key -> Table 2 row name; `real`: the floor's row; `q`, `fid_small`: Table 2's scores;
    `curve[row][N]`: (mean, std) FID against N; `nn_dist[row]`: (n, k) distances to the nearest training images,
    `nn_reference` the real test images' row; `estimates`, `checks`: Table 3 and its refinement texts
    ({"ddpm_ode", "vae"}); `vae_images[key]`/`test_images`: N images each, for the background level; `ode_grid`:
    the ODE's levels (Table 3's and its sampler's), `sigma0` its σ̄_0 and `smoothing` what that costs
    (`diffusion_nll.smoothing_bits`)."""
    n = cfg["n_eval"]
    key = {real: "real", **{name: k for k, name in models.items()}}
    sizes = sorted(next(iter(curve.values())))
    nn_median = {name: d[:, 0].median().item() for name, d in nn_dist.items()}
    values = {
        "quality.n": f"{n:,}", "quality.n_small": f"{min(256, n)}", "quality.heldout": f"{data.HELD_OUT:,}",
        "quality.d": f"{classifier_cfg['feature_dim']}", "quality.scope": scope, "quality.accuracy": f"{100 * accuracy:.2f}",
        "quality.classifier_epochs": f"{classifier_cfg['epochs']}", "quality.vae_epochs": f"{vae_cfg['epochs']}",
        "quality.vae_elbo": fmt(vae_elbo, 1), "quality.nboot": f"{cfg['n_boot']}", "quality.k": f"{cfg['pr_k']}",
        "quality.curve_lo": f"{sizes[0]:,}", "quality.curve_hi": f"{sizes[-1]:,}",
        "quality.nn_n": f"{len(nn_dist[nn_reference])}", "quality.nn.test": f"{nn_median[nn_reference]:.2f}",
    }
    # the continuous Bernoulli's mean never reaches 0: the background of the VAE's samples (a 3-pixel border)
    border = torch.ones(test_images.shape[-2:], dtype=torch.bool)
    border[3:-3, 3:-3] = False
    for k, x in vae_images.items():
        values[f"quality.bg.{k}"] = f"{x[:n, 0][:, border].mean():.3f}"
    values["quality.bg.test"] = f"{test_images[:n, 0][:, border].mean():.3f}"
    for name, v in q.items():
        k = key[name]
        values[f"quality.fid.{k}"] = f"{v['fid']:.2f}"
        values[f"quality.fidc.{k}"] = quality_text.cell(v, "fid")
        values[f"quality.kid.{k}"] = quality_text.cell(v, "kid")
        values[f"quality.precision.{k}"] = quality_text.cell(v, "precision")
        values[f"quality.recall.{k}"] = quality_text.cell(v, "recall")
        values[f"quality.fidsmall.{k}"] = f"{fid_small[name]:.2f}"
        values[f"quality.fidratio.{k}"] = f"{fid_small[name] / max(v['fid'], 1e-12):.1f}"
    samples = [name for name in nn_dist if name != nn_reference]
    for name in samples:
        values[f"quality.nn.{key[name]}"] = f"{nn_median[name]:.2f}"
    for short, (fid, kid) in quality_text.ORIGINAL.items():
        short = "vae" if short == "vaeparam" else short
        values[f"quality.orig.fid.{short}"], values[f"quality.orig.kid.{short}"] = f"{fid:.3f}", f"{kid:.3f}"
    for name, points in curve.items():
        values[f"quality.curve.{key[name]}.lo"] = f"{points[sizes[0]][0]:.2f}"
        values[f"quality.curve.{key[name]}.hi"] = f"{points[sizes[-1]][0]:.2f}"

    vae_prior = vae_cfg["prior"]
    in_text = {"vae": f"the {vae_prior}-prior VAE's decoder means", "vaeparam": f"the {vae_prior}-prior VAE's "
               "decoder parameters", "vaedraw": f"the {vae_prior}-prior VAE's draws", "flow": "the RealNVP flow",
               "ddpm": f"the DDPM ({models['ddpm'][6:]})", "ddpmode": f"the DDPM ({models['ddpmode'][6:]})"}
    values["quality.ddpmname"], values["quality.ddpmodename"] = models["ddpm"][6:], models["ddpmode"][6:]
    top, tied = quality_text.best(q, samples)  # by bias-corrected FID; the rows its interval does not resolve
    values["quality.best"] = in_text[key[top]]
    values["quality.copies"] = quality_text.copies_sentence(nn_dist, nn_reference,
                                                            {name: in_text[key[name]] for name in samples})
    values["quality.bestsep"] = quality_text.tied_sentence([in_text[key[name]] for name in tied], "model",
                                                           len(samples) - 1)
    vae_fids = {k: q[models[k]]["fid_corrected"] for k in VAE_WORDS}  # how much the silent choice moves FID
    values["quality.vae.fidspread"] = f"{max(vae_fids.values()) - min(vae_fids.values()):.2f}"
    vae_top, vae_tied = quality_text.best(q, [models[k] for k in VAE_WORDS])  # paired, Holm over 2 comparisons
    vae_sep = quality_text.tied_sentence([VAE_WORDS[key[name]] for name in vae_tied], "output", len(VAE_WORDS) - 1)
    values["quality.vae.bestout"] = f"{VAE_WORDS[key[vae_top]]} ({vae_sep})"
    values["quality.vae.best"] = f"{VAE_WORDS[key[vae_top]]} has the lowest bias-corrected FID: {vae_sep}"

    # Table 3's numbers and sentences, each computed from the estimates by gen_lib.report.likelihood
    fid_iv = {d: q[models[k]] for d, k in OWN_SAMPLES.items()}  # the own samples' rows, compared paired
    values.update({"quality.nlik": f"{len(estimates[0].values):,}", "quality.nllt": str(cfg["nll_t"] or "all"),
                   "quality.nllk": f"{cfg['nll_k']:,}", "quality.odesteps": str(cfg["ode_steps"]),
                   "quality.odesamplesteps": str(max(0, len(ode_grid) - 1)),
                   "quality.odesamplenfe": str(2 * max(0, len(ode_grid) - 1)), "quality.check.rule":
                   likelihood_text.refinement_rule(), "quality.grid": str(cfg["quadrature_grid"]),
                   "quality.checkn": str(cfg["check_n"]), "quality.check.ode": checks["ddpm_ode"],
                   "quality.check.quad": checks["vae"], "quality.rank": likelihood_text.ranking_text(list(estimates)),
                   "quality.agree": likelihood_text.agreement(list(estimates), fid_iv)})
    if smoothing:  # the σ̄_0 floor of the ODE's density, measured on the data
        values.update({"quality.sigmazero": f"{sigma0:.3f}", "quality.onebin": f"{smoothing['one_bin']:.2f}",
                       "quality.zeroshare": f"{100 * smoothing['zero']:.1f}",
                       "quality.smoothcost": f"{smoothing['bits']:.3f}"})
    exact = {e.model: e for e in estimates if e.kind == "exact"}
    for e in estimates:
        values[f"quality.bpd.{e.density.replace('_', '')}.{e.kind}"] = e.text()
        if e.kind == "bound":
            values[f"quality.gap.{e.model}"] = likelihood_text.gap_text(e, exact[e.model], list(estimates))
    values.update(_quality_directions(q, models, real, fid_small, curve, sizes, n))
    write_macros("quality", values)
    return values


def _quality_directions(q, models, real, fid_small, curve, sizes, n) -> dict[str, str]:
    """The macros that decide Section 4's direction words: which way the floor's FID moves with N, and whether its
    excess at the original study's N exceeds the largest difference between the models' bias-corrected FIDs."""
    lo, hi = round(curve[real][sizes[0]][0], 2), round(curve[real][sizes[-1]][0], 2)
    if lo == hi:
        move = f"stays at {lo:.2f} from $N={sizes[0]:,}$ to $N={sizes[-1]:,}$"
    else:
        move = f"{'falls' if hi < lo else 'rises'} from {lo:.2f} at $N={sizes[0]:,}$ to {hi:.2f} at $N={sizes[-1]:,}$"
    n_small = min(256, n)
    excess = fid_small[real] - q[real]["fid"]
    fids = [q[name]["fid_corrected"] for name in models.values() if name in q]
    spread = max(fids) - min(fids)
    small = (f"at $N={n_small}$ the floor's excess over its value at $N={n:,}$ ({excess:.2f}) "
             f"{'exceeds' if excess > spread else 'does not exceed'} the largest difference between the models' "
             f"bias-corrected FIDs at $N={n:,}$ ({spread:.2f})")
    return {"quality.curve.real.move": move, "quality.smallbias": small}
