"""Part 1's sentences (Table 1 and its checks), each computed from the results, with a branch for every
outcome: whether training had converged, whether ELBO <= IWAE <= log p(x) holds on average, whether the
IWAE bound rises with K, which prior is best and whether that is significant, and what brute-force
integration says about the largest IWAE overshoot.

Per-image differences are averaged over seeds, then `stats.mean_ci` gives a 95 % interval over images:
a difference "holds" when its interval lies above zero, is "reversed" when it lies below, and is
"not resolved" otherwise.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..stats import mean_ci
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


def convergence_sentence(conv: Mapping[str, tuple[float, float]], labels: Mapping[str, str]) -> str:
    """Whether the last epoch's change exceeds the seed-to-seed spread (still learning beyond the noise)."""
    still = [n for n, (g, s) in conv.items() if g > s]
    within = [n for n, (g, s) in conv.items() if abs(g) <= s]
    fell = [n for n, (g, s) in conv.items() if g < -s]
    unknown = [n for n in conv if n not in still + within + fell]
    parts = []
    if still:
        parts.append(f"for {_names(still, labels)} the last epoch's gain exceeds that spread, so longer training "
                     "would raise their ELBO further")
    if within:
        parts.append(f"for {_names(within, labels)} it lies within the spread")
    if fell:
        parts.append(f"for {_names(fell, labels)} the test ELBO fell by more than the spread")
    if unknown:
        parts.append(f"for {_names(unknown, labels)} one epoch or one seed gives no comparison")
    return "; ".join(parts)


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


def _side(ci: Mapping[str, float]) -> str:
    return "holds" if ci["low"] > 0 else "reversed" if ci["high"] < 0 else "unresolved"


def ordering_sentence(diffs: Mapping[str, Mapping[str, Mapping[str, float]]], labels: Mapping[str, str]) -> str:
    """ELBO <= IWAE <= log p(x) on average over the images, prior by prior, from the intervals of `differences`."""
    side = {n: (_side(d["iwae_elbo"]), _side(d["logpx_iwae"])) for n, d in diffs.items()}
    if all(s == ("holds", "holds") for s in side.values()):
        return ("on average over the images, ELBO $\\le$ IWAE $\\le\\log p(x)$ holds for every prior, each "
                "difference's 95\\,\\% interval above zero")
    parts = []
    for n, (a, b) in side.items():
        d = diffs[n]
        if a != "holds":
            ci = d["iwae_elbo"]
            verb = "lies below" if a == "reversed" else "is not resolved from"
            parts.append(f"for {labels[n]} the IWAE estimate {verb} "
                         f"the ELBO (difference {fmt(ci['mean'])} [{fmt(ci['low'])}, {fmt(ci['high'])}] nats)")
        if b != "holds":
            ci = d["logpx_iwae"]
            verb = "lies above" if b == "reversed" else "is not resolved from"
            parts.append(f"for {labels[n]} the IWAE estimate {verb} "
                         f"the quadrature log-likelihood (log p(x) $-$ IWAE {fmt(ci['mean'])} [{fmt(ci['low'])}, "
                         f"{fmt(ci['high'])}] nats)")
    ok = [n for n, s in side.items() if s == ("holds", "holds")]
    head = (f"on average over the images, ELBO $\\le$ IWAE $\\le\\log p(x)$ holds for {_names(ok, labels)}, but "
            if ok else "on average over the images, the ordering ELBO $\\le$ IWAE $\\le\\log p(x)$ is not shown: ")
    return head + "; ".join(parts)


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
    `ALPHA` (Holm-adjusted Welch p-values `pvalues`, one per prior but the baseline)."""
    top = max(means, key=means.get)
    if top == base:
        higher = [n for n in pvalues if pvalues[n] < ALPHA]
        return (f"the {labels[base]} prior has the highest {what}"
                + ("" if not higher else f"; it is significantly higher than that of {_names(higher, labels)}"))
    p = pvalues[top]
    verdict = ("significant at the 5\\,\\% level after Holm's correction" if p < ALPHA else
               "not significant at the 5\\,\\% level after Holm's correction: these seeds do not separate them")
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
