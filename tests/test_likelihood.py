"""Table 3's rules (gen_lib.report.likelihood): a bound ranks only when it is lower, every sentence turns with the numbers,
and the DDPM's ODE bits/dim scores the same y as the flow's."""

import math

import pytest
import torch
from _sentences import branch, fails_on_fixed_text, fid_row, run_cases
from torch import nn

from gen_lib import data, flows
from gen_lib.report import likelihood as L
from gen_lib.diffusion import DDPM
from gen_lib.stats import holm


def est(density, kind, mean, n=400, spread=0.05, seed=0, name=None):
    """Per-image values mean + noise (the same noise for one seed: differences of equal seeds are exact)."""
    g = torch.Generator().manual_seed(seed)
    values = mean + spread * torch.randn(n, generator=g, dtype=torch.float64)
    return L.Estimate(density, name or f"the {density}", kind, f"{density} ({kind})", values)


def tie(e, kind):
    """e's values plus ±0.01 alternating: a paired difference of mean exactly 0 and se > 0."""
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(e.values.numel() // 2)
    return L.Estimate(e.density + "_tie", e.name + " (tie)", kind, e.method, e.values + 0.01 * signs)


# a difference of 0.5 bits/dim against noise of se = 0.05 * sqrt(2/400) ~ 0.0035: resolved by 140 se;
# a tie: a difference of mean 0 exactly, whose interval covers 0 whatever its width
def test_order_follows_the_rules_for_exact_values_and_bounds():
    lo_exact, hi_exact = est("a", "exact", 1.0, seed=1), est("b", "exact", 1.5, seed=2)
    lo_bound, hi_bound = est("a", "bound", 1.0, seed=1), est("b", "bound", 1.5, seed=2)
    assert L.order(lo_exact, hi_exact) == "better" and L.order(hi_exact, lo_exact) == "worse"
    assert L.order(lo_bound, hi_exact) == "better"  # a bound below an exact value: the bounded model is better
    assert L.order(hi_exact, lo_bound) == "worse"
    assert L.order(hi_bound, lo_exact) == "unresolved"  # a bound above an exact value proves nothing
    assert L.order(lo_exact, hi_bound) == "unresolved"
    assert L.order(lo_bound, hi_bound) == "unresolved"  # two bounds never rank
    tie_a = est("a", "exact", 1.0, seed=3)
    tie_b = tie(tie_a, "exact")
    d = L.paired(tie_a, tie_b)
    assert d["low"] < 0 < d["high"]
    assert L.order(tie_a, tie_b) == "unresolved"


def test_primary_prefers_the_exact_value_and_ranking_covers_every_pair():
    ests = [est("vae", "bound", 2.0, seed=1), est("vae", "exact", 1.9, seed=1), est("flow", "exact", 1.5, seed=2),
            est("ddpm", "bound", 3.0, seed=3)]
    best = L.primary(ests)
    assert best["vae"].kind == "exact" and best["ddpm"].kind == "bound"
    r = L.ranking(ests)
    assert set(r) == {("vae", "flow"), ("vae", "ddpm"), ("flow", "ddpm")}
    assert r[("vae", "flow")] == "worse" and r[("vae", "ddpm")] == "unresolved" and r[("flow", "ddpm")] == "unresolved"


PAIR = {"a": "the a has the better likelihood", "b": "the b has the better likelihood", "open": "are not resolved",
        "bound": "are not ranked"}


def _pair_case(b_mean, b_kind):
    a = est("a", "exact", 1.0, seed=5)
    return (a, tie(a, b_kind) if b_mean is None else est("b", b_kind, b_mean, seed=6))


PAIR_CASES = [
    (_pair_case(1.5, "exact"), branch(PAIR, "a")),
    (_pair_case(0.5, "exact"), branch(PAIR, "b")),
    (_pair_case(None, "exact"), branch(PAIR, "open")),
    (_pair_case(0.5, "bound"), branch(PAIR, "b")),  # a bound below an exact value ranks
    (_pair_case(1.5, "bound"), branch(PAIR, "bound")),  # a bound above an exact value does not
]


@pytest.mark.parametrize("case", PAIR_CASES)
def test_pair_sentence_turns_with_the_numbers(case):
    run_cases(L.pair_sentence, [case])
    assert "bits/dim" in L.pair_sentence(*case[0])  # the numbers that decide it are in the sentence


def test_pair_sentence_fails_on_a_fixed_text():
    fails_on_fixed_text(L.pair_sentence, PAIR_CASES)


def test_a_holm_adjusted_p_value_decides_the_order():
    a, b = est("a", "exact", 1.0, seed=1), est("b", "exact", 1.5, seed=2)
    assert L.pvalue(a, b) < 1e-10 and L.order(a, b) == "better"
    assert L.order(a, b, p=0.2) == "unresolved" and "are not resolved" in L.pair_sentence(a, b, p=0.2)


def _four():
    return [est("flow", "exact", 1.0, seed=1), est("vae", "exact", 2.0, seed=2), est("vae", "bound", 2.2, seed=2),
            est("ddpm", "bound", 1.5, seed=3)]


def test_comparisons_are_table_3s_family_holm_corrected():
    ests = _four()
    p = L.comparisons(ests)
    assert list(p) == [("flow", "vae"), ("flow", "ddpm"), ("vae", "ddpm"), ("vae", "exact")]
    best = L.primary(ests)
    raw = [L.pvalue(best["flow"], best["vae"]), L.pvalue(best["flow"], best["ddpm"]),
           L.pvalue(best["vae"], best["ddpm"]), L.pvalue(ests[2], ests[1])]
    assert list(p.values()) == holm(raw)
    assert "Holm's correction over Table 3's 4 comparisons" in L.ranking_text(ests)


RANK = {"ranked": "the flow has the better likelihood", "bound": "are not ranked", "open": "are not resolved"}
RANK_CASES = [
    (([est("flow", "exact", 1.0, seed=1), est("vae", "exact", 2.0, seed=2)],), branch(RANK, "ranked")),
    (([est("flow", "exact", 1.0, seed=1), est("vae", "bound", 2.0, seed=2)],), branch(RANK, "bound")),
    (([est("flow", "exact", 1.0, seed=3), tie(est("flow", "exact", 1.0, seed=3), "exact")],), branch(RANK, "open")),
]


@pytest.mark.parametrize("case", RANK_CASES)
def test_ranking_text_has_a_clause_per_pair_and_its_rule(case):
    run_cases(L.ranking_text, [case])
    assert L.ranking_text(*case[0]).endswith("(5\\,\\% level, Holm's correction over Table 3's 1 comparisons)")


def test_ranking_text_fails_on_a_fixed_text():
    fails_on_fixed_text(L.ranking_text, RANK_CASES)


GAP = {"above": ") above ", "below": ") below ", "open": ", not significant"}
_exact = est("vae", "exact", 2.0, seed=1)
GAP_CASES = [
    ((est("vae", "bound", 2.1, seed=1), _exact), branch(GAP, "above")),
    ((est("vae", "bound", 1.9, seed=1), _exact), branch(GAP, "below")),
    ((tie(_exact, "bound"), _exact), branch(GAP, "open")),
]


@pytest.mark.parametrize("case", GAP_CASES)
def test_gap_text_says_above_below_or_not_resolved(case):
    run_cases(L.gap_text, [case])


def test_gap_text_in_error_only_for_one_density_and_holm_in_a_table():
    below = L.gap_text(est("vae", "bound", 1.9, seed=1), _exact)
    assert "in error" in below and "one comparison at the 5" in below
    other = L.Estimate("ddpm_ancestral", "the ancestral model", "bound", "bound", _exact.values - 0.1, model="vae")
    assert ") below " in L.gap_text(other, _exact) and "in error" not in L.gap_text(other, _exact)  # two densities
    ests = _four()
    assert "over Table 3's 4 comparisons" in L.gap_text(ests[2], ests[1], ests)


def test_gap_text_fails_on_a_fixed_text():
    fails_on_fixed_text(L.gap_text, GAP_CASES)


_LIK = [est("flow", "exact", 1.0, seed=1), est("vae", "exact", 2.0, seed=2)]
AGREE = {"alike": "rank alike", "opposite": "opposite orders", "open": "is not resolved at this", "none": "no pair"}
AGREE_CASES = [  # flow has the better likelihood; FID says flow better (agree), worse (disagree) or not resolved
    ((_LIK, {"flow": fid_row(1.0, 0.9, 1.1, 1), "vae": fid_row(5.0, 4.5, 5.5, 2)}), branch(AGREE, "alike")),
    ((_LIK, {"flow": fid_row(5.0, 4.5, 5.5, 1), "vae": fid_row(1.0, 0.9, 1.1, 2)}), branch(AGREE, "opposite")),
    ((_LIK, {"flow": fid_row(1.0, 0.5, 2.0, 1), "vae": fid_row(1.2, 0.6, 2.2, 2)}), branch(AGREE, "open")),
    ((_LIK, {"flow": fid_row(1.0, 0.9, 1.1, 1)}), branch(AGREE, "none")),  # the VAE's samples not scored
    # a likelihood order that is not resolved (a bound above an exact value) leaves the pair open
    (([_LIK[0], est("vae", "bound", 2.0, seed=2)], {"flow": fid_row(1.0, 0.9, 1.1, 1),
                                                    "vae": fid_row(5.0, 4.5, 5.5, 2)}), branch(AGREE, "open")),
]


@pytest.mark.parametrize("case", AGREE_CASES)
def test_agreement_turns_with_the_paired_fids(case):
    run_cases(L.agreement, [case])


def test_agreement_fails_on_a_fixed_text():
    fails_on_fixed_text(L.agreement, AGREE_CASES)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="kind"):
        L.Estimate("a", "a", "approximate", "m", torch.zeros(3))
    with pytest.raises(ValueError, match="same images"):
        L.paired(est("a", "exact", 1.0, n=10), est("b", "exact", 1.0, n=11))
    with pytest.raises(ValueError, match="n=1 "):
        L.test_sample(100, 1, seed=0)
    with pytest.raises(ValueError, match="n=101 "):
        L.test_sample(100, 101, seed=0)


