"""The study's training recipes: one function per model that takes the resolved configuration
(`config.resolve(section, profile)`) and the data, and returns the trained model, its history and
its run folder. The notebooks call these; nothing else trains a model.

- `train_vae`:        the VAE of Part 1 (binarized data, a registered prior) or of Part 2 (`section=
                      "quality_vae"`: continuous data, a continuous Bernoulli decoder, the section's `prior`)
- `train_vaes`:       Part 1's VAEs of one prior for several seeds, trained together as one stacked model
                      (`training.fit_seeds`) where the profile says `stack_seeds`, else one by one
- `train_flow`:       the RealNVP image flow on dequantized images
- `train_ddpm`:       the DDPM on dequantized images in [-1, 1]
- `train_classifier`: the CNN whose penultimate layer gives the FID/KID features

Run identity: `run_key(section, cfg)` says which parameters decide a run's weights, read from the fields'
roles in `gen_lib.study.sections` (`trains`, `extends`). Its hash names the run folder
`build/runs/<section>/<hash>/` and it is the configuration `fit` stores in and checks against every
checkpoint; the whole configuration is saved beside it. The number of epochs is left out, so a longer
run resumes a shorter one from its last checkpoint (`fit` continues from the saved epoch). A
learning-rate schedule whose horizon is the requested epochs (the flow's cosine, the classifier's
step) then continues with the longer horizon: the resumed run is not the run that would have been
trained for the longer horizon from the start (its early epochs followed the shorter schedule).
Reusing the shorter run is the point; to train the longer schedule from scratch, delete the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .. import data, flows, priors, training
from .. import seeds as stacking
from ..classifier import accuracy
from . import cache, models, precision, sections

# What decides the weights of each recipe's runs, and what only extends them (epochs: see the module's note),
# read from the fields' roles in gen_lib.study.sections; Part 1's runs add the prior and seed of one run.
_PER_RUN = {"priors": ("prior", "seed")}
IDENTITY: dict[str, tuple[str, ...]] = {run: (*sections.identity(run), *_PER_RUN.get(run, ()))
                                        for run in sections.RUNS}
EPOCHS: dict[str, tuple[str, ...]] = {run: sections.epochs(run) for run in sections.RUNS}
# The split (gen_lib.data.SPLITS) each section's models train on. The held-out images are needed only where a
# real-data floor is computed (03's and 04's tables): the models those score and the feature classifier train on
# "fit", which leaves them out. Part 1 computes no floor: its VAEs train on the whole training split.
TRAIN_SPLIT: dict[str, str] = {section: "train" if section == "priors" else "fit" for section in IDENTITY}
SPLIT_WORDS = {"fit": f"the 'fit' split: the training split less its last {data.HELD_OUT} images",
               "train": "the 'train' split: all of the training images"}
# What a section's runs always do, recorded in their identity (a change of it moves the run folder).
FIXED: dict[str, dict[str, Any]] = {section: {"train_images": SPLIT_WORDS[TRAIN_SPLIT[section]]}
                                    for section in IDENTITY}
FIXED["quality_vae"]["train_data"] = "dequantized (255 x + u) / 256, u ~ U(0, 1), drawn afresh each epoch"


def settled(section: str, cfg: Mapping[str, Any], log: Callable[[str], None] = print,
            measure: bool = True) -> dict[str, Any]:
    """`cfg` with its "auto" precisions replaced by this machine's measured choice (`precision.settle`,
    cached per machine) and `precision` saying which: the configuration a run of `section` trains with.
    `measure=False`: only cached choices (an uncached "auto" stays)."""
    if section not in IDENTITY:
        raise ValueError(f"section={section!r} has no recipe; choose one of {', '.join(IDENTITY)}")
    return precision.settle(section, dict(cfg), log=log, measure=measure)


def run_key(section: str, cfg: Mapping[str, Any], measure: bool = True) -> dict[str, Any]:
    """The identity of a run of `section` under the resolved configuration `cfg` (settled first): the values
    of `IDENTITY[section]`, and for a VAE its prior's size parameters (`<prior>_<param>`). Epochs are left out."""
    cfg = settled(section, cfg, measure=measure)
    missing = [k for k in IDENTITY[section] if k not in cfg]
    if missing:
        raise ValueError(f"the {section} configuration lacks {', '.join(missing)}; "
                         f"a {section} run needs {', '.join(IDENTITY[section])}")
    key = {"run": section, **{k: cfg[k] for k in IDENTITY[section]}, **FIXED.get(section, {})}
    if section in _VAE:
        name = cfg["prior"]
        key.update({f"{name}_{p}": v for p, v in priors.params(name, cfg).items()})
    return key


