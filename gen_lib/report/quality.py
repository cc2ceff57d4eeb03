"""Sample-quality tables (Table 2, the DDPM's FID against sampling steps) and the sentences that compare
their rows, each with its branch for the other outcome.

Every row is `intervals.quality_intervals_from_features` of one feature set against the same reference
(test-image) features, so its FID, KID, precision and recall come with 95 % basic-bootstrap intervals;
the FID is shown bias-corrected (raw − the replicates' mean excess, clipped at 0, as its interval's
bounds are). Two rows are ranked only where their intervals do not overlap (`report.separated`).
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd
import torch

from .. import intervals
from ..metrics import METRICS
from . import join_words, separated, with_interval

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
    """Every feature set of `sets` against the `reference` features, with intervals; adds `fid_corrected`."""
    q = {}
    for name, f in sets.items():
        v = intervals.quality_intervals_from_features(reference, f, n_boot=n_boot, k=k, seed=seed)
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


def best(q: Mapping[str, Mapping[str, float]], candidates: list[str]) -> tuple[str, list[str]]:
    """The candidate with the lowest bias-corrected FID, and the others whose FID interval overlaps its own
    (not resolved from it at this N), in order of FID."""
    ranked = sorted(candidates, key=lambda name: q[name]["fid_corrected"])
    top = ranked[0]
    return top, [name for name in ranked[1:] if not separated(interval(q[top]), interval(q[name]))]


def best_sentence(q: Mapping[str, Mapping[str, float]], candidates: list[str], words: Mapping[str, str]) -> str:
    """"<best> (its interval overlaps none / overlaps that of <others>: ... not separated)"; `words` names
    each candidate in running text."""
    top, tied = best(q, candidates)
    if len(candidates) < 2:
        return words[top]
    if tied:
        return (f"{words[top]}, but its interval overlaps that of {join_words([words[n] for n in tied])}: at this "
                "$N$ the data do not separate them")
    runner_up = sorted(candidates, key=lambda name: q[name]["fid_corrected"])[1]
    return f"{words[top]}; its interval does not overlap that of {words[runner_up]}, the next best"


def floor_sentence(q: Mapping[str, Mapping[str, float]], name: str, floor: str) -> str:
    """How row `name` stands against the real-data floor `floor`, by their FID intervals (three branches)."""
    a, b = interval(q[name]), interval(q[floor])
    if a[0] > b[1]:
        return "stays above the floor: its interval lies above the real data's"
    if a[1] < b[0]:
        return ("lies below the floor: its interval lies below the real data's, so at this $N$ its samples are closer "
                "to the test images than unseen real images are (the floor is itself an estimate)")
    return ("is not separated from the floor: at this $N$ its samples are as close to the test images as unseen "
            "real images are")


def tied_sentence(tied: list[str], kind: str = "row") -> str:
    """What `best` found about the best row's rivals: the ones its interval overlaps, or none."""
    if tied:
        return f"its interval overlaps that of {join_words(tied)}, so at this $N$ the data do not separate them"
    return f"its interval overlaps no other {kind}'s"


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