def test_test_sample_is_a_fixed_random_subset():
    idx = L.test_sample(10_000, 500, seed=3)
    assert len(idx) == len(set(idx.tolist())) == 500 and 0 <= idx.min() and idx.max() < 10_000
    assert torch.equal(idx, L.test_sample(10_000, 500, seed=3))
    assert idx[:100].float().mean() > 1000  # not the first images of the test set (their mean index would be ~50)


class Zero(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def test_ode_bits_per_dim_of_a_zero_network_is_the_terminal_gaussian_on_the_flows_y():
    """ε ≡ 0: the ODE does not move x̄ = x0 and has no divergence, so −log p(x0) = −log N(√ᾱ_T x0; 0, I) − D/2 log ᾱ_T
    in closed form; y must be the flow's dequantized images (same seed and batches)."""
    ddpm = DDPM(Zero(), T=50, beta_start=1e-3, beta_end=0.2, shape=(1, 28, 28)).double()
    images = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0)).mul(255).round().div(255)
    got = L.ode_bits_per_dim(ddpm, images, seed=4, batch_size=3, steps=10)
    gen = torch.Generator().manual_seed(4)
    y = torch.cat([data.dequantize(images[i:i + 3], generator=gen) for i in range(0, 7, 3)]).double()
    x0, a_T, D = 2 * y - 1, ddpm.alphas_cumprod[-1].item(), 784
    nll = (0.5 * (a_T * x0.flatten(1) ** 2).sum(1) + 0.5 * D * math.log(2 * math.pi) - 0.5 * D * math.log(a_T))
    log_py = -(nll - D * math.log(2.0))  # the Jacobian of y -> x0 = 2y - 1
    torch.testing.assert_close(got, flows.bits_per_dim(log_py, dim=D), rtol=1e-10, atol=1e-10)


