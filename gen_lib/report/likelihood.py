"""Table 3: the three models' likelihoods on one scale, values beside bounds, and what they allow us to say.

Every value is bits/dim of the same dequantized 8-bit test images y = (255 x + u)/256 (the same u for
every model: the same images, `seed` and batches), `gen_lib.data.dequantized_bits_per_dim`. Lower is better.

A value is of kind "exact" — the flow's change of variables (exact); the VAE's log p(y) by quadrature over its
2-D latent (near-exact: the grid's error); the DDPM's probability-flow ODE (an estimate: unbiased in the trace,
limited by the solver, of the density of the data smoothed at the smallest noise level σ̄_0) — or an *upper
bound* (the VAE's IWAE bound; Ho et al.'s variational bound of the DDPM's ancestral model). The ranking rules
treat every "exact" kind as a value, widened by its numerical allowance (`refinement`), never as a bound. The
rules (`order`): with the paired difference d = a − b over the same images, its t-test Holm-corrected over the
table's comparisons (`comparisons`: one multiplicity rule for Table 3),

- a is better than b when d is significantly below 0 and b's value is exact (a's value, exact or an
  upper bound, is then above a's true value and below b's);
- a bound above an exact value proves nothing (the bounded model's true value may lie anywhere below):
  "not resolved", as is any pair whose difference is not significant.

The DDPM's two numbers belong to two densities that share one ε-network: the ODE's is that of
deterministic DDIM (η = 0) in its continuous limit, the bound that of the ancestral sampler
(σ_t² = β_t). The VAE's two numbers belong to one density (its draws x ~ p(x|z)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch

from .. import report
from ..data import dequantized_bits_per_dim, to_signed
from ..diffusion import DDPM
from ..diffusion_nll import log_prob_y
from ..stats import holm, mean_ci, mean_pvalue
from ..intervals import paired as paired_fid
from ..vae import VAE
from ..vae_eval import dataset_bits_per_dim

KINDS = ("exact", "bound")
ALPHA = 0.05  # the level of every comparison, after Holm's correction over the table's comparisons (`comparisons`)
QUADRATURE_ROWS = 2 ** 18  # (image, grid point) pairs per decoder call (64 images at 64x64): bounds its activations
VERSION = 2  # of the estimators: part of the cached results' names, so that a changed method recomputes them


@dataclass
class Estimate:
    """Per-image bits/dim of one density by one method."""

    density: str  # which model's density, e.g. "flow", "ddpm_ode", "ddpm_ancestral", "vae"
    name: str  # the text's name of that density, e.g. "the DDPM's probability-flow ODE"
    kind: str  # "exact" or "bound" (an upper bound on the bits/dim)
    method: str  # how it was computed, for tables, e.g. "IWAE bound, K = 1,000"
    values: torch.Tensor  # (N,) bits/dim per image, float64
    model: str = ""  # the trained network behind it ("ddpm" for both DDPM densities); "" = `density`
    numerical: float = 0.0  # a bound on the mean's numerical error (solver, grid), bits/dim: widens every comparison
    word: str = ""  # what the value is, for tables: "exact", "estimate (probability-flow ODE)", ...; "" = `kind`

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is unknown; choose one of {', '.join(KINDS)}")
        self.values = torch.as_tensor(self.values, dtype=torch.float64).flatten()
        self.model = self.model or self.density
        self.word = self.word or self.kind

    def text(self) -> str:
        """The mean over the images and its standard error, "m $\\pm$ se" (bits/dim, 3 decimals)."""
        se = self.values.std().item() / math.sqrt(self.values.numel())
        return f"{self.values.mean().item():.3f} $\\pm$ {se:.3f}"


def test_sample(n_test: int, n: int, seed: int) -> torch.Tensor:
    """Indices of a fixed random sample of `n` of the `n_test` test images (seeded): the images of Table 3."""
    if not 2 <= n <= n_test:
        raise ValueError(f"n={n} test images for Table 3: need 2 <= n <= {n_test}")
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))[:n]


@torch.no_grad()
def ode_bits_per_dim(ddpm: DDPM, images: torch.Tensor, seed: int = 0, batch_size: int = 500,
                     steps: int | None = None, levels: list[int] | None = None) -> torch.Tensor:
    """Per-image bits/dim (N,) of 8-bit `images` in [0, 1] under the DDPM's probability-flow ODE (`DDPM.ode_nll` on
    `steps` or explicit `levels`, Hutchinson probes from a generator seeded by `seed`: the same probes for the same
    images on any grid), on every model's y (`data.dequantized_bits_per_dim`)."""
    dev = ddpm.betas.device
    gen_v = torch.Generator(device=dev).manual_seed(seed)
    dim = math.prod(ddpm.shape)
    return dequantized_bits_per_dim(images, lambda y: log_prob_y(
        ddpm.ode_nll(to_signed(y).to(dev), steps=steps, generator=gen_v, levels=levels), dim), seed, batch_size)


