"""Feature maps of the sample-quality metrics: images (N, 1, 28, 28) in [0, 1] -> features (N, d).

The metrics (`gen_lib.metrics`, `gen_lib.intervals`) compare two sets of images through a feature map;
`extract` runs it once per set, and every score is then a function of the two feature matrices.

A registry: the name of any registered dataset ("mnist", "fashion": the classifier that notebook
04_quality trained on it, `gen_lib.classifier`, loaded by `gen_lib.study.recipes`), the names in
`FEATURES` ("inception": Inception-v3 pool features, only where torch-fidelity and its weights are on
disk; `register_features` adds one), or any callable mapping images to an (N, d) float tensor.
`feature_names()` lists them. It sits on the report floor because the "mnist" features are the
study's trained classifier.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from .data import INFO
from .study.recipes import load_classifier  # the "mnist" features: the study's trained classifier

FeatureMap = Callable[[torch.Tensor], torch.Tensor]
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name


@torch.no_grad()
def extract(feature_map: FeatureMap, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Features (N, d) of images (N, ...) in batches, on the feature map's device, returned float32 on CPU."""
    device = None
    if isinstance(feature_map, nn.Module) or hasattr(feature_map, "__self__"):
        module = feature_map if isinstance(feature_map, nn.Module) else feature_map.__self__
        if isinstance(module, nn.Module):
            module.eval()
            device = next(module.parameters(), torch.empty(0)).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        f = feature_map(x.to(device) if device is not None else x)
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or len(f) != len(x):
            raise ValueError(f"the feature map returned {tuple(f.shape) if isinstance(f, torch.Tensor) else type(f)}"
                             f" for {len(x)} images; expected an (N, d) tensor")
        out.append(f.float().cpu())
    return torch.cat(out)


def _inception_weights() -> Path | None:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    path = home / "hub" / "checkpoints" / INCEPTION_WEIGHTS
    return path if path.is_file() else None


def inception_features() -> FeatureMap:
    """Inception-v3 pool features (2048-d, torch-fidelity's FID network), only from weights on disk.

    Raises RuntimeError when torch-fidelity or its weights file is absent: this machine
    cannot download them.
    """
    path = _inception_weights()
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        import torch_fidelity  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        raise RuntimeError(f'features="inception" needs torch-fidelity and its weights file {INCEPTION_WEIGHTS} '
                           "under $TORCH_HOME/hub/checkpoints, and they cannot be downloaded here. "
                           'Use features="mnist" (this project\'s classifier) or a callable')
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(path))

    def phi(x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) in [0, 1] -> (B, 2048); resized inside
        return net((x.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8))

    return phi


# The feature-map registry beyond the datasets' own classifiers: name -> a function that builds the map.
FEATURES: dict[str, Callable[[], FeatureMap]] = {"inception": inception_features}


def register_features(name: str, build: Callable[[], FeatureMap]) -> None:
    """Add the feature map `name`: `build()` returns a callable images (N, C, H, W) in [0, 1] -> (N, d)."""

    if name in FEATURES or name in INFO:
        raise ValueError(f"feature map {name!r} is already registered; registered: {', '.join(feature_names())}")
    FEATURES[name] = build


def feature_names() -> tuple[str, ...]:
    """Every feature map by name: each registered dataset's classifier, then `FEATURES`."""

    return (*INFO, *FEATURES)


def feature_map(features: Union[str, FeatureMap] = "mnist", profile: str = "default") -> FeatureMap:
    """The feature map called `features` (`feature_names()`: a dataset's classifier, trained by 04_quality
    under `profile`, or a name of `FEATURES`), or a callable (returned as is)."""

    if callable(features):
        return features
    if features in INFO:

        return load_classifier(features, profile).features
    if features in FEATURES:
        return FEATURES[features]()
    raise ValueError(f"features={features!r} is unknown; choose one of {', '.join(feature_names())} or pass a "
                     "callable mapping images to an (N, d) tensor")