def test_table3_has_a_row_per_estimate_with_the_paired_columns():
    """What each value is, its allowance, and the paired intervals widened by both allowances (as `order` reads them)."""
    ests = [est("flow", "exact", 1.0, seed=1), est("vae", "exact", 1.5, seed=2), est("vae", "bound", 1.6, seed=2)]
    ests[1].word, ests[1].numerical = "near-exact (quadrature)", 0.02
    frame = L.table3_frame(ests, fid={"flow": "3.0 [2.0, 4.0]"})
    assert list(frame.index) == ["The flow", "The vae", "The vae"] and len(frame.columns) == 6
    assert list(frame.iloc[:, 0]) == ["exact: flow (exact)", "near-exact (quadrature): vae (exact)", "bound: vae (bound)"]
    assert list(frame.iloc[:, 2]) == ["--", "0.020", "--"]
    assert frame.iloc[0, 3] == "--" and frame.iloc[0, 5] == "3.0 [2.0, 4.0]"
    d, raw = L._interval(ests[1], ests[0]), L.paired(ests[1], ests[0])
    assert d["low"] == pytest.approx(raw["low"] - 0.02) and d["high"] == pytest.approx(raw["high"] + 0.02)
    assert frame.iloc[1, 3] == L.report.with_interval(d["mean"], d["low"], d["high"], 3)
    gap = L._interval(ests[2], ests[1])  # the bound's excess over its own exact value, widened by 0.02
    assert frame.iloc[2, 4] == L.report.with_interval(gap["mean"], gap["low"], gap["high"], 3)
    assert frame.iloc[1, 4] == "--" and frame.iloc[1, 1] == ests[1].text()


