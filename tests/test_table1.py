"""Part 1's sentences (gen_lib.report.table1): each turns when the results that decide it are perturbed."""

import torch

from gen_lib.report import table1

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


def test_ordering_sentence_turns_with_the_sign_of_each_gap():
    holds = table1.ordering_sentence(table1.differences(results()), LABELS)
    assert holds.startswith("on average over the images, ELBO") and "holds for every prior" in holds
    above = table1.ordering_sentence(table1.differences(results(shift_logpx=-3.0)), LABELS)  # IWAE above log p(x)
    assert "holds for Gaussian and MoG, but for flow the IWAE estimate lies above the quadrature" in above
    below = table1.ordering_sentence(table1.differences(results(shift_iwae=-4.0)), LABELS)  # IWAE below the ELBO
    assert "for MoG the IWAE estimate lies below the ELBO" in below
    unresolved = table1.ordering_sentence(table1.differences(results(shift_logpx=-1.0)), LABELS)  # gap ~ 0
    assert "for flow the IWAE estimate is not resolved from the quadrature" in unresolved


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


def test_best_sentence_says_whether_the_difference_is_significant():
    means, base = {"gaussian": -135.0, "mog": -134.0, "flow": -134.5}, "gaussian"
    text = table1.best_sentence(means, {"mog": 0.01, "flow": 0.3}, base, LABELS)
    assert text.startswith("the MoG prior has the highest mean test ELBO, 1.00 nats above") and "is significant" in text
    assert "is not significant" in table1.best_sentence(means, {"mog": 0.2, "flow": 0.3}, base, LABELS)
    means["gaussian"] = -133.0  # the baseline is best
    assert table1.best_sentence(means, {"mog": 0.01, "flow": 0.3}, base, LABELS) == \
        "the Gaussian prior has the highest mean test ELBO; it is significantly higher than that of MoG"


def test_convergence_sentence_compares_the_last_gain_with_the_seed_spread():
    curves = {"gaussian": torch.tensor([[-140.0, -136.0], [-141.0, -137.0]]),  # gain 4, spread 0.7
              "mog": torch.tensor([[-140.0, -139.9], [-142.0, -141.8]]),  # gain 0.15, spread 1.3
              "flow": torch.tensor([[-140.0, -139.0]])}  # one seed
    conv = table1.convergence(curves)
    assert conv["gaussian"][0] == 4.0
    text = table1.convergence_sentence(conv, LABELS)
    assert text == ("for Gaussian the last epoch's gain exceeds that spread, so longer training would raise their "
                    "ELBO further; for MoG it lies within the spread; for flow one epoch or one seed gives no comparison")


def test_brute_force_sentence_turns_with_the_quadrature_error():
    real = table1.brute_force_sentence("flow", iwae=-90.0, quad=-92.0, fine=-92.01, coarse=-92.02, n=1600, half_width=6)
    assert "so the overshoot is the IWAE estimate's" in real
    doubt = table1.brute_force_sentence("flow", iwae=-90.0, quad=-92.0, fine=-89.9, coarse=-89.8, n=1600, half_width=6)
    assert "may be a quadrature error" in doubt
    none = table1.brute_force_sentence("flow", iwae=-93.0, quad=-92.0, fine=-92.0, coarse=-92.0, n=1600, half_width=6)
    assert none.endswith("no IWAE estimate lies above its quadrature value")
