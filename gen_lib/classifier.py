"""A small CNN classifier of MNIST digits (or Fashion-MNIST items) whose penultimate
layer is the feature space of FID, KID and precision/recall (`gen_lib.features`, `gen_lib.metrics`).

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

`gen_lib.study.recipes.train_classifier` trains it (images and labels, one `fit` call with a step
schedule of the learning rate) into `build/runs/classifier/<hash>/`; `gen_lib.study.trained.load_classifier`
finds the trained one (a clear error says how to train it when there is none), and that module registers its
features as the feature map of the dataset's name (`features="mnist"`). The network adapts to the dataset's image shape
and number of classes (`gen_lib.data.INFO`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MNISTClassifier(nn.Module):
    """CNN classifier; `features(x)` is its penultimate layer (pre-ReLU), `forward(x)` the logits.

    x: images (B, C, H, W) in [0, 1], `image_shape` = (C, H, W) (MNIST's by default). Trained by
    cross-entropy (`loss` of an (images, labels) batch).
    """

    def __init__(self, feature_dim: int = 128, n_classes: int = 10, image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        c, h, w = image_shape
        self.num_features = feature_dim  # torchmetrics reads this name
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),   # (B, 32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, H/4, W/4)
            nn.Flatten(),                                                                     # (B, 64 H/4 W/4)
        )
        self.hidden = nn.Linear(64 * (h // 4) * (w // 4), feature_dim)
        self.standardize = nn.BatchNorm1d(feature_dim, affine=False)  # fixed after training: z-scores
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardize(self.hidden(self.conv(x)))  # (B, d), before the ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))  # (B, n_classes)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch  # (B, C, H, W), (B,)
        return F.cross_entropy(self(x), y)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels (N,) of images (N, C, H, W), in batches, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(images[i:i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correctly classified images."""
    return (predict(model, images) == labels).float().mean().item()
