"""Part 1's sentences (gen_lib.report.table1): each turns when the results that decide it are perturbed, each case
checks the whole sentence or the absence of every other branch's phrase, and a fixed text fails them."""

import pytest
import torch
from _sentences import branch, equals, fails_on_fixed_text, run_cases

from gen_lib.report import table1
from gen_lib.stats import mean_pvalue

LABELS = {"gaussian": "Gaussian", "mog": "MoG", "flow": "flow"}


def results(shift_iwae=0.0, shift_logpx=0.0, n=200, seeds=2, seed=0):
    """Per-image results of two seeds of each prior: IWAE ~ ELBO + 2, log p(x) ~ IWAE + 1, noise 0.5."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in LABELS:
        runs = []
        for _ in range(seeds):
            elbo = -100 + torch.randn(n, generator=g, dtype=torch.float64)
            iwae = elbo + 2 + shift_iwae * (name == "mog") + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
            log_px = iwae[:50] + 1 + shift_logpx * (name == "flow") + 0.5 * torch.randn(50, generator=g, dtype=torch.float64)
            runs.append({"elbo": elbo, "iwae": iwae, "log_px": log_px})
        out[name] = runs
    return out


ORDER = {"every": "holds for every prior", "above": "lies above the quadrature", "below": "lies below the ELBO",
         "open": "is not resolved from"}
ORDERING_CASES = [
    ((table1.differences(results()), LABELS), branch(ORDER, "every")),
    ((table1.differences(results(shift_logpx=-3.0)), LABELS), branch(ORDER, "above")),  # IWAE above log p(x)
    ((table1.differences(results(shift_iwae=-4.0)), LABELS), branch(ORDER, "below")),  # IWAE below the ELBO
    ((table1.differences(results(shift_logpx=-1.0)), LABELS), branch(ORDER, "open")),  # gap ~ 0
]


@pytest.mark.parametrize("case", ORDERING_CASES)
def test_ordering_sentence_turns_with_the_sign_of_each_gap(case):
    run_cases(table1.ordering_sentence, [case])
    text = table1.ordering_sentence(*case[0])
    assert text.startswith("on average over the images, ") and "Holm's correction over the 6 differences" in text


def test_ordering_sentence_clauses():
    above = table1.ordering_sentence(*ORDERING_CASES[1][0])
    assert "holds for Gaussian and MoG, but for flow the IWAE estimate lies above the quadrature" in above
    assert "for MoG the IWAE estimate lies below the ELBO" in table1.ordering_sentence(*ORDERING_CASES[2][0])


def _ci(mean, se, n=200):
    return {"mean": mean, "se": se, "low": mean - 1.97 * se, "high": mean + 1.97 * se, "n": n}


def test_ordering_sentence_corrects_for_its_several_differences():
    """Two differences each at p ~ 0.03, their 95 % intervals above zero: after Holm's correction over the six
    differences neither is resolved; alone in a family of two, with one clear difference, it is."""
    clear = {"iwae_elbo": _ci(2.0, 0.1), "logpx_iwae": _ci(1.0, 0.1)}
    diffs = {"gaussian": {**clear, "logpx_iwae": _ci(0.22, 0.1)}, "mog": clear,
             "flow": {**clear, "logpx_iwae": _ci(0.22, 0.1)}}
    assert diffs["flow"]["logpx_iwae"]["low"] > 0 and 0.025 < mean_pvalue(diffs["flow"]["logpx_iwae"]) < 0.05
    text = table1.ordering_sentence(diffs, LABELS)
    assert text.startswith("on average over the images, ELBO $\\le$ IWAE $\\le\\log p(x)$ holds for MoG, but for "
                           "Gaussian the IWAE estimate is not resolved from the quadrature")
    assert "for flow the IWAE estimate is not resolved from the quadrature" in text
    one = table1.ordering_sentence({"flow": diffs["flow"]}, LABELS)
    assert "holds for every prior" in one and "over the 2 differences" in one


def test_ordering_sentence_fails_on_a_fixed_text():
    fails_on_fixed_text(table1.ordering_sentence, ORDERING_CASES)


def test_k_curve_sentence_sees_a_dip_and_an_end_above_the_quadrature():
    sweep = {"gaussian": {1: -95.0, 10: -94.0, 100: -93.5}, "mog": {1: -96.0, 10: -95.0, 100: -94.8}}
    logpx = {"gaussian": -93.0, "mog": -94.0}
    assert table1.k_curve_sentence(sweep, logpx, LABELS) == \
        "it rises at every step for every prior, and at $K=100$ stays below the quadrature value for every prior"
    sweep["mog"][100] = -95.2  # a dip from K = 10 to 100
    logpx["gaussian"] = -93.6  # the largest K ends above the quadrature
    text = table1.k_curve_sentence(sweep, logpx, LABELS)
    assert "falls at some step for MoG" in text and "rises at every step for Gaussian" in text
    assert "ends above the quadrature value for Gaussian" in text



MEANS = {"gaussian": -135.0, "mog": -134.0, "flow": -134.5}
BASE_BEST = {"gaussian": -133.0, "mog": -134.0, "flow": -134.5}
LEVEL = "at the 5\\,\\% level after Holm's correction"
BEST_CASES = [
    ((MEANS, {"mog": 0.01, "flow": 0.3}, "gaussian", LABELS), equals(
        "the MoG prior has the highest mean test ELBO, 1.00 nats above the Gaussian prior's; the difference is "
        f"significant {LEVEL} ($p=0.01$)")),
    ((MEANS, {"mog": 0.2, "flow": 0.3}, "gaussian", LABELS), equals(
        "the MoG prior has the highest mean test ELBO, 1.00 nats above the Gaussian prior's; the difference is "
        f"not significant {LEVEL}: these seeds do not separate them ($p=0.2$)")),
    ((BASE_BEST, {"mog": 0.01, "flow": 0.02}, "gaussian", LABELS), equals(
        f"the Gaussian prior has the highest mean test ELBO; it is significantly higher than that of MoG and flow "
        f"({LEVEL})")),
    ((BASE_BEST, {"mog": 0.01, "flow": 0.3}, "gaussian", LABELS), equals(
        f"the Gaussian prior has the highest mean test ELBO; it is significantly higher than that of MoG ({LEVEL}); "
        f"its difference to flow is not significant {LEVEL} ($p=0.3$): these seeds do not separate them")),
    ((BASE_BEST, {"mog": 0.2, "flow": 0.3}, "gaussian", LABELS), equals(  # nothing significant: said so
        f"the Gaussian prior has the highest mean test ELBO; its difference to MoG and flow is not significant "
        f"{LEVEL} ($p=0.2 and 0.3$): these seeds do not separate them")),
]


@pytest.mark.parametrize("case", BEST_CASES)
def test_best_sentence_says_whether_the_difference_is_significant(case):
    run_cases(table1.best_sentence, [case])


def test_best_sentence_fails_on_a_fixed_text():
    fails_on_fixed_text(table1.best_sentence, BEST_CASES)


def _curves(*gains, start=(-140.0, -143.0, -137.0)):
    """Test-ELBO curves (seeds, 2 epochs): seed s starts at start[s] and gains gains[s] in the last epoch."""
    return torch.tensor([[a, a + g] for a, g in zip(start, gains)], dtype=torch.float64)


GAIN = {"rose": "raised the test ELBO", "fell": "lowered the test ELBO", "open": "not distinguishable from zero",
        "none": "gives no test"}
CONVERGENCE_CASES = [  # three seeds whose final levels spread by 3 nats: the spread decides nothing
    (({"gaussian": _curves(0.4, 0.5, 0.7)}, LABELS), branch(GAIN, "rose")),  # every seed gained: rose
    (({"gaussian": _curves(-0.4, -0.5, -0.7)}, LABELS), branch(GAIN, "fell")),
    (({"gaussian": _curves(0.5, -0.3, 0.1)}, LABELS), branch(GAIN, "open")),
    (({"gaussian": _curves(0.5)}, LABELS), branch(GAIN, "none")),  # one seed
]


@pytest.mark.parametrize("case", CONVERGENCE_CASES)
def test_convergence_sentence_tests_the_per_seed_gains(case):
    run_cases(table1.convergence_sentence, [case])


def test_convergence_sentence_with_every_branch_and_its_rule():
    curves = {"gaussian": _curves(0.5, 0.5, 0.5), "mog": _curves(0.5, -0.3, 0.1), "flow": _curves(1.0)}
    conv = table1.convergence(curves)
    assert conv["gaussian"][0] == 0.5 and conv["gaussian"][1] > 2  # the case: +0.5 each, a spread of 3
    assert table1.convergence_sentence(curves, LABELS) == (
        "for Gaussian the last epoch raised the test ELBO (adjusted $p$ = 0), so longer training would raise their "
        "ELBO further; for MoG the last epoch's change is not distinguishable from zero with these seeds (adjusted "
        "$p$ = 0.71); for flow one epoch or one seed gives no test (a t-test of the per-seed last-epoch gains "
        "against zero for each prior, Holm-corrected over the 2 priors tested, 5\\,\\% level)")


def test_convergence_sentence_fails_on_a_fixed_text():
    fails_on_fixed_text(table1.convergence_sentence, CONVERGENCE_CASES)


def test_brute_force_sentence_turns_with_the_quadrature_error():
    real = table1.brute_force_sentence("flow", iwae=-90.0, quad=-92.0, fine=-92.01, coarse=-92.02, n=1600, half_width=6)
    assert "so the overshoot is the IWAE estimate's" in real
    doubt = table1.brute_force_sentence("flow", iwae=-90.0, quad=-92.0, fine=-89.9, coarse=-89.8, n=1600, half_width=6)
    assert "may be a quadrature error" in doubt
    none = table1.brute_force_sentence("flow", iwae=-93.0, quad=-92.0, fine=-92.0, coarse=-92.0, n=1600, half_width=6)
    assert none.endswith("no IWAE estimate lies above its quadrature value")
