"""Sentence tests that a fixed text cannot pass: each case checks that a sentence holds its own branch's phrase and
none of the other branches' (or equals the whole sentence), and `fails_on_fixed_text` replaces the function by one
that returns the same text whatever it is given, built by joining its own outputs on all its cases, and checks that
every case then fails. Also `fid_row`: a synthetic scored row of Table 2 with the replicates the paired test reads."""

import torch


def branch(phrases: dict[str, str], own: str):
    """A check: the text holds the phrase of branch `own` and no other branch's phrase."""
    def check(text):
        assert phrases[own] in text, text
        others = [p for name, p in phrases.items() if name != own and p in text]
        assert not others, (others, text)
    return check


def equals(expected: str):
    """A check: the text is `expected`, whole."""
    def check(text):
        assert text == expected, text
    return check


def run_cases(fn, cases) -> list[str]:
    """Every case (args, check) on `fn`: its output passes its check. Returns the outputs."""
    outputs = [fn(*args) for args, _ in cases]
    for (_, check), text in zip(cases, outputs):
        check(text)
    return outputs


def fails_on_fixed_text(fn, cases) -> None:
    """The cases pass on `fn`, and every one fails on a fixed text built by joining `fn`'s outputs on all of them."""
    fixed = "; ".join(run_cases(fn, cases))
    passed = []
    for args, check in cases:
        try:
            check((lambda *_: fixed)(*args))
        except AssertionError:
            continue
        passed.append(args)
    assert not passed, f"a fixed text passes the cases {passed}"


def fid_row(fid: float, low: float, high: float, seed: int = 0, n_boot: int = 400, **extra) -> dict:
    """A scored row (`quality.score`) with bias-corrected FID `fid` and replicates whose basic interval is about
    [low, high]: raw FID fid + 0.1, replicates raw + 0.1 + s z, s = (high − low) / 3.92, z from `seed`. Rows of
    different seeds are independent, like rows of unrelated sample sets."""
    z = torch.randn(n_boot, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    raw = fid + 0.1
    return {"fid": raw, "fid_bias": 0.1, "fid_corrected": fid, "fid_low": low, "fid_high": high,
            "fid_replicates": raw + 0.1 + (high - low) / 3.92 * z, "n_real": 100, "n_fake": 100, "n_boot": n_boot,
            "seed": 0, **extra}
