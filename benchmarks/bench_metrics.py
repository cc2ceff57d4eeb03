"""Benchmark of gen_lib.metrics: FID, KID and precision/recall of 10,000 vs 10,000 images.

Ours: the classifier's features are extracted once per set, then FID/KID (torchmetrics,
float64) and precision/recall run on the cached features. Baseline: the plain use of
torchmetrics, the classifier passed as `feature` to FID and to KID (each runs the network
over both sets) plus a third pass for precision/recall. A second row times the FID
formula alone: torchmetrics' eigenvalue form vs scipy.linalg.sqrtm (pytorch-fid's way).
Timing does not depend on the weights, so an untrained classifier is used.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg
import torch

from gen_lib import classifier, data, features, metrics


def _baseline(real, fake, net, subsets, k):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    class Features(torch.nn.Module):  # the classifier as torchmetrics' `feature` module
        num_features = net.num_features

        def forward(self, x):
            return net.features(x).double()

    fid = FrechetInceptionDistance(feature=Features(), normalize=True).set_dtype(torch.float64)
    kid = KernelInceptionDistance(feature=Features(), subsets=subsets, subset_size=min(1000, len(real) // 2),
                                  normalize=True)
    with torch.no_grad():
        for m in (fid, kid):
            for i in range(0, len(real), 1000):
                m.update(real[i:i + 1000], real=True)
                m.update(fake[i:i + 1000], real=False)
        fid.compute(), kid.compute()
        metrics.precision_recall(features.extract(net.features, real), features.extract(net.features, fake), k)


def _fid_scipy(x, y):
    x, y = x.double().numpy(), y.double().numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)


def _time(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool = False) -> list[dict]:
    n, subsets = (500, 5) if quick else (10_000, 100)
    test_x, _ = data.load_mnist("test")
    train_x, _ = data.load_mnist("train")
    real, fake = test_x[:n], train_x[:n]
    torch.manual_seed(0)
    net = classifier.MNISTClassifier(128).eval()
    phi = net.features
    metrics.fid_from_features(torch.randn(300, 128), torch.randn(300, 128))  # warm-up: torchmetrics import

    t_ours = _time(lambda: metrics.sample_quality(real, fake, features=phi, kid_subsets=subsets))
    t_base = _time(lambda: _baseline(real, fake, net, subsets, 3))
    threads = torch.get_num_threads()
    rows = [{"what": f"FID+KID+precision/recall, {n:,} vs {n:,} images (d=128, KID {subsets} subsets)",
             "baseline": f"torchmetrics with the classifier as feature module (3 feature passes): {t_base:.1f} s",
             "ours": f"metrics.sample_quality (1 feature pass, metrics on cached features): {t_ours:.1f} s",
             "ratio": t_base / t_ours, "unit": "s",
             "note": f"{threads} torch threads; budget: under 60 s on 2 cores"}]

    f_real, f_fake = features.extract(phi, real), features.extract(phi, fake)
    t_sq = _time(lambda: _fid_scipy(f_real, f_fake), repeat=3)
    t_tm = _time(lambda: metrics.fid_from_features(f_real, f_fake), repeat=3)
    diff = abs(_fid_scipy(f_real, f_fake) - metrics.fid_from_features(f_real, f_fake))
    rows.append({"what": f"FID from cached features ({n:,} x 128, float64)",
                 "baseline": f"numpy cov + scipy.linalg.sqrtm: {1000 * t_sq:.0f} ms",
                 "ours": f"torchmetrics FrechetInceptionDistance (eigenvalues of S1 S2): {1000 * t_tm:.0f} ms",
                 "ratio": t_sq / t_tm, "unit": "ms", "note": f"|difference| = {diff:.2e}"})
    return rows


if __name__ == "__main__":
    from gen_lib import system

    system.configure_threads()
    for row in run():
        print(row)
