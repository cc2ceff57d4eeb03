"""A small CNN classifier of MNIST digits (or Fashion-MNIST items) whose penultimate
layer is the feature space of FID, KID and precision/recall (`gen_lib.metrics`).

Inception-v3 features cannot be downloaded here, and they describe ImageNet photos,
not 28x28 digits. As is common for MNIST, a network trained on the data itself
gives the features:

    x (B, 1, 28, 28) -> conv3x3(32) -> BN -> ReLU -> maxpool2      (B, 32, 14, 14)
                     -> conv3x3(64) -> BN -> ReLU -> maxpool2      (B, 64, 7, 7)
                     -> flatten -> linear(feature_dim) -> BN       (B, d) = features
                     -> ReLU -> linear(10) = logits                 (B, 10)

The features are the penultimate layer *before* its ReLU, standardised by a
BatchNorm without affine parameters (in eval mode: the training set's running mean
and variance). No unit is ever constant zero, so their covariance is full rank (FID
needs it); every unit has about unit variance on real data, so the polynomial kernel
of KID, k(x, y) = (x.y / d + 1)^3, works on the scale it was designed for (unscaled
activations make KID values of thousands); and d is kept modest (128) so that
N = 2,000 samples estimate a d x d covariance well.

`fit` trains on one tensor, so images and labels travel packed as one (N, 785)
tensor (`pack`). `train_classifier` trains it through `gen_lib.training.fit` in two
phases, a step schedule of the learning rate: `classifier_epochs` at `classifier_lr`,
then `classifier_decay_epochs` at a tenth of it (the low-lr epoch is what takes the
test accuracy above 99 % within a few CPU minutes), each phase with its checkpoint
under `cache.run_dir("classifier", ...)`. `load_classifier` finds the trained one (a
clear error says how to train it when there is none).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import cache, config, data, training

PIXELS = 28 * 28


@dataclass
class ClassifierConfig:
    dataset: str = "mnist"         # mnist | fashion: what it is trained on
    classifier_epochs: int = 2     # passes over the training set at classifier_lr
    classifier_decay_epochs: int = 1  # then passes at classifier_lr / 10 (>= 1)
    classifier_batch_size: int = 128
    classifier_lr: float = 2e-3    # Adam
    feature_dim: int = 128         # width of the penultimate layer (the feature space)
    train_subset: int = 0          # 0 = all 60,000 training images
    classifier_seed: int = 0


class MNISTClassifier(nn.Module):
    """CNN classifier; `features(x)` is its penultimate layer (pre-ReLU), `forward(x)` the logits.

    x: images (B, 1, 28, 28) in [0, 1]. Trained by cross-entropy (`loss`).
    """

    def __init__(self, feature_dim: int = 128, n_classes: int = 10):
        super().__init__()
        self.num_features = feature_dim  # torchmetrics reads this name
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),   # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Flatten(),                                                                     # (B, 3136)
        )
        self.hidden = nn.Linear(64 * 7 * 7, feature_dim)
        self.standardize = nn.BatchNorm1d(feature_dim, affine=False)  # fixed after training: z-scores
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardize(self.hidden(self.conv(x)))  # (B, d), before the ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))  # (B, 10)

    def loss(self, packed: torch.Tensor) -> torch.Tensor:
        x, y = unpack(packed)
        return F.cross_entropy(self(x), y)


def pack(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Images (N, 1, 28, 28) and labels (N,) as one (N, 785) float tensor, the form `fit` takes."""
    return torch.cat([images.reshape(len(images), PIXELS), labels.to(images.dtype)[:, None]], dim=1)


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return packed[:, :PIXELS].reshape(-1, 1, 28, 28), packed[:, PIXELS].long()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels (N,) of images (N, 1, 28, 28), in batches, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(images[i:i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correctly classified images."""
    return (predict(model, images) == labels).float().mean().item()


def classifier_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The classifier's own keys of a resolved [*.quality] dict (so a VAE change never retrains it)."""
    return asdict(config.make(ClassifierConfig, cfg))


def _phases(c: ClassifierConfig) -> list[tuple[str, int, float, int]]:
    """(checkpoint name, epochs, lr, seed) of the two training phases."""
    if c.classifier_decay_epochs < 1:
        raise ValueError(f"classifier_decay_epochs={c.classifier_decay_epochs} must be >= 1 (the low-lr phase)")
    return [("model_phase1.pt", c.classifier_epochs, c.classifier_lr, c.classifier_seed),
            ("model.pt", c.classifier_decay_epochs, c.classifier_lr / 10, c.classifier_seed + 1)]


def train_classifier(cfg: dict[str, Any], progress: bool = True, log=print) -> tuple[MNISTClassifier, dict]:
    """Train (or reuse from the cache) the classifier of `cfg` (a resolved [*.quality] dict).

    Returns the model (eval mode, on the default device) and a dict with its test
    accuracy, the training history of both phases and the cache folder.
    """
    c = config.make(ClassifierConfig, cfg)
    ccfg = asdict(c)
    folder = cache.run_dir("classifier", ccfg)
    x, y = data.load_mnist("train", dataset=c.dataset)
    if c.train_subset:
        x, y = x[:c.train_subset], y[:c.train_subset]
    xt, yt = data.load_mnist("test", dataset=c.dataset)
    torch.manual_seed(c.classifier_seed)  # the initial weights
    model = MNISTClassifier(c.feature_dim)
    history, status = [], []
    for name, epochs, lr, seed in _phases(c):
        result = training.fit(model, pack(x, y), epochs=epochs, batch_size=c.classifier_batch_size, lr=lr,
                              seed=seed, config=ccfg, checkpoint=folder / name,
                              eval_fn=lambda m: {"test_accuracy": accuracy(m, xt, yt)}, progress=progress,
                              desc=f"classifier ({c.dataset}, lr {lr:g})", log=log)
        history += [{**h, "lr": lr} for h in result.history]
        status.append(result.status)
    model.eval()
    return model, {"test_accuracy": history[-1]["test_accuracy"], "history": history,
                   "status": "reused" if set(status) == {"reused"} else "trained", "folder": folder}


def load_classifier(dataset: str = "mnist", profile: str = "default") -> MNISTClassifier:
    """The classifier that notebook 04_quality trained for `dataset` under `profile`, from the cache.

    Raises FileNotFoundError, saying how to train it, when it has not been trained
    (or its training was interrupted).
    """
    cfg = config.resolve("quality", profile, dataset=dataset)
    ccfg = classifier_config(cfg)
    path = cache.run_dir("classifier", ccfg) / "model.pt"
    how = (f"train it with gen_lib.classifier.train_classifier(config.resolve('quality', {profile!r}, "
           f"dataset={dataset!r})) or run notebook 04_quality "
           f"(python -m gen_lib.run --profile {profile} --dataset {dataset} --only 04_quality --no-pdf)")
    if not path.exists():
        raise FileNotFoundError(f"no trained {dataset} classifier for profile {profile!r} at {path}; {how}")
    _, epochs, lr, seed = _phases(config.make(ClassifierConfig, cfg))[-1]
    ckpt = training.load_checkpoint(path, {**ccfg, "seed": seed, "batch_size": ccfg["classifier_batch_size"],
                                           "lr": lr})
    if ckpt["epoch"] < epochs:
        raise FileNotFoundError(f"the {dataset} classifier at {path} stopped after {ckpt['epoch']} of "
                                f"{epochs} low-lr epochs; {how}")
    model = MNISTClassifier(ccfg["feature_dim"])
    model.load_state_dict(ckpt["model"])
    return model.to(training.default_device()).eval()
