"""The sample-quality tables' rows and sentences (gen_lib.report.quality): each sentence turns when the
intervals that decide it are perturbed, and the scores come from the bootstrap intervals of the metrics."""

import pytest
import torch
from _sentences import branch, equals, fails_on_fixed_text, fid_row, run_cases

from gen_lib.report import quality


def row(fid, low, high, seed=0):
    return fid_row(fid, low, high, seed=seed)


def test_best_ranks_by_corrected_fid_and_names_the_rows_it_does_not_resolve():
    q = {"a": row(1.0, 0.8, 1.2, 1), "b": row(1.2, 0.8, 1.6, 2), "c": row(3.0, 2.5, 3.5, 3)}
    assert quality.best(q, ["c", "b", "a"]) == ("a", ["b"])  # b is not separated from a by the paired test; c is
    q["b"] = row(1.6, 1.5, 1.7, 2)  # a sharper b: separated now
    assert quality.best(q, list(q)) == ("a", [])
    q["c"] = row(0.5, 0.1, 0.6, 3)  # a new best
    assert quality.best(q, list(q))[0] == "c"


WORDS = {"a": "A", "b": "B", "c": "C"}
BEST = {"tied": "is not significant", "separated": "the next best, by"}
BEST_CASES = [
    (({"a": row(1.0, 0.8, 1.2, 1), "b": row(1.2, 0.8, 1.6, 2)}, ["a", "b"], WORDS), branch(BEST, "tied")),
    (({"a": row(1.0, 0.8, 1.2, 1), "b": row(1.6, 1.5, 1.7, 2)}, ["a", "b"], WORDS), branch(BEST, "separated")),
]


@pytest.mark.parametrize("case", BEST_CASES)
def test_best_sentence_turns_with_the_paired_test(case):
    run_cases(quality.best_sentence, [case])
    assert quality.best_sentence(*case[0]).startswith("A")


def test_best_sentence_fails_on_a_fixed_text():
    fails_on_fixed_text(quality.best_sentence, BEST_CASES)


RULE = "paired bootstrap over the same test images, 5\\,\\% level, Holm's correction over 2 comparisons"
TIED_CASES = [
    ((["B"], "sampler", 2), equals(f"its FID's paired difference to that of B is not significant ({RULE}), so at "
                                   "this $N$ the data do not separate them")),
    (([], "sampler", 2), equals(f"its FID lies below every other sampler's ({RULE})")),
    (([], "sampler", 0), equals("no other sampler is scored")),
]


@pytest.mark.parametrize("case", TIED_CASES)
def test_tied_sentence_states_its_rule(case):
    run_cases(quality.tied_sentence, [case])


def test_tied_sentence_fails_on_a_fixed_text():
    fails_on_fixed_text(quality.tied_sentence, TIED_CASES)


FLOOR = {"above": "stays above the floor", "below": "lies below the floor",
         "open": "is not distinguishable from the floor at this $N$"}
FLOOR_CASES = [
    (({"model": row(5.0, 4.0, 6.0, 1), "real": row(1.0, 0.5, 1.5, 2)}, "model", "real"), branch(FLOOR, "above")),
    (({"model": row(0.2, 0.0, 0.4, 1), "real": row(1.5, 1.2, 1.8, 2)}, "model", "real"), branch(FLOOR, "below")),
    (({"model": row(1.0, 0.6, 1.6, 1), "real": row(1.0, 0.5, 1.5, 2)}, "model", "real"), branch(FLOOR, "open")),
    # the case: an interval of [0, 50] against a floor of [0, 0.5] is not equivalence
    (({"model": row(25.0, 0.0, 50.0, 1), "real": row(0.2, 0.0, 0.5, 2)}, "model", "real"), branch(FLOOR, "open")),
]


@pytest.mark.parametrize("case", FLOOR_CASES)
def test_floor_sentence_has_a_branch_for_each_outcome(case):
    run_cases(quality.floor_sentence, [case])
    text = quality.floor_sentence(*case[0])
    assert text.startswith(tuple(FLOOR.values())) and "as close" not in text and "one comparison" in text


def test_floor_sentence_fails_on_a_fixed_text():
    fails_on_fixed_text(quality.floor_sentence, FLOOR_CASES)


def test_score_and_frame_from_features(seed):
    g = torch.Generator().manual_seed(seed)
    ref, same, shifted = (torch.randn(400, 4, generator=g, dtype=torch.float64) for _ in range(3))
    q = quality.score(ref, {"same": same, "shifted": shifted + 2.0}, n_boot=50, k=3, seed=seed)
    for v in q.values():
        assert v["fid_corrected"] == max(0.0, v["fid"] - v["fid_bias"]) and len(v["fid_replicates"]) == 50
    # a shift of 2 in each of 4 dimensions: FID ||mu_a - mu_b||^2 = 16 plus small covariance terms
    assert q["shifted"]["fid_low"] > q["same"]["fid_high"]
    assert quality.best(q, list(q))[0] == "same"
    table = quality.frame(q)
    assert list(table.columns) == ["FID", *quality.columns().values()] and list(table.index) == ["same", "shifted"]
    v = q["shifted"]
    assert table.loc["shifted", "FID"] == f"{v['fid']:.2f}"
    assert table.loc["shifted", quality.columns()["fid"]].startswith(f"{v['fid_corrected']:.2f}")


def test_copies_sentence_flags_a_sample_closer_than_every_test_image():
    test = torch.tensor([[3.0, 4.0], [2.5, 3.0]])
    far = {"test": test, "m": torch.tensor([[2.6, 3.0], [4.0, 5.0]])}
    assert quality.copies_sentence(far, "test", {"m": "M"}).startswith("No sample lies closer")
    near = {"test": test, "m": torch.tensor([[0.1, 3.0], [4.0, 5.0]])}
    assert "1 of 2 of M; these may be copies" in quality.copies_sentence(near, "test", {"m": "M"})
