"""A VAE training epoch (a third of one, best of three rounds): our loop (`gen_lib.training.fit` on an in-memory binarized tensor) against a
course-style loop (`torchvision.datasets.MNIST` + `DataLoader(batch_size=128, shuffle=True)`,
`ToTensor`, binarization per batch), same model (the study's VAE, Gaussian prior), same machine,
same run. Also bf16 autocast in our loop, kept in the notebook only if it is faster here.
"""

from __future__ import annotations

import time

import torch


def _course_epoch(model, root, n: int) -> tuple[float, int]:
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    ds = torchvision.datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
    if n < len(ds):
        ds = Subset(ds, range(n))
    loader = DataLoader(ds, batch_size=128, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    t0, steps = time.perf_counter(), 0
    for x, _ in loader:
        x = (x > 0.5).float().view(-1, 784)  # binarize per batch
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return time.perf_counter() - t0, steps


def _our_epoch(model, train_b, bf16: bool) -> tuple[float, int]:
    from gen_lib.training import fit

    t0 = time.perf_counter()
    fit(model, train_b, epochs=1, batch_size=128, lr=1e-3, seed=0, config={"bench": "vae"}, device="cpu",
        bf16=bf16, progress=False)
    return time.perf_counter() - t0, -(-len(train_b) // 128)


def run(quick: bool = False) -> list[dict]:
    from gen_lib import data, paths, vae

    n, rounds = (512, 1) if quick else (20_000, 3)  # 3 rounds of a third of an epoch
    x, _ = data.load_mnist("train")
    train_b = data.binarize(x[:n]).clone()  # precomputed once, outside the timing (as in the notebook)
    warm = vae.build_vae("gaussian")  # warm up threads and allocator so that neither loop pays for it
    for _ in range(3):
        warm.loss(train_b[:128]).backward()
    # The machine is shared: run the three loops in turn, `rounds` times, and keep each loop's fastest
    # round (the least disturbed by other processes).
    results = {"course": [], "ours": [], "ours_bf16": []}
    for _ in range(rounds):
        for what in results:
            torch.manual_seed(0)
            model = vae.build_vae("gaussian")
            if what == "course":
                sec, steps = _course_epoch(model, str(paths.data_dir()), n)
            else:
                sec, steps = _our_epoch(model, train_b, bf16=what == "ours_bf16")
            results[what].append(1000 * sec / steps)
    results = {k: min(v) for k, v in results.items()}
    load = open("/proc/loadavg").read().split()[0]
    note = (f"fastest of {rounds} round(s) of {n} images, {torch.get_num_threads()} threads, CPU load average "
            f"{load} at the end (a shared machine: noisy)")
    return [
        {"what": "VAE training step (Gaussian prior, batch 128)",
         "baseline": f"torchvision MNIST + DataLoader(shuffle) + per-batch binarize: {results['course']:.1f} ms/step",
         "ours": f"gen_lib.training.fit on an in-memory tensor: {results['ours']:.1f} ms/step",
         "ratio": results["course"] / results["ours"], "unit": "ms/step", "note": note},
        {"what": "VAE training step, bf16 autocast vs float32 (both ours)",
         "baseline": f"float32: {results['ours']:.1f} ms/step",
         "ours": f"bf16 autocast: {results['ours_bf16']:.1f} ms/step",
         "ratio": results["ours"] / results["ours_bf16"], "unit": "ms/step",
         "note": "Gaussian prior only; the flow prior's tiny coupling layers can be much slower under bf16 on "
                 "CPU, so 01_priors trains in float32"},
    ]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
