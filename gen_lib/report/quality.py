"""Sample-quality tables (Table 2, the DDPM's FID against sampling steps) and the sentences that compare
their rows, each with its branch for the other outcome.

Every row is `intervals.quality_intervals_from_features` of one feature set against the same reference
(test-image) features, so its FID, KID, precision and recall come with 95 % basic-bootstrap intervals;
the FID is shown bias-corrected (raw − the replicates' mean excess, clipped at 0, as its interval's
bounds are). Every row reweights the reference with the same bootstrap counts, so two rows are compared by the
paired bootstrap of their FIDs' difference (`intervals.paired`), not by whether their marginal intervals overlap.
One multiplicity rule for Table 2 and 03's table: Holm's correction at the 5 % level over each sentence's
comparisons (the best row against each other row; the floor sentence is one comparison).
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd
import torch

from .. import intervals
from ..metrics import METRICS
from ..stats import holm
from . import join_words, with_interval

ALPHA = 0.05  # the level of every comparison of rows, after Holm's correction over a sentence's comparisons

# The original study's Table 2, as it reported it: 256 generated vs 256 test images, Inception-v3 features, no floor.
# Its VAE row showed one image per z, most likely the decoder's parameter (what a sigmoid output gives).
ORIGINAL = {"vaeparam": (4.168, 0.189), "flow": (0.452, 0.158), "ddpm": (0.018, 0.012)}  # (FID, KID)


ORIGINAL_N = 256  # the original study's N: generated and test images per FID


def scope(n: int, n_test: int, n_samples: int) -> str:
    """What N = `n` is, for Table 2's caption: every test image (`n_test`), too small to mean anything (below the
    original study's N), or all that the models' samples allow (`n_samples`, the fewest any model supplies)."""
    if n >= n_test:
        return "the study's N"
    if n < ORIGINAL_N:
        return "a smoke-test N, meaningless"
    if n >= n_samples:
        return "the largest N the profile's samples allow"
    return f"N = {n:,}, fewer than the samples allow"


def score(reference: torch.Tensor, sets: Mapping[str, torch.Tensor], *, n_boot: int, k: int, seed: int
          ) -> dict[str, dict]:
    """Every feature set of `sets` against the `reference` features, with intervals and the replicates that
    `intervals.paired` compares (the same reference weights in every row); adds `fid_corrected`."""
    q = {}
    for name, f in sets.items():
        v = intervals.quality_intervals_from_features(reference, f, n_boot=n_boot, k=k, seed=seed, replicates=True)
        q[name] = {**v, "fid_corrected": max(0.0, v["fid"] - v["fid_bias"])}
    return q


def interval(v: Mapping[str, float], metric: str = "fid") -> tuple[float, float]:
    return v[f"{metric}_low"], v[f"{metric}_high"]


def cell(v: Mapping[str, float], metric: str) -> str:
    """"estimate [low, high]": the FID bias-corrected, as its interval."""
    value = v["fid_corrected"] if metric == "fid" else v[metric]
    return with_interval(value, *interval(v, metric), METRICS[metric].digits)


def columns() -> dict[str, str]:
    """Table 2's column of each registered metric (`gen_lib.metrics.METRICS`)."""
    return {name: m.column for name, m in METRICS.items()}


