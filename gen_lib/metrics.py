"""Sample-quality metrics: FID, KID and precision/recall in a feature space.

Every metric compares a set of real images with a set of generated ones through a
feature map phi: images (N, 1, 28, 28) in [0, 1] -> (N, d). The feature network runs
once per set; FID, KID and precision/recall are then pure functions of the two
feature matrices (so the FID-vs-N curve of a notebook costs no extra network pass).

- FID (Heusel et al., 2017): with means mu and covariances S of the two feature sets,

      FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2}),

  computed by torchmetrics' `FrechetInceptionDistance` in float64. FID is biased
  upwards at small N (the covariance estimate's noise adds to the trace), which is
  why Table 2 states N and carries a real-data floor.
- KID (Bińkowski et al., 2018): the unbiased estimate of the squared MMD with the
  kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets (mean and std), by
  torchmetrics' `KernelInceptionDistance` in float64. Unbiased: about 0 for two
  samples of one distribution, at any N.
- Precision and recall (Kynkäänniemi et al., 2019): each point of a set gets the
  radius of its k-th nearest neighbour within the set; precision is the fraction of
  generated points inside some real point's ball, recall the fraction of real
  points inside some generated point's ball.

Feature maps (`features=`): "mnist" / "fashion" (the classifier that notebook
04_quality trained on that dataset, `gen_lib.classifier`), "inception" (Inception-v3
pool features, only where torch-fidelity and its weights are on disk), or any callable
mapping images to an (N, d) float tensor.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

FeatureMap = Callable[[torch.Tensor], torch.Tensor]
FEATURE_NAMES = ("mnist", "fashion", "inception")
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name


class _Given(nn.Module):
    """Identity 'feature extractor': torchmetrics receives features we computed once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


def min_samples(d: int) -> int:
    """Fewest samples per set for a stable d x d covariance: 2d (rank d needs d + 1)."""
    return 2 * d


def _check_features(real: torch.Tensor, fake: torch.Tensor, need_cov: bool = True) -> None:
    for name, f in (("real", real), ("fake", fake)):
        if f.dim() != 2:
            raise ValueError(f"{name} features have shape {tuple(f.shape)}; expected (N, d)")
        if not torch.isfinite(f).all():
            raise ValueError(f"{name} features contain NaN or inf")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real d={real.shape[1]}, fake d={fake.shape[1]}")
    d = real.shape[1]
    if need_cov and min(len(real), len(fake)) < min_samples(d):
        raise ValueError(f"{len(real)} real and {len(fake)} fake samples are too few for a stable {d}x{d} "
                         f"feature covariance; FID needs at least {min_samples(d)} (2d) per set")


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between feature sets real (N, d) and fake (M, d), by torchmetrics in float64.

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})  (Heusel et al., 2017).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_features(real, fake)
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1])).set_dtype(torch.float64)
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    return max(float(metric.compute()), 0.0)  # eigenvalue round-off can give -1e-12 for equal sets


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subset_size: int = 1000, subsets: int = 100,
                      seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over `subsets` random subsets of min(subset_size, N/2) samples), float64.

    KID = unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (Bińkowski et al., 2018), by torchmetrics.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_features(real, fake, need_cov=False)
    size = min(subset_size, len(real) // 2, len(fake) // 2)
    if size < 2:
        raise ValueError(f"KID needs at least 4 samples per set; got {len(real)} real and {len(fake)} fake")
    with warnings.catch_warnings():  # "will save all extracted features": ours are small (N, d)
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_radius(f: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each row of f (N, d) to its k-th nearest other row: (N,)."""
    out = []
    for i in range(0, len(f), chunk):
        d = torch.cdist(f[i:i + chunk], f)  # (c, N); the point itself is at 0, the k+1-th smallest
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius): (P,) bool."""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centres)  # (c, C)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of fake (M, d) against real (N, d).

    precision = mean_g 1[exists r: ||g - r|| <= NN_k(r)],  recall = mean_r 1[exists g: ||r - g|| <= NN_k(g)],
    with NN_k(x) the distance from x to its k-th nearest neighbour in its own set.
    """
    _check_features(real, fake, need_cov=False)
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k={k} needs 1 <= k < the smaller set's size ({min(len(real), len(fake))})")
    real, fake = real.double(), fake.double()  # exact self-distances of 0: a set covers itself
    r_real, r_fake = _kth_radius(real, k, chunk), _kth_radius(fake, k, chunk)
    precision = _covered(fake, real, r_real, chunk).double().mean().item()
    recall = _covered(real, fake, r_fake, chunk).double().mean().item()
    return precision, recall


def quality_from_features(real: torch.Tensor, fake: torch.Tensor, k: int = 3, kid_subset_size: int = 1000,
                          kid_subsets: int = 100, seed: int = 0) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of two feature sets (N, d) and (M, d)."""
    _check_features(real, fake)  # before any work: too few samples for the covariance fails at once
    kid_mean, kid_std = kid_from_features(real, fake, kid_subset_size, kid_subsets, seed)
    precision, recall = precision_recall(real, fake, k)
    return {"fid": fid_from_features(real, fake), "kid_mean": kid_mean, "kid_std": kid_std,
            "precision": precision, "recall": recall, "n_real": len(real), "n_fake": len(fake)}


def _check_images(real: torch.Tensor, fake: torch.Tensor) -> None:
    for name, x in (("real", real), ("fake", fake)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} images must be a tensor (N, C, H, W); got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} images have dtype {x.dtype}; expected float images in [0, 1]")
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1 or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} images lie in [{lo:.3g}, {hi:.3g}]; expected [0, 1] "
                             "(samples in [-1, 1] go through gen_lib.data.from_signed first)")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real images have shape {tuple(real.shape[1:])} and fake {tuple(fake.shape[1:])}; "
                         "they must match")


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


