"""Part 1's sentences (Table 1 and its checks), each computed from the results, with a branch for every
outcome: whether training had converged, whether ELBO <= IWAE <= log p(x) holds on average, whether the
IWAE bound rises with K, which prior is best and whether that is significant, and what brute-force
integration says about the largest IWAE overshoot.

One multiplicity rule for Part 1: Holm's correction at the 5 % level over each sentence's family of tests (the
table's Welch tests, ELBO and IWAE together; the 2 x priors ordering differences; the priors' last-epoch gains).
Per-image differences are averaged over seeds, then `stats.mean_ci` gives a 95 % interval over images and
`stats.mean_pvalue` its t-test: a difference "holds" when its Holm-adjusted p-value is below 5 % and it is positive,
is "reversed" when it is negative, and is "not resolved" otherwise.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..stats import holm, mean_ci, mean_pvalue
from . import fmt, join_words

ALPHA = 0.05  # the significance level of the Welch tests (after Holm's correction)


def _names(names: Sequence[str], labels: Mapping[str, str]) -> str:
    return join_words([labels[n] for n in names])


def convergence(curves: Mapping[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per prior, from its test-ELBO curves (seeds, epochs): (the mean over seeds of the last epoch's change,
    the seed-to-seed std of the final value); NaN where there is one epoch or one seed."""
    out = {}
    for name, c in curves.items():
        gain = (c[:, -1] - c[:, -2]).mean().item() if c.shape[1] > 1 else float("nan")
        spread = c[:, -1].std().item() if c.shape[0] > 1 else float("nan")
        out[name] = (gain, spread)
    return out


def convergence_sentence(curves: Mapping[str, torch.Tensor], labels: Mapping[str, str]) -> str:
    """Whether each prior's test ELBO still changed in the last epoch, from its curves (seeds, epochs): a paired
    test of the per-seed gains c[:, -1] − c[:, -2] against zero (Student t, `stats.mean_pvalue`), Holm-corrected
    over the priors tested. The seeds' spread of the final level says nothing about that change."""
    gains = {n: c[:, -1] - c[:, -2] for n, c in curves.items() if c.shape[0] > 1 and c.shape[1] > 1}
    raw = {n: mean_pvalue(mean_ci(g)) for n, g in gains.items()}
    adjusted = dict(zip(raw, holm(list(raw.values()))))
    mean = {n: g.double().mean().item() for n, g in gains.items()}
    rose = [n for n, p in adjusted.items() if p < ALPHA and mean[n] > 0]
    fell = [n for n, p in adjusted.items() if p < ALPHA and mean[n] < 0]
    open_ = [n for n in adjusted if n not in rose + fell]
    unknown = [n for n in curves if n not in gains]

    def ps(names):
        return join_words([f"{adjusted[n]:.2g}" for n in names])

    parts = []
    if rose:
        parts.append(f"for {_names(rose, labels)} the last epoch raised the test ELBO (adjusted $p$ = {ps(rose)}), so "
                     "longer training would raise their ELBO further")
    if fell:
        parts.append(f"for {_names(fell, labels)} the last epoch lowered the test ELBO (adjusted $p$ = {ps(fell)})")
    if open_:
        parts.append(f"for {_names(open_, labels)} the last epoch's change is not distinguishable from zero with "
                     f"these seeds (adjusted $p$ = {ps(open_)})")
    if unknown:
        parts.append(f"for {_names(unknown, labels)} one epoch or one seed gives no test")
    rule = (f" (a t-test of the per-seed last-epoch gains against zero for each prior, Holm-corrected over the "
            f"{len(gains)} prior{'s' if len(gains) > 1 else ''} tested, 5\\,\\% level)" if gains else "")
    return "; ".join(parts) + rule


def differences(per_image: Mapping[str, Sequence[Mapping[str, torch.Tensor]]]) -> dict[str, dict[str, dict]]:
    """Per prior, from each seed's per-image results ({"elbo", "iwae": (N,), "log_px": (n,)}, the quadrature
    on the first n images): `mean_ci` over images of IWAE − ELBO and of log p(x) − IWAE (seed-averaged)."""
    out = {}
    for name, seeds in per_image.items():
        elbo = torch.stack([m["elbo"].double() for m in seeds]).mean(0)
        iwae = torch.stack([m["iwae"].double() for m in seeds]).mean(0)
        log_px = torch.stack([m["log_px"].double() for m in seeds]).mean(0)
        out[name] = {"iwae_elbo": mean_ci(iwae - elbo), "logpx_iwae": mean_ci(log_px - iwae[:len(log_px)])}
    return out


def _clause(ci: Mapping[str, float], p: float) -> str:
    return f"{fmt(ci['mean'])} [{fmt(ci['low'])}, {fmt(ci['high'])}] nats, adjusted $p$ = {p:.2g}"