def frame(q: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """One row per scored set: raw FID at N, then every metric as `cell`."""
    return pd.DataFrame({"FID": {name: f"{v['fid']:.2f}" for name, v in q.items()},
                         **{col: {name: cell(v, m) for name, v in q.items()} for m, col in columns().items()}})


def compare(q: Mapping[str, Mapping[str, float]], top: str, others: list[str]) -> dict[str, dict[str, float]]:
    """Per row of `others`: its FID minus `top`'s by the paired bootstrap (`intervals.paired`), with "p_adj", the
    p-value Holm-corrected over these comparisons."""
    d = {name: intervals.paired(q[name], q[top]) for name in others}
    return {name: {**v, "p_adj": p} for (name, v), p in zip(d.items(), holm([v["p"] for v in d.values()]))}


def _resolved(d: Mapping[str, float]) -> bool:
    """Whether a row's FID lies significantly above the best one's (Holm-adjusted p below `ALPHA`, positive)."""
    return d["p_adj"] < ALPHA and d["raw"] > 0


def best(q: Mapping[str, Mapping[str, float]], candidates: list[str]) -> tuple[str, list[str]]:
    """The candidate with the lowest bias-corrected FID, and the others whose paired difference to it is not
    significant after Holm's correction over the len(candidates) − 1 comparisons (not resolved at this N), in
    order of FID."""
    ranked = sorted(candidates, key=lambda name: q[name]["fid_corrected"])
    top, d = ranked[0], compare(q, ranked[0], ranked[1:])
    return top, [name for name in ranked[1:] if not _resolved(d[name])]


def _rule(n: int) -> str:
    if n == 1:
        return "paired bootstrap over the same test images, one comparison at the 5\\,\\% level"
    return f"paired bootstrap over the same test images, 5\\,\\% level, Holm's correction over {n} comparisons"


def best_sentence(q: Mapping[str, Mapping[str, float]], candidates: list[str], words: Mapping[str, str]) -> str:
    """"<best>, but the data do not separate it from <others> / <best>; its FID lies below that of <next best>"
    by `best`'s paired tests; `words` names each candidate in running text."""
    top, tied = best(q, candidates)
    if len(candidates) < 2:
        return words[top]
    ranked = sorted(candidates, key=lambda name: q[name]["fid_corrected"])
    d, rule = compare(q, top, ranked[1:]), _rule(len(candidates) - 1)
    if tied:
        return (f"{words[top]}, but its FID's paired difference to that of {join_words([words[n] for n in tied])} is "
                f"not significant ({rule}): at this $N$ the data do not separate them")
    v = d[ranked[1]]
    return (f"{words[top]}; its FID lies below that of {words[ranked[1]]}, the next best, by "
            f"{with_interval(v['mean'], v['low'], v['high'])} (adjusted $p$ = {v['p_adj']:.2g}; {rule})")


def floor_sentence(q: Mapping[str, Mapping[str, float]], name: str, floor: str) -> str:
    """How row `name` stands against the real-data floor `floor`: the paired bootstrap of their FIDs' difference
    (one comparison), above, below or not distinguishable at this N (never "as close as")."""
    d = intervals.paired(q[name], q[floor])
    numbers = f"{with_interval(d['mean'], d['low'], d['high'])} ({_rule(1)}; $p$ = {d['p']:.2g})"
    if d["p"] < ALPHA and d["raw"] > 0:
        return f"stays above the floor: its FID exceeds the real data's by {numbers}"
    if d["p"] < ALPHA:
        return (f"lies below the floor: its FID minus the real data's is {numbers}, so at this $N$ its samples are "
                "closer to the test images than unseen real images are (the floor is itself an estimate)")
    return (f"is not distinguishable from the floor at this $N$: its FID minus the real data's is {numbers}, not "
            "significant")


def tied_sentence(tied: list[str], kind: str = "row", n: int = 1) -> str:
    """What `best` found about the best row's `n` rivals: those it does not separate from it, or none."""
    rule = _rule(n)
    if n < 1:
        return f"no other {kind} is scored"
    if tied:
        return (f"its FID's paired difference to that of {join_words(tied)} is not significant ({rule}), so at this "
                "$N$ the data do not separate them")
    return f"its FID lies below every other {kind}'s ({rule})"


def copies_sentence(nn_dist: Mapping[str, torch.Tensor], reference: str, words: Mapping[str, str]) -> str:
    """Whether any sample lies closer to its nearest training image than every `reference` image (real test
    images, which no model saw) does: a memorised sample would. `nn_dist[name]`: (n, k) distances to the
    nearest training images, column 0 the nearest. A sentence, capitalised, without the full stop."""
    floor = nn_dist[reference][:, 0].min().item()
    n_ref = len(nn_dist[reference])
    close = {name: int((d[:, 0] < floor).sum()) for name, d in nn_dist.items() if name != reference}
    if not any(close.values()):
        return (f"No sample lies closer to its nearest training image than the closest of {n_ref} real test images "
                f"does ({floor:.2f}): by this test, none is a copy")
    flagged = [f"{c} of {len(nn_dist[name])} of {words[name]}" for name, c in close.items() if c]
    return (f"Some samples lie closer to their nearest training image than any of {n_ref} real test images does "
            f"({floor:.2f}): {join_words(flagged)}; these may be copies")