def quadrature_bits_per_dim(vae: VAE, images: torch.Tensor, seed: int = 0, batch_size: int = 500,
                            n_grid: int = 64) -> torch.Tensor:
    """Per-image bits/dim (N,) of 8-bit `images` under a continuous-Bernoulli VAE with a 2-D latent, from its
    near-exact log p(y) on an `n_grid`² grid (`vae_eval.dataset_bits_per_dim(method="quadrature")`), on every
    model's y, with bounded memory at any `n_grid`."""
    per_call = max(1, QUADRATURE_ROWS // n_grid ** 2)  # images per grid evaluation
    return dataset_bits_per_dim(vae, images, seed=seed, batch_size=batch_size, method="quadrature", n_grid=n_grid,
                                quadrature_batch=per_call)


def paired(a: Estimate, b: Estimate) -> dict[str, float]:
    """Mean of a − b over the same images, its standard error and 95 % Student-t interval (`stats.mean_ci`)."""
    if a.values.shape != b.values.shape:
        raise ValueError(f"{a.name} and {b.name} were scored on {a.values.numel()} and {b.values.numel()} images; "
                         "a paired difference needs the same images")
    return mean_ci(a.values - b.values)


def _interval(a: Estimate, b: Estimate) -> dict[str, float]:
    """`paired(a, b)` with its interval widened by both estimates' numerical error bounds (`slack`)."""
    d = paired(a, b)
    slack = a.numerical + b.numerical
    return {**d, "low": d["low"] - slack, "high": d["high"] + slack, "slack": slack}


def pvalue(a: Estimate, b: Estimate) -> float:
    """Two-sided p-value of a − b = 0 from the paired t-test, with the mean first moved towards 0 by both
    estimates' numerical error bounds (`stats.mean_pvalue`): below α exactly when `_interval` at 1 − α
    excludes 0."""
    return mean_pvalue(paired(a, b), a.numerical + b.numerical)


def order(a: Estimate, b: Estimate, p: float | None = None) -> str:
    """"better" (a's density has the lower bits/dim), "worse", or "unresolved", by the module's rules: the
    difference must be significant at `ALPHA` by `p` (a Holm-adjusted p-value of the pair in its table; by
    default `pvalue(a, b)`, one comparison), and only an exact value can be beaten (a bound never ranks as the
    value it bounds)."""
    p = pvalue(a, b) if p is None else p
    mean = paired(a, b)["mean"]
    if p < ALPHA and mean < 0 and b.kind == "exact":
        return "better"
    if p < ALPHA and mean > 0 and a.kind == "exact":
        return "worse"
    return "unresolved"


def primary(estimates: list[Estimate]) -> dict[str, Estimate]:
    """Per density, the estimate that ranks it: its exact value where there is one, else its bound."""
    out: dict[str, Estimate] = {}
    for e in estimates:
        if e.density not in out or (e.kind == "exact" and out[e.density].kind != "exact"):
            out[e.density] = e
    return out


def _cell(d: dict[str, float]) -> str:
    return report.with_interval(d["mean"], d["low"], d["high"], 3)


def _diff(d: dict[str, float]) -> str:
    text = report.with_interval(d["mean"], d["low"], d["high"], 3) + " bits/dim"
    return text + (f" (the interval widened by {d['slack']:.3f} for numerical error)" if d.get("slack", 0) >= 5e-4
                   else "")


def pair_sentence(a: Estimate, b: Estimate, p: float | None = None) -> str:
    """One clause on the pair, with the numbers that decide it (bits/dim, paired over the same images, and the
    p-value `p` of `order`, Holm-adjusted where the pair is one of a table's comparisons)."""
    p = pvalue(a, b) if p is None else p
    d, verdict = _interval(a, b), order(a, b, p)
    what = f"{a.name} minus {b.name}: {_diff(d)}, $p$ = {p:.2g}"
    if verdict == "better":
        return f"{a.name} has the better likelihood ({what})"
    if verdict == "worse":
        return f"{b.name} has the better likelihood ({what})"
    if p >= ALPHA:
        return f"{a.name} and {b.name} are not resolved ({what}, not significant)"
    above, below = (a, b) if d["mean"] > 0 else (b, a)
    return (f"{above.name} and {below.name} are not ranked ({what}): {above.name}'s value is an upper bound that "
            f"lies above {below.name}'s, and a bound can only show a model better")


def comparisons(estimates: list[Estimate]) -> dict[tuple[str, str], float]:
    """Table 3's family of comparisons and their Holm-adjusted p-values (`pvalue`): every pair of densities by
    their `primary` estimates, keyed (density a, density b), and every bound against its own model's exact value,
    keyed (bound's density, "exact")."""
    best = primary(estimates)
    exact = {e.model: e for e in estimates if e.kind == "exact"}
    pairs = {(a, b): (best[a], best[b]) for a, b in combinations(best, 2)}
    pairs.update({(e.density, "exact"): (e, exact[e.model]) for e in estimates
                  if e.kind == "bound" and e.model in exact})
    return dict(zip(pairs, holm([pvalue(*pair) for pair in pairs.values()])))


def _rule(estimates: list[Estimate]) -> str:
    return f"5\\,\\% level, Holm's correction over Table 3's {len(comparisons(estimates))} comparisons"


def ranking(estimates: list[Estimate]) -> dict[tuple[str, str], str]:
    """`order` of every pair of densities (by their `primary` estimates), keyed (density a, density b), each at
    its Holm-adjusted p-value in `comparisons`."""
    best, p = primary(estimates), comparisons(estimates)
    return {(a, b): order(best[a], best[b], p[a, b]) for a, b in combinations(best, 2)}


def ranking_text(estimates: list[Estimate]) -> str:
    """The report's sentence on the likelihood ranking: one clause per pair of densities, and the rule."""
    best, p = primary(estimates), comparisons(estimates)
    return ("; ".join(pair_sentence(best[a], best[b], p[a, b]) for a, b in combinations(best, 2))
            + f" ({_rule(estimates)})")


def gap_text(bound: Estimate, exact: Estimate, estimates: list[Estimate] | None = None) -> str:
    """How far a bound lies above an exact value on the same images, with its interval, in words: above or below
    when significant (Holm-adjusted in the family of `estimates`, Table 3's `comparisons`; else one comparison)."""
    d = _interval(bound, exact)
    p = comparisons(estimates)[bound.density, "exact"] if estimates else pvalue(bound, exact)
    rule = _rule(estimates) if estimates else "one comparison at the 5\\,\\% level"
    b, e = f"{bound.name}'s bound ({bound.method})", f"{exact.name}'s exact value ({exact.method})"
    numbers = f"{_diff(d)} ($p$ = {p:.2g}; {rule})"
    if p >= ALPHA:
        return f"{b} minus {e} is {numbers}, not significant"
    if d["mean"] > 0:
        return f"{b} lies {numbers} above {e}"
    text = f"{b} lies {numbers} below {e}"
    if bound.density == exact.density:  # an upper bound below its own density's exact value
        text += " (a bound below the exact value: one of the two is in error beyond its standard error)"
    return text


def agreement(estimates: list[Estimate], rows: dict[str, dict]) -> str:
    """Do likelihood and sample quality rank the models alike? `rows` maps a density to the Table 2 row of its own
    samples (`quality.score`, with replicates); densities without samples are left out. Per pair: agree,
    disagree, or not resolved (by the likelihood rules of `ranking`, or by the paired bootstrap of the two FIDs,
    Holm-corrected over the pairs compared)."""

    best = primary(estimates)
    pairs = {ab: verdict for ab, verdict in ranking(estimates).items() if ab[0] in rows and ab[1] in rows}
    fid = {(a, b): paired_fid(rows[a], rows[b]) for a, b in pairs}
    p_fid = dict(zip(fid, holm([d["p"] for d in fid.values()])))
    agree, disagree, open_ = [], [], []
    for (a, b), verdict in pairs.items():
        names = f"{best[a].name} against {best[b].name}"
        if verdict == "unresolved" or p_fid[a, b] >= ALPHA:
            open_.append(names)
        elif (verdict == "better") == (fid[a, b]["raw"] < 0):
            agree.append(names)
        else:
            disagree.append(names)
    parts = []
    if agree:
        parts.append(f"likelihood and FID rank alike {report.join_words(agree)}")
    if disagree:
        parts.append(f"they rank in opposite orders {report.join_words(disagree)}")
    if open_:
        parts.append(f"one of the two rankings is not resolved at this $N$ for {report.join_words(open_)}")
    if not parts:
        return "no pair of models has both a likelihood and scored samples"
    return "; ".join(parts) + (f" (the likelihoods: {_rule(estimates)}; the FIDs: paired bootstrap, Holm's "
                               f"correction over the {len(pairs)} pairs)")


def refinement(coarse: torch.Tensor, fine: torch.Tensor, order: int = 2) -> dict[str, float]:
    """Richardson's estimate of a numerical method's error, from per-image values on the table's grid (`fine`) and
    on the grid of half its steps (`coarse`: every other ODE level, `diffusion_nll.halved`; half the quadrature
    grid): `mean_ci` of Δ = fine − coarse, the largest |Δ| on one image (`worst`), the factor 2^p/(2^p − 1) of a
    method of order p (4/3 for p = 2) and `bound` = factor × the interval's largest |end|: Richardson's estimate of
    the coarse value's error. It bounds the fine (reported) value's error e whenever halving the steps multiplies
    |e| by r ≥ 1 + 1/factor (1.75 for p = 2; asymptotically r = 2^p = 4), since |Δ| ≥ (r − 1)|e|."""
    diff = torch.as_tensor(fine, dtype=torch.float64) - torch.as_tensor(coarse, dtype=torch.float64)
    d = mean_ci(diff)
    factor = 2 ** order / (2 ** order - 1)
    return {**d, "worst": diff.abs().max().item(), "factor": factor, "min_ratio": 1 + 1 / factor,
            "bound": factor * max(abs(d["low"]), abs(d["high"]))}


def refinement_text(r: dict[str, float], what: str) -> str:
    """The report's words for a `refinement`: the change, and the allowance that widens every comparison."""
    return (f"halving {what} changes the mean by {report.with_interval(r['mean'], r['low'], r['high'], 3)} bits/dim "
            f"over {r['n']:,} images (at most {r['worst']:.3f} on one image); {r['factor']:.3g} times the interval's "
            f"largest end, {r['bound']:.3f} bits/dim, Richardson's estimate of the coarser grid's error, bounds the "
            f"value's error whenever halving multiplies it by at least {r['min_ratio']:.3g}, and every comparison that "
            f"uses the value is widened by it")


def refinement_rule(order: int = 2) -> str:
    """The rule behind `refinement`'s allowance, in words (for the report and the notebook's text)."""
    factor = 2 ** order / (2 ** order - 1)
    return (f"the allowance is {factor:.3g} times the change from the grid of half the steps (Richardson's estimate of "
            f"that coarser grid's error for a method of order {order}); it bounds the error of the value on the full "
            f"grid whenever halving the steps multiplies the error by at least {1 + 1 / factor:.3g} (a method of order "
            f"{order} multiplies it by {2 ** order})")


def table3_frame(estimates: list[Estimate], reference: str = "flow", fid: dict[str, str] | None = None):
    """Table 3 as a DataFrame of formatted strings: per estimate what it is and its method, bits/dim ± se, its
    numerical allowance (`Estimate.numerical`), the paired difference to the `reference` density's exact value and a
    bound's excess over its model's exact value — both intervals widened by the two allowances, as `order` reads
    them — and (from `fid`, density -> text) the sample quality of the density's own samples."""
    import pandas as pd

    ref = next(e for e in estimates if e.density == reference and e.kind == "exact")
    exact = {e.model: e for e in estimates if e.kind == "exact"}
    rows, names = [], []
    for e in estimates:
        gap = _interval(e, exact[e.model]) if e.kind == "bound" and e.model in exact else None
        names.append(f"{e.name[0].upper()}{e.name[1:]}")  # a density with an exact value and a bound: two rows
        rows.append({"likelihood": f"{e.word}: {e.method}", "bits/dim": e.text(),
                     "allowance": f"{e.numerical:.3f}" if e.numerical else "--",
                     f"$-$ {reference} [95 % + allowances]": "--" if e is ref else _cell(_interval(e, ref)),
                     "bound $-$ exact [95 % + allowances]": _cell(gap) if gap else "--",
                     "own samples: FID [95 %]": (fid or {}).get(e.density, "--")})
    frame = pd.DataFrame(rows, index=names)
    frame.index.name = "density"
    return frame
