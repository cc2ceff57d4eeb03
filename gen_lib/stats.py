"""The study's statistics: a Student-t interval on a mean of per-example values (`mean_ci`), and
Welch's t-test of each prior against a baseline on the per-seed means, with Holm's correction for the
several comparisons (Table 1).

- Welch (1947): t = (m_a − m_b) / √(s_a²/n_a + s_b²/n_b), with the Welch–Satterthwaite degrees of
  freedom; two-sided p-value (scipy's `ttest_ind(equal_var=False)`).
- Holm (1979), step-down: sort the m p-values p_(1) ≤ ... ≤ p_(m); the adjusted
  p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)). Rejecting where p̃ ≤ α keeps the family-wise
  error rate at α, under any dependence between the tests.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given (see the module's formula)."""
    p = [float(v) for v in pvalues]
    if any(not 0.0 <= v <= 1.0 for v in p):
        raise ValueError(f"p-values must lie in [0, 1]; got {p}")
    m, adjusted, running = len(p), [0.0] * len(p), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))  # monotone in the sorted order
        adjusted[i] = running
    return adjusted


def welch_vs_baseline(groups: Mapping[str, Sequence[float]], baseline: str, adjust: bool = True) -> dict[str, float]:
    """Two-sided p-values of Welch's t-test of every group but `baseline` against `baseline`, each group a
    sequence of per-seed values (at least 2 each); Holm-adjusted over these tests unless `adjust` is False (to
    adjust them in a larger family with `holm_family`)."""
    from scipy.stats import ttest_ind

    if baseline not in groups:
        raise ValueError(f"baseline={baseline!r} is not among the groups {', '.join(groups)}")
    small = [name for name, values in groups.items() if len(values) < 2]
    if small:
        raise ValueError(f"Welch's t-test needs at least 2 values per group; {', '.join(small)} have fewer")
    others = [name for name in groups if name != baseline]
    raw = [ttest_ind(groups[name], groups[baseline], equal_var=False).pvalue for name in others]
    return dict(zip(others, holm(raw) if adjust else raw))


def holm_family(pvalues: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Holm over every p-value of a table at once, one family ({column: {row: p}} -> the same, adjusted):
    the family-wise error rate then holds for the whole table, not for each column."""
    keys = [(column, row) for column, rows in pvalues.items() for row in rows]
    adjusted = holm([pvalues[c][r] for c, r in keys])
    out: dict[str, dict[str, float]] = {column: {} for column in pvalues}
    for (column, row), p in zip(keys, adjusted):
        out[column][row] = p
    return out


def mean_pvalue(ci: Mapping[str, float], slack: float = 0.0) -> float:
    """Two-sided p-value of "mean = 0" from a `mean_ci` result (Student t, n − 1 degrees of freedom), with the mean
    first moved `slack` towards 0 (a bound on its numerical error): below α exactly when the 1 − α interval widened
    by `slack` on each side excludes 0. 1 when |mean| <= slack; 0 when se = 0 and |mean| > slack."""
    from scipy.stats import t as student_t

    excess = abs(ci["mean"]) - slack
    if excess <= 0:
        return 1.0
    if ci["se"] == 0:
        return 0.0
    return float(min(1.0, 2 * student_t.sf(excess / ci["se"], ci["n"] - 1)))


def mean_ci(values: torch.Tensor, level: float = 0.95) -> dict[str, float]:
    """Mean of per-example values (N,) (e.g. bits/dim per test image) with its standard error and
    the Student-t interval mean ± t_{(1+level)/2, N−1} · se, se = std / √N.

    Returns {"mean", "se", "low", "high", "n"}. For two models scored on the same examples,
    pass the per-example difference: the paired interval is much narrower than either one.
    """
    from scipy.stats import t as student_t

    v = torch.as_tensor(values).detach().double().flatten().cpu()
    if v.numel() < 2:
        raise ValueError(f"mean_ci needs at least 2 values; got {v.numel()}")
    if not torch.isfinite(v).all():
        raise ValueError("values contain NaN or inf")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")
    mean, se = v.mean().item(), (v.std() / math.sqrt(v.numel())).item()
    half = float(student_t.ppf((1 + level) / 2, v.numel() - 1)) * se
    return {"mean": mean, "se": se, "low": mean - half, "high": mean + half, "n": v.numel()}