def ordering_sentence(diffs: Mapping[str, Mapping[str, Mapping[str, float]]], labels: Mapping[str, str]) -> str:
    """ELBO <= IWAE <= log p(x) on average over the images, prior by prior, from the intervals of `differences`:
    a difference holds (or is reversed) when its t-test p-value (`stats.mean_pvalue`), Holm-corrected over all
    2 x priors differences, is below `ALPHA`; otherwise it is not resolved. The 95 % intervals are shown."""
    keys = [(n, k) for n in diffs for k in ("iwae_elbo", "logpx_iwae")]
    adjusted = dict(zip(keys, holm([mean_pvalue(diffs[n][k]) for n, k in keys])))
    side = {key: ("unresolved" if p >= ALPHA else "holds" if diffs[key[0]][key[1]]["mean"] > 0 else "reversed")
            for key, p in adjusted.items()}
    rule = f"5\\,\\% level, Holm's correction over the {len(keys)} differences"
    if all(s == "holds" for s in side.values()):
        return ("on average over the images, ELBO $\\le$ IWAE $\\le\\log p(x)$ holds for every prior: each "
                f"difference lies above zero ({rule})")
    parts = []
    for n in diffs:
        a, b = side[n, "iwae_elbo"], side[n, "logpx_iwae"]
        if a != "holds":
            verb = "lies below" if a == "reversed" else "is not resolved from"
            parts.append(f"for {labels[n]} the IWAE estimate {verb} the ELBO (difference "
                         f"{_clause(diffs[n]['iwae_elbo'], adjusted[n, 'iwae_elbo'])})")
        if b != "holds":
            verb = "lies above" if b == "reversed" else "is not resolved from"
            parts.append(f"for {labels[n]} the IWAE estimate {verb} the quadrature log-likelihood (log p(x) $-$ "
                         f"IWAE {_clause(diffs[n]['logpx_iwae'], adjusted[n, 'logpx_iwae'])})")
    ok = [n for n in diffs if side[n, "iwae_elbo"] == side[n, "logpx_iwae"] == "holds"]
    head = (f"on average over the images, ELBO $\\le$ IWAE $\\le\\log p(x)$ holds for {_names(ok, labels)}, but "
            if ok else "on average over the images, the ordering ELBO $\\le$ IWAE $\\le\\log p(x)$ is not shown: ")
    return head + "; ".join(parts) + f" ({rule})"


def k_curve_sentence(sweep: Mapping[str, Mapping[int, float]], log_px: Mapping[str, float],
                     labels: Mapping[str, str]) -> str:
    """Whether the mean IWAE bound rises at every step of K, and where its largest K ends against the
    quadrature value on the same images (one seed's models, one draw per K)."""
    ks = sorted(next(iter(sweep.values())))
    dips = [n for n, v in sweep.items() if any(v[b] < v[a] for a, b in zip(ks, ks[1:]))]
    above = [n for n, v in sweep.items() if v[ks[-1]] > log_px[n]]
    first = ("it rises at every step for every prior" if not dips else
             f"it falls at some step for {_names(dips, labels)} (a stochastic estimate: one draw per $K$)"
             + (f" and rises at every step for {_names([n for n in sweep if n not in dips], labels)}"
                if len(dips) < len(sweep) else ""))
    second = ("and at $K=" + str(ks[-1]) + "$ stays below the quadrature value for every prior" if not above else
              f"and at $K={ks[-1]}$ ends above the quadrature value for {_names(above, labels)}")
    return f"{first}, {second}"


def best_sentence(means: Mapping[str, float], pvalues: Mapping[str, float], base: str, labels: Mapping[str, str],
                  what: str = "mean test ELBO") -> str:
    """The prior with the highest mean, and whether its difference to the baseline `base` is significant at
    `ALPHA` (Holm-adjusted Welch p-values `pvalues`, one per prior but the baseline); when the baseline is best,
    which of the others it is significantly above and which these seeds do not separate from it."""
    top = max(means, key=means.get)
    level = "at the 5\\,\\% level after Holm's correction"
    if top == base:
        higher = [n for n in pvalues if pvalues[n] < ALPHA]
        open_ = [n for n in pvalues if n not in higher]
        text = f"the {labels[base]} prior has the highest {what}"
        if higher:
            text += f"; it is significantly higher than that of {_names(higher, labels)} ({level})"
        if open_:
            text += (f"; its difference to {_names(open_, labels)} is not significant {level} "
                     f"($p={join_words([f'{pvalues[n]:.2g}' for n in open_])}$): these seeds do not separate them")
        return text
    p = pvalues[top]
    verdict = (f"significant {level}" if p < ALPHA else
               f"not significant {level}: these seeds do not separate them")
    return (f"the {labels[top]} prior has the highest {what}, {fmt(means[top] - means[base])} nats above the "
            f"{labels[base]} prior's; the difference is {verdict} ($p={p:.2g}$)")


def brute_force_sentence(label: str, iwae: float, quad: float, fine: float, coarse: float, n: int,
                         half_width: float) -> str:
    """What the global grid says about the largest IWAE overshoot (IWAE estimate `iwae` above the
    quadrature `quad`): real if the quadrature agrees with the brute force (`fine` on the n x n grid,
    `coarse` on the n/2 grid, their difference its error) by less than the overshoot."""
    overshoot, error = iwae - quad, abs(fine - quad) + abs(fine - coarse)
    head = (f"on the largest overshoot ({label} prior: IWAE {fmt(iwae)} against quadrature {fmt(quad)} nats), "
            f"brute-force integration on a global ${n}\\times{n}$ grid over $[-{half_width:.1f}, {half_width:.1f}]^2$ "
            f"gives {fmt(fine)} ({fmt(coarse)} on the ${n // 2}\\times{n // 2}$ grid)")
    if overshoot <= 0:
        return head + ": no IWAE estimate lies above its quadrature value"
    if error < overshoot:
        return head + (f": the quadrature agrees with it to {error:.2g} nats, less than the overshoot of "
                       f"{fmt(overshoot)}, so the overshoot is the IWAE estimate's, not a quadrature error")
    return head + (f": the quadrature differs from it by up to {error:.2g} nats, as much as the overshoot of "
                   f"{fmt(overshoot)}, so this overshoot may be a quadrature error")