def feature_map(features: Union[str, FeatureMap] = "mnist", profile: str = "default") -> FeatureMap:
    """The feature map called `features`: "mnist" | "fashion" | "inception", or a callable (returned as is)."""
    if callable(features):
        return features
    if features in ("mnist", "fashion"):
        from .classifier import load_classifier

        return load_classifier(features, profile).features
    if features == "inception":
        return inception_features()
    raise ValueError(f"features={features!r} is unknown; choose one of {', '.join(FEATURE_NAMES)} or pass a "
                     "callable mapping images to an (N, d) tensor")


def sample_quality(real: torch.Tensor, fake: torch.Tensor, features: Union[str, FeatureMap] = "mnist", *,
                   profile: str = "default", k: int = 3, kid_subset_size: int = 1000, kid_subsets: int = 100,
                   seed: int = 0) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of generated images `fake` against `real`.

    real, fake: float images (N, 1, 28, 28) and (M, 1, 28, 28) in [0, 1]. `features`:
    "mnist" / "fashion" (the classifier 04_quality trained under `profile`, loaded from
    the cache; a clear error says how to train it when missing), "inception" (only with
    its weights on disk) or a callable images -> (N, d). Each set needs at least 2d images.
    Returns {"fid", "kid_mean", "kid_std", "precision", "recall", "n_real", "n_fake"}.
    """
    _check_images(real, fake)
    phi = feature_map(features, profile)
    f_real, f_fake = extract(phi, real), extract(phi, fake)
    return quality_from_features(f_real, f_fake, k=k, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                                 seed=seed)


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, k: int = 3,
                       chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest reference images of each query in pixel space (Euclidean): distances and indices (Q, k).

    Used to show that samples are not copies of training images (a copy sits at distance ~0).
    """
    if queries.shape[1:] != reference.shape[1:]:
        raise ValueError(f"queries have shape {tuple(queries.shape[1:])} and reference {tuple(reference.shape[1:])}")
    ref = reference.flatten(1).float()  # (R, P)
    dists, idx = [], []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i:i + chunk].flatten(1).float(), ref)  # (c, R)
        v, j = d.topk(k, dim=1, largest=False)
        dists.append(v)
        idx.append(j)
    return torch.cat(dists), torch.cat(idx)