@dataclass
class Trained:
    """What a recipe returns: the trained model, how training went, and where the run lives."""

    model: nn.Module
    result: training.TrainResult  # history (one dict per epoch), status, seconds, ema
    folder: Path  # build/runs/<section>/<hash>/: the checkpoint and every cached result of this model
    config: dict[str, Any]  # the configuration it trained with, precisions settled (`precision` says which)

    @property
    def history(self) -> list[dict[str, float]]:
        return self.result.history


def _recorded(trained: Trained, section: str, epochs: int) -> Trained:
    """`trained`, after `cache.record_training` noted which run trained it (machine, date, minutes)."""
    cache.record_training(trained.folder, section, trained.config.get("profile", ""), trained.result.status, epochs,
                          trained.result.seconds, config=trained.config)
    return trained


def subset(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of x (all of them when n is 0): the `train_subset` rule of every section."""
    return x[:n] if n else x


# ---------------------------------------------------------------- VAE


_VAE = ("priors", "quality_vae")  # the VAEs' runs: Part 1's and Part 2's


def _unchecked_loss(model, batch):
    return model.loss(batch, check=False)


def _elbo_per_example(model, batch, noise):
    return -model.elbo(batch, check=False, noise=noise)


def _vae_eval_fn(eval_x):
    def eval_fn(m):
        return {"test_elbo": m.elbo(eval_x.to(m._device())).mean().item()}
    return eval_fn


def train_vaes(cfg: Mapping[str, Any], train_x: torch.Tensor, *, prior: str, seeds: Any,
               eval_x: torch.Tensor | None = None, device: torch.device | str | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> list[Trained]:
    """Part 1's VAEs of `prior` for every seed of `seeds`, as `train_vae` trains each (same initial weights,
    data order, checkpoints per seed and `Trained` per seed), but where `cfg["stack_seeds"]` is true all seeds
    train together as one stacked model (`gen_lib.training.fit_seeds`): one batched step for all of
    them. Stacked, a seed's noise comes from its own generator (not torch's global one), so stacking is part
    of the run identity. A prior whose code does not run stacked (`seeds.agrees` on a few images fails: a
    plugin written for one model) trains seed by seed, with a line in the log."""

    seeds = [int(s) for s in seeds]
    cfg = settled("priors", cfg, log)
    if not cfg["stack_seeds"] or len(seeds) < 2:
        return [train_vae(cfg, train_x, prior=prior, seed=s, eval_x=eval_x, device=device, progress=progress, log=log)
                for s in seeds]
    keys, nets, folders = [], [], []
    for seed in seeds:
        c = {**cfg, "prior": prior, "seed": seed}
        keys.append(run_key("priors", c))
        folders.append(cache.run_dir("priors", keys[-1]))
        torch.manual_seed(seed)
        nets.append(models.build("priors", c))
    train_x = subset(train_x, cfg["train_subset"])
    nets[0].check_data(train_x)  # once here, not in every step
    per = max(1, min(4, len(train_x) // len(seeds)))  # a few images per seed: does the prior's code run stacked?
    probe = train_x[: per * len(seeds)].reshape(len(seeds), per, -1).float()
    if not stacking.agrees(nets, _elbo_per_example, probe, torch.randn(len(seeds), per, nets[0].latent_dim)):
        log(f"{prior}: its code does not run stacked (gen_lib.seeds.agrees); training seed by seed")
        return [train_vae({**cfg, "stack_seeds": False}, train_x, prior=prior, seed=s, eval_x=eval_x, device=device,
                          progress=progress, log=log) for s in seeds]
    results = training.fit_seeds(
        nets, train_x, seeds=seeds, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], configs=keys,
        loss_fn=_elbo_per_example, noise_shape=(nets[0].latent_dim,), checkpoints=[f / "model.pt" for f in folders],
        eval_fn=_vae_eval_fn(eval_x) if eval_x is not None else None, device=device, bf16=cfg["bf16"],
        progress=progress, desc=prior, log=log)
    return [_recorded(Trained(m, r, f, {**cfg, "prior": prior, "seed": s}), "priors", cfg["epochs"])
            for m, r, f, s in zip(nets, results, folders, seeds)]


def train_vae(cfg: Mapping[str, Any], train_x: torch.Tensor, *, section: str = "priors", prior: str | None = None,
              seed: int | None = None, eval_x: torch.Tensor | None = None, device: torch.device | str | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> Trained:
    """Train (or resume, or reuse) the study's VAE (`vae.build_vae`) by Adam on the negative ELBO.

    `section="priors"` (Part 1): `train_x` binarized images (of the whole training split: `TRAIN_SPLIT`), a
    Bernoulli decoder, `prior` (a registered
    name) with its size parameters from `cfg`, the given `seed`. `section="quality_vae"` (Part 2): 8-bit
    images in [0, 1], dequantized afresh in every epoch as the flow's and the DDPM's are, y = (255 x + u)/256
    (so that its likelihood is a density of the same y as theirs: Table 3), a continuous Bernoulli decoder,
    and the [quality_vae] section's prior, seed and hyperparameters. The first `train_subset`
    images are used. `eval_x` (optional): the test ELBO on those images after every epoch (`test_elbo` in
    the history; dequantized once, with a fixed seed, for the Part 2 VAE). Initial weights:
    `torch.manual_seed(seed)`.
    """

    if section not in _VAE:
        raise ValueError(f"section={section!r}: a VAE trains for one of {', '.join(_VAE)}")
    cfg = {**cfg, **({"prior": prior} if prior is not None else {}), **({"seed": seed} if seed is not None else {})}
    cfg = settled(section, cfg, log)
    name, seed = cfg["prior"], cfg["seed"]
    key = run_key(section, cfg)
    folder = cache.run_dir(section, key)
    torch.manual_seed(seed)
    model = models.build(section, cfg)
    continuous = section == "quality_vae"
    eval_fn = None
    if eval_x is not None:
        if continuous:
            eval_x = data.dequantize(eval_x.float(), generator=torch.Generator().manual_seed(12345))
        eval_fn = _vae_eval_fn(eval_x)
    train_x = subset(train_x, cfg["train_subset"])
    model.check_data(train_x)  # once here, not in every step (its dequantized views stay in [0, 1])
    result = training.fit(model, train_x, epochs=cfg["epochs"], loss_fn=_unchecked_loss,
                          transform=(lambda b, g: data.dequantize(b, generator=g)) if continuous else None,
                          batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed, config=key, bf16=cfg["bf16"],
                          checkpoint=folder / "model.pt", device=device, eval_fn=eval_fn, progress=progress,
                          desc=f"{name} seed {seed}" if section == "priors" else f"{name}-prior VAE", log=log)
    return _recorded(Trained(model, result, folder, cfg), section, cfg["epochs"])


# ---------------------------------------------------------------- image flow


def train_flow(cfg: Mapping[str, Any], train_x: torch.Tensor, *, eval_x: torch.Tensor | None = None,
               device: torch.device | str | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> Trained:
    """Train (or resume, or reuse) the image flow of `cfg` (a resolved [flow] section) by maximum likelihood
    on dequantized `train_x` (N, C, H, W) in [0, 1]: Adam on −log p(y) / D, y = (x · 255 + u) / 256 drawn
    afresh each epoch, the learning rate constant or on a cosine to 0 over the epochs (`schedule`).

    The actnorm is initialised on 4,096 dequantized training images (then the checkpoint, if any, replaces
    it). After every epoch the test bits/dim of `eval_x` (fixed dequantization, fp32) joins the history as
    `test_bpd`; `train_bpd` is the epoch's mean training loss in bits/dim.
    """

    cfg = settled("flow", cfg, log)
    key = run_key("flow", cfg)
    folder = cache.run_dir("flow", key)
    torch.manual_seed(cfg["seed"])
    flow = models.build("flow", cfg)
    x = subset(train_x, cfg["train_subset"])
    init = data.dequantize(x[:4096].float(), generator=torch.Generator().manual_seed(cfg["seed"]))
    flows.initialize_actnorm(flow, init)

    def eval_fn(model):
        return {"test_bpd": flows.dataset_bits_per_dim(model, eval_x).mean().item()} if eval_x is not None else {}

    result = training.fit(flow, x, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                          seed=cfg["seed"], config=key, checkpoint=folder / "model.pt",
                          transform=lambda b, g: data.dequantize(b, generator=g), eval_fn=eval_fn, device=device,
                          bf16=cfg["bf16"], grad_clip=cfg["grad_clip"] or None, schedule=cfg["schedule"],
                          progress=progress, desc="flow", log=log)
    dim = x[0].numel()
    for record in result.history:  # the loss is nats per dimension of y: -log p(y) / dim
        record.setdefault("train_bpd", float(data.bits_per_dim(torch.tensor(-record["train_loss"] * dim), dim)))
    return _recorded(Trained(flow, result, folder, cfg), "flow", cfg["epochs"])


# ---------------------------------------------------------------- DDPM


def train_ddpm(cfg: Mapping[str, Any], train_x: torch.Tensor, *, eval_x: torch.Tensor | None = None,
               device: torch.device | str | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> Trained:
    """Train (or resume, or reuse) the study's DDPM (`diffusion.build_ddpm`) on images (N, C, H, W) in [0, 1].

    Each batch is dequantized, (255 x + u)/256 with u ~ U(0, 1), then mapped to [-1, 1]: the same continuous
    view of the 8-bit data as the flow's (docs/study.md), so that the DDPM, like the flow, models a density rather
    than 256 spikes; the 1/256-wide jitter is far below the noise of every diffusion step
    (√β_0 = 0.01 ≈ 1.3/256). `eval_x` (test images in [0, 1]) gives a per-epoch `test_loss` with fixed t
    and ε, on the EMA weights. The EMA model is `Trained.result.ema`.
    """

    cfg = settled("ddpm", cfg, log)
    key = run_key("ddpm", cfg)
    folder = cache.run_dir("ddpm", key)
    ddpm = models.build("ddpm", cfg)
    eval_fn = None
    if eval_x is not None:
        g = torch.Generator().manual_seed(12345)
        x_eval = data.to_signed(data.dequantize(eval_x, g))
        t_eval = torch.randint(0, cfg["T"], (len(x_eval),), generator=g)
        noise_eval = torch.randn(x_eval.shape, generator=g)

        def eval_fn(model):
            dev, total = model.betas.device, 0.0
            for i in range(0, len(x_eval), 500):
                part = slice(i, i + 500)
                total += model.p_losses(x_eval[part].to(dev), t_eval[part].to(dev), noise_eval[part].to(dev)).item() \
                    * len(x_eval[part])
            return {"test_loss": total / len(x_eval)}

    result = training.fit(ddpm, subset(train_x, cfg["train_subset"]), epochs=cfg["epochs"],
                          batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"], config=key,
                          checkpoint=folder / "model.pt", transform=lambda b, g: data.to_signed(data.dequantize(b, g)),
                          eval_fn=eval_fn, device=device, bf16=cfg["bf16"], channels_last=cfg["channels_last"],
                          ema_decay=cfg["ema_decay"], progress=progress, desc="ddpm", log=log)
    return _recorded(Trained(ddpm, result, folder, cfg), "ddpm", cfg["epochs"])


# ---------------------------------------------------------------- classifier


def _classifier_schedule(cfg: Mapping[str, Any]) -> Callable[[int, int], float]:
    """The classifier's step schedule: lr for `epochs`, then lr/10 for `decay_epochs` ([classifier])."""
    if cfg["decay_epochs"] < 1:
        raise ValueError(f"decay_epochs={cfg['decay_epochs']} must be >= 1 (the classifier's low-lr phase)")
    epochs = cfg["epochs"] + cfg["decay_epochs"]

    def step_lr_over_10_in_the_decay_epochs(step: int, total_steps: int) -> float:
        return 1.0 if step * epochs < cfg["epochs"] * total_steps else 0.1

    return step_lr_over_10_in_the_decay_epochs


