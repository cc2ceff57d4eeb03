"""Feature maps of the sample-quality metrics: images (N, C, H, W) in [0, 1] -> features (N, d).

The metrics (`gen_lib.metrics`, `gen_lib.intervals`) compare two sets of images through a feature map;
`extract` runs it once per set, and every score is then a function of the two feature matrices.

A feature map is a callable, or the name of one in the registry `FEATURES` (`feature_names()` lists them):
"inception" (Inception-v3 pool features, only where torch-fidelity and its weights are on disk), and each
dataset's trained classifier ("mnist", "fashion"), which the study layer registers when
`gen_lib.study.trained` is imported (`gen_lib.report`, the runner and `gen_lib.measure` import it). This
module imports nothing of the study: like torchmetrics' `FrechetInceptionDistance(feature=...)`, it takes
its extractor as given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from .data import INFO

FeatureMap = Callable[[torch.Tensor], torch.Tensor]
# builds a feature map; its argument is the profile whose trained model it loads (a map that needs none ignores it)
FeatureBuilder = Callable[[str], FeatureMap]
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


def inception_features(profile: str = "default") -> FeatureMap:
    """Inception-v3 pool features (2048-d, torch-fidelity's FID network), only from weights on disk; a grey
    image is repeated over the three colour channels. `profile` is ignored (nothing of the study is trained).

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

    def phi(x: torch.Tensor) -> torch.Tensor:  # (B, 1 or 3, H, W) in [0, 1] -> (B, 2048); resized inside
        if x.shape[1] not in (1, 3):
            raise ValueError(f"Inception features take grey or RGB images; got {x.shape[1]} channels")
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return net((rgb * 255).round().to(torch.uint8))

    return phi


# The feature-map registry: name -> a builder of the map. The study adds each dataset's trained classifier.
FEATURES: dict[str, FeatureBuilder] = {"inception": inception_features}


def register_features(name: str, build: FeatureBuilder) -> None:
    """Add the feature map `name`: `build(profile)` returns a callable images (N, C, H, W) in [0, 1] -> (N, d)
    (`profile` names the profile whose trained model it loads; a map that needs no training ignores it)."""

    if name in FEATURES:
        raise ValueError(f"feature map {name!r} is already registered; registered: {', '.join(feature_names())}")
    FEATURES[name] = build


def feature_names() -> tuple[str, ...]:
    """Every registered feature map by name, in the order of registration."""

    return tuple(FEATURES)


def image_shape(features: Union[str, FeatureMap]) -> tuple[int, int, int] | None:
    """The (C, H, W) of the images that `features` takes when it names a dataset's classifier (read from the
    dataset's registry entry, `gen_lib.data.INFO`); None for any other feature map."""

    return INFO[features].shape if isinstance(features, str) and features in INFO else None


def check_image_shape(features: Union[str, FeatureMap], images: torch.Tensor) -> None:
    """A clear error when `images` (N, C, H, W) do not have the shape of the dataset whose classifier
    `features` names (any shape passes for other feature maps)."""

    shape = image_shape(features)
    if shape is not None and tuple(images.shape[1:]) != shape:
        raise ValueError(f"features={features!r} is the {features} classifier, which takes images of shape "
                         f"{shape}; got {tuple(images.shape[1:])}")


def feature_map(features: Union[str, FeatureMap] = "mnist", profile: str = "default") -> FeatureMap:
    """The feature map called `features` in `FEATURES` (built for `profile`: a dataset's classifier is the one
    trained under that profile), or a callable (returned as is).

    Raises ValueError naming the registered maps when `features` is not one of them."""

    if callable(features):
        return features
    if features in FEATURES:
        return FEATURES[features](profile)
    registered = ", ".join(feature_names()) or "none"
    raise ValueError(f"features={features!r} is not a registered feature map; registered: {registered}. "
                     f"Each dataset's trained classifier ({', '.join(INFO)}) is registered by "
                     "`import gen_lib.study.trained` (gen_lib.report and the runner import it); "
                     "or pass a callable mapping images (N, C, H, W) to an (N, d) tensor")
