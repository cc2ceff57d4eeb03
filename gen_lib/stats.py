"""Significance tests of Table 1: Welch's t-test of each prior against a baseline on the per-seed
means, with Holm's correction for the several comparisons.

- Welch (1947): t = (m_a − m_b) / √(s_a²/n_a + s_b²/n_b), with the Welch–Satterthwaite degrees of
  freedom; two-sided p-value (scipy's `ttest_ind(equal_var=False)`).
- Holm (1979), step-down: sort the m p-values p_(1) ≤ ... ≤ p_(m); the adjusted
  p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)). Rejecting where p̃ ≤ α keeps the family-wise
  error rate at α, under any dependence between the tests.
"""

from __future__ import annotations

from typing import Mapping, Sequence


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


def welch_vs_baseline(groups: Mapping[str, Sequence[float]], baseline: str) -> dict[str, float]:
    """Holm-adjusted two-sided p-values of Welch's t-test of every group but `baseline` against `baseline`,
    each group a sequence of per-seed values (at least 2 each)."""
    from scipy.stats import ttest_ind

    if baseline not in groups:
        raise ValueError(f"baseline={baseline!r} is not among the groups {', '.join(groups)}")
    small = [name for name, values in groups.items() if len(values) < 2]
    if small:
        raise ValueError(f"Welch's t-test needs at least 2 values per group; {', '.join(small)} have fewer")
    others = [name for name in groups if name != baseline]
    raw = [ttest_ind(groups[name], groups[baseline], equal_var=False).pvalue for name in others]
    return dict(zip(others, holm(raw)))
