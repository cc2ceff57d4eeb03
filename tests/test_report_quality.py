"""The sample-quality tables' rows and sentences (gen_lib.report.quality): each sentence turns when the
intervals that decide it are perturbed, and the scores come from the bootstrap intervals of the metrics."""

import pytest
import torch

from gen_lib.report import quality


def row(fid, low, high, **extra):
    return {"fid": fid + 0.1, "fid_bias": 0.1, "fid_corrected": fid, "fid_low": low, "fid_high": high, **extra}


def test_best_ranks_by_corrected_fid_and_names_the_rows_it_does_not_resolve():
    q = {"a": row(1.0, 0.8, 1.2), "b": row(1.5, 1.1, 1.9), "c": row(3.0, 2.5, 3.5)}
    assert quality.best(q, ["c", "b", "a"]) == ("a", ["b"])  # b overlaps a; c does not
    assert "overlaps that of b" in quality.tied_sentence(quality.best(q, list(q))[1])
    assert "but its interval overlaps that of B" in quality.best_sentence(q, list(q), {"a": "A", "b": "B", "c": "C"})
    q["b"] = row(1.5, 1.3, 1.9)  # now separated: the sentence turns
    assert quality.best(q, list(q)) == ("a", [])
    assert quality.tied_sentence([], "sampler") == "its interval overlaps no other sampler's"
    assert quality.best_sentence(q, list(q), {"a": "A", "b": "B", "c": "C"}) == \
        "A; its interval does not overlap that of B, the next best"
    q["c"] = row(0.5, 0.1, 0.6)  # a new best
    assert quality.best(q, list(q))[0] == "c"


@pytest.mark.parametrize("model, word", [(row(5.0, 4.0, 6.0), "stays above the floor"),
                                         (row(0.2, 0.0, 0.4), "lies below the floor"),
                                         (row(1.0, 0.6, 1.6), "is not separated from the floor")])
def test_floor_sentence_has_a_branch_for_each_outcome(model, word):
    q = {"model": model, "real": row(1.0, 0.5, 1.5)}
    assert quality.floor_sentence(q, "model", "real").startswith(word)


def test_score_and_frame_from_features(seed):
    g = torch.Generator().manual_seed(seed)
    ref, same, shifted = (torch.randn(400, 4, generator=g, dtype=torch.float64) for _ in range(3))
    q = quality.score(ref, {"same": same, "shifted": shifted + 2.0}, n_boot=50, k=3, seed=seed)
    for v in q.values():
        assert v["fid_corrected"] == max(0.0, v["fid"] - v["fid_bias"])
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
