"""The VAE's training step against the machine's ceiling, per prior; and our loop against a course-style loop.

Per prior: the time PyTorch needs for the step's GEMMs alone, in the faster of float32 and bf16
(`benchmarks.ceiling`), against (a) the loop as it was before this benchmark's issue (float32, torch's
per-tensor Adam, the data check in every step, torch's softplus) and (b) `gen_lib.training.fit` for one
seed (fused Adam, the data checked once, the bound's sums in float32, bf16 autocast where
`gen_lib.precision` measured it faster on this machine), and (c) `gen_lib.training.fit_seeds` training the
default profile's 5 seeds together as one stacked model, as the notebook does (its time per seed and step:
the same GEMM FLOPs per seed as batched GEMMs, each small operation paid once for the 5). Each step time is
given as a fraction of the ceiling (the ceiling's time over the step's: 1 would be a step with nothing but GEMMs),
with the ceiling replayed just before and after each loop's measurement (`benchmarks.ceiling.paired`).

A VAE training epoch (a third of one, best of three rounds): our loop (`gen_lib.training.fit` on an in-memory binarized tensor) against a
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


def _before_step(model, batches):
    """The loop before: float32, per-tensor Adam, checked inputs, torch's softplus in the Bernoulli term."""
    from torch import nn

    def log_prob(z, x):
        logits = model.decoder.net(z)
        return (logits * x).sum(-1) - nn.functional.softplus(logits).sum(-1)

    model.decoder.log_prob = log_prob  # the formula of the loop before (a bound method shadowed on this copy)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)

    def epoch():
        for b in batches:
            loss = model.loss(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return epoch


SEEDS = 5  # the default profile's seeds per prior, trained together by the notebook (stack_seeds)


def _second_epoch(history: list[dict]) -> float:
    """Seconds of a training call's second epoch, from its history's cumulative times: the steady state, without
    the call's set-up and its first steps' allocations (a notebook's call runs hundreds of steps per epoch)."""
    return history[1]["seconds"] - history[0]["seconds"]


def _stacked(name: str, x: torch.Tensor, bf16: bool) -> float:
    """Seconds per seed of the second of two epochs over x of `fit_seeds` training SEEDS fresh VAEs of prior
    `name` together."""
    from gen_lib import vae
    from gen_lib.recipes import _elbo_per_example
    from gen_lib.training import fit_seeds

    models = []
    for s in range(SEEDS):
        torch.manual_seed(s)
        models.append(vae.build_vae(name))
    results = fit_seeds(models, x, seeds=list(range(SEEDS)), epochs=2, batch_size=128, lr=1e-3,
                        configs=[{"bench": "vae"}] * SEEDS, loss_fn=_elbo_per_example, noise_shape=(2,), device="cpu",
                        bf16=bf16, progress=False)
    return _second_epoch(results[0].history)  # the wall time divided among the seeds


def _adam_alone(name: str, rounds: int = 20) -> dict[str, float]:
    """ms per seed of the Adam update of SEEDS stacked VAEs of prior `name` alone, from the `Linear` weights'
    bf16 gradients to the bf16 weights the next forward reads: "torch" converts the gradients to float32, runs
    torch's fused Adam and copies the weights to bf16 (three passes over memory); "kernel" is `seeds.Adam`
    with `gen_lib.kernels` (one pass; absent where the kernel does not build). Memory-bound: the 5 seeds'
    parameters, gradients and moments do not fit in the caches."""
    from gen_lib import kernels, seeds, vae

    stack = seeds.Stack([vae.build_vae(name) for _ in range(SEEDS)])
    for key, p in stack.params.items():
        p.grad = torch.randn_like(p)
        if key in stack.slots:
            slot = stack.slots[key]
            slot.grad_low, slot.low = torch.randn_like(p, dtype=torch.bfloat16), torch.empty_like(p, dtype=torch.bfloat16)
    slots = list(stack.slots.values())
    opt = torch.optim.Adam(list(stack.params.values()), lr=1e-3, fused=True)

    def torch_step():
        for slot in slots:
            slot.param.grad.copy_(slot.grad_low)
        opt.step()
        for slot in slots:
            slot.low.copy_(slot.param.detach())

    steps = {"torch": torch_step}
    if kernels.unavailable() is None:
        ours = seeds.Adam(stack, lr=1e-3)
        for slot in slots:
            slot.pending = True  # the bf16 gradient is where the backward leaves it

        steps["kernel"] = ours.step
    out = {}
    for what, step in steps.items():
        step()
        t0 = time.perf_counter()
        for _ in range(rounds):
            step()
        out[what] = (time.perf_counter() - t0) * 1000 / rounds / SEEDS
    return out


def _per_prior(train_b: torch.Tensor, steps: int, rounds: int) -> list[dict]:
    import statistics

    from benchmarks import ceiling
    from gen_lib import config, kernels, precision, priors, vae
    from gen_lib.training import fit

    choice = precision.choose("vae", config.resolve("priors", "default", bf16=False))  # batch 128, this machine
    x = train_b[: steps * 128].reshape(-1, 784)
    batches = list(x.split(128))
    rows = []
    for name in priors.names()[:4]:
        torch.manual_seed(0)
        model = vae.build_vae(name)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def one_step(m=model, o=opt):
            loss = m.loss(batches[0], check=False)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()
        fit(vae.build_vae(name), x[:256], epochs=1, batch_size=128, lr=1e-3, seed=0, config={"bench": "warm-up"},
            device="cpu", bf16=choice["bf16"], progress=False)  # kernel selection and allocator, untimed
        _stacked(name, x[:256], choice["bf16"])
        top = ceiling.ceiling(one_step, draws=1)  # its GEMMs, and the faster dtype

        # each loop runs two epochs of `steps` steps; its second epoch is timed (the steady state)
        def before_loop(name=name):
            torch.manual_seed(0)
            epoch = _before_step(vae.build_vae(name), batches)
            epoch()
            t0 = time.perf_counter()
            epoch()
            return (time.perf_counter() - t0) * 1000 / len(batches)

        def fit_loop(name=name):
            torch.manual_seed(0)
            result = fit(vae.build_vae(name), x, epochs=2, batch_size=128, lr=1e-3, seed=0, config={"bench": "vae"},
                         device="cpu", bf16=choice["bf16"], loss_fn=lambda mm, b: mm.loss(b, check=False),
                         progress=False)
            return _second_epoch(result.history) * 1000 / len(batches)

        def stacked_loop(name=name):
            return _stacked(name, x, choice["bf16"]) * 1000 / len(batches)

        got = ceiling.paired(top, {"before": before_loop, "fit": fit_loop, "stacked": stacked_loop}, rounds)
        ms = {k: statistics.median(got[k]["ms"]) for k in ("before", "fit", "stacked")}
        frac = {k: ceiling.spread(got[k]["fraction"]) for k in ("before", "fit", "stacked")}
        speedup = statistics.median(b / s for b, s in zip(got["before"]["ms"], got["stacked"]["ms"]))
        adam = _adam_alone(name)
        adam_kind = (f"one pass (gen_lib.kernels): {adam['kernel']:.2f} ms per seed alone, against "
                     f"{adam['torch']:.2f} ms for torch's fused Adam with the conversions around it" if "kernel" in adam
                     else f"torch's fused Adam ({kernels.unavailable()}): {adam['torch']:.2f} ms per seed alone")
        rows.append({
            "what": f"VAE training step, {priors.label(name)} prior (batch 128), as a fraction of the ceiling",
            "baseline": f"loop before: {ms['before']:.2f} ms/step = {frac['before']} of the ceiling",
            "ours": (f"fit_seeds, {SEEDS} seeds stacked, {'bf16' if choice['bf16'] else 'fp32'}: {ms['stacked']:.2f} ms "
                     f"per seed-step = {frac['stacked']} of the ceiling (fit, one seed: {ms['fit']:.2f} ms = "
                     f"{frac['fit']})"),
            "ratio": speedup, "unit": "ms/step",
            "note": (f"ceiling {ceiling.spread(got['ceiling'], '{:.2f}')} ms over the run: its {top['ops']} GEMMs "
                     f"({top['gflop']:.2f} GFLOP) alone in {top['dtype']} (first measured: fp32 "
                     f"{top['by_dtype']['float32']:.2f} ms, bf16 {top['by_dtype']['bfloat16']:.2f} ms); each fraction is "
                     f"the median (min-max) over {rounds} rounds of the loop's time against the ceiling replayed just "
                     f"before and after it (benchmarks.ceiling.paired), each round the second of two epochs of "
                     f"{len(batches)} steps (the steady state); Adam: {adam_kind}; precision: "
                     f"{precision.describe(choice)} (the ceiling counts GEMMs only)")})
    return rows


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
    return _per_prior(train_b, steps=4 if quick else 60, rounds=1 if quick else 6) + [
        {"what": "VAE training step (Gaussian prior, batch 128)",
         "baseline": f"torchvision MNIST + DataLoader(shuffle) + per-batch binarize: {results['course']:.1f} ms/step",
         "ours": f"gen_lib.training.fit on an in-memory tensor: {results['ours']:.1f} ms/step",
         "ratio": results["course"] / results["ours"], "unit": "ms/step", "note": note},
        {"what": "VAE training step, bf16 autocast vs float32 (both ours)",
         "baseline": f"float32: {results['ours']:.1f} ms/step",
         "ours": f"bf16 autocast: {results['ours_bf16']:.1f} ms/step",
         "ratio": results["ours"] / results["ours_bf16"], "unit": "ms/step",
         "note": "Gaussian prior; the notebooks use bf16 where gen_lib.precision measured it faster (cached per machine)"},
    ]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