def train_classifier(cfg: Mapping[str, Any], *, device: torch.device | str | None = None, progress: bool = True,
                     log: Callable[[str], None] = print) -> Trained:
    """Train (or resume, or reuse) the feature classifier of `cfg` (a resolved [classifier] section) on the
    "fit" images and labels of `cfg["dataset"]` (`TRAIN_SPLIT`; never the held-out ones: the real-data floor's), by
    cross-entropy: Adam at `lr` for `epochs`, then at a tenth of it for `decay_epochs`. `test_accuracy` joins the history after
    every epoch. The model is returned in eval mode; `load_classifier` finds it later.
    """

    key = run_key("classifier", cfg)
    folder = cache.run_dir("classifier", key)
    x, y = data.load_mnist(TRAIN_SPLIT["classifier"], dataset=cfg["dataset"])
    xt, yt = data.load_mnist("test", dataset=cfg["dataset"])
    torch.manual_seed(cfg["seed"])  # the initial weights
    model = models.build("classifier", cfg)
    n = cfg["train_subset"] or len(x)
    result = training.fit(model, (x[:n], y[:n]), epochs=cfg["epochs"] + cfg["decay_epochs"],
                          batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"],
                          config=key, checkpoint=folder / "model.pt", schedule=_classifier_schedule(cfg),
                          eval_fn=lambda m: {"test_accuracy": accuracy(m, xt, yt)}, device=device,
                          progress=progress, desc=f"classifier ({cfg['dataset']})", log=log)
    return _recorded(Trained(model.eval(), result, folder, dict(cfg)), "classifier",
                     cfg["epochs"] + cfg["decay_epochs"])