def test_numerical_error_widens_the_comparison_until_it_is_not_resolved():
    """The ODE's or the quadrature's grid error enters every comparison: a difference of 0.5 bits/dim ranks with
    no numerical error, and is not resolved once the two estimates' error bounds add up to more than it."""
    a, b = est("a", "exact", 1.0, seed=1), est("b", "exact", 1.5, seed=2)
    assert L.order(a, b) == "better"
    a.numerical = b.numerical = 0.3
    assert L.order(a, b) == "unresolved"
    assert "widened by 0.600" in L.pair_sentence(a, b) and "not resolved" in L.pair_sentence(a, b)


def test_refinement_is_richardsons_estimate_of_the_coarse_grids_error():
    """fine − coarse = 0.01 ± noise: the allowance is 4/3 (second order) or 8/7 (third) of the interval's largest
    |end|, and bounds the fine value's error when halving multiplies the error by at least 1.75 (resp. 1 + 7/8)."""
    coarse = torch.linspace(1.0, 2.0, 50, dtype=torch.float64)
    fine = coarse + 0.01 + 0.001 * torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = L.refinement(coarse, fine)
    end = max(abs(r["low"]), abs(r["high"]))
    assert r["low"] < 0.01 < r["high"] and r["n"] == 50 and r["factor"] == pytest.approx(4 / 3)
    assert r["bound"] == pytest.approx(4 / 3 * end) and r["min_ratio"] == pytest.approx(1.75)
    assert L.refinement(coarse, fine, order=3)["bound"] == pytest.approx(8 / 7 * end)
    # a second-order error, e = c h^2: the fine value's error is a third of the change, inside the allowance
    e_fine = 0.01 / 3
    assert e_fine <= L.refinement(coarse, coarse + 0.01)["bound"]
    text = L.refinement_text(r, "the grid")
    assert text.startswith("halving the grid changes the mean by") and f"{r['bound']:.3f} bits/dim" in text
    assert "at least 1.75" in text and "widened by it" in text
    assert "at least 1.75" in L.refinement_rule() and "4/3" not in L.refinement_rule()
