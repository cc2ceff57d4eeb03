"""The configuration: one frozen dataclass per section of `profiles.toml`, a comment per field (as nanoGPT's
`GPTConfig`). `config.resolve` fills one from a profile; the values live in the TOML file, the meaning here.

A section that configures a trained model (`TRAINS`) is named as the recipe's run: `priors`, `flow`, `ddpm`,
`quality_vae`, `classifier`. Its fields are the model's whole configuration, declared here once: the ones marked
`model=True` are the arguments of the model's constructor (`gen_lib.study.models.build`), by name.

A field's role decides what a run's identity is (`identity`), so that no list of keys is kept by hand:
- `trains()`: it decides the weights of the section's run, so it is part of its identity: a change trains a new
  run in a new folder;
- `extends()`: it only extends a run (epochs): a larger value resumes the run from its last checkpoint;
- `prior_size()`: a prior's size, `<prior>_<param>`, part of the identity of that prior's runs only;
- no role: what the notebook does with the trained models (evaluation sizes, samples, seeds of draws).
A field with `precision=` may be "auto", settled by `precision.settle` at training time.

A section is also a read-only mapping (`cfg["epochs"]`, `{**cfg, "seed": 1}`), as the notebooks use it.
"""

import dataclasses
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import priors, samplers
from ..training import SCHEDULES

_POSITIVE = {"seeds", "T", "n_layers", "hidden", "base_channels", "feature_dim", "iwae_k", "pr_k", "n_eval", "n_boot",
             "nll_k", "ode_steps", "sample_steps", "n_samples", "test_images", "decay_epochs"}


def trains(precision: str | None = None, model: bool = False) -> Any:
    """A field that decides the weights of the section's run; `model=True`: also an argument of the model's
    constructor (`models.build` passes it by name); `precision`: may be "auto" (`precision.settle`)."""
    return field(metadata={"trains": True, "precision": precision, "model": model})


def extends() -> Any:
    """A field that only extends the section's run: epochs."""
    return field(metadata={"extends": True})


def prior_size() -> Any:
    """A VAE prior's size parameter `<prior>_<param>` (gen_lib.priors.register)."""
    return field(metadata={"prior_size": True})


def _accepts(kind: Any, value: Any) -> bool:
    if isinstance(kind, types.UnionType):
        return any(_accepts(k, value) for k in kind.__args__)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


@dataclass(frozen=True)
class Section(Mapping):
    """What every section has: where its values came from and the dataset."""

    TRAINS: ClassVar[bool] = False  # configures a model that a recipe trains (gen_lib.study.recipes): the run's name
    # is the section's
    profile: str  # the profile the values came from: smoke | default | paper
    dataset: str = trains()  # mnist | fashion (gen_lib.data.INFO)

    def __post_init__(self) -> None:
        where = f"[{section_name(type(self))}] of profile {self.profile!r}"
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _accepts(f.type, value):
                name = getattr(f.type, "__name__", str(f.type))
                raise ValueError(f"{f.name}={value!r} in {where}: expected {name}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                least = 1 if f.name.endswith(("batch_size", "batch")) or f.name in _POSITIVE else 0
                if f.name.endswith("lr") and not value > 0 or value < least:
                    raise ValueError(f"{f.name}={value!r} in {where}: must be "
                                     + ("> 0" if f.name.endswith("lr") else f">= {least}"))
        for name, (allowed, text) in self.choices().items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} in {where}: choose one of {', '.join(map(str, allowed))}"
                                 + (f" ({text})" if text else ""))
        self.check()

    def choices(self) -> dict[str, tuple[tuple[Any, ...], str]]:
        """{field: (the allowed values, where they are registered)} of this section's enumerated fields."""
        return {}

    def check(self) -> None:
        """Further checks of one section (a clear ValueError naming the field); none by default."""

    def updated(self, values: Mapping[str, Any]) -> "Section":
        """This section with the values of `values` for its own fields (e.g. a run's configuration, precisions
        settled: `Trained.config`); other keys are left out."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if k in self._names()})

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


@dataclass(frozen=True)
class CommonSection(Section):
    """[common]: shared by every section (its fields are those of `Section`)."""


@dataclass(frozen=True)
class PriorsSection(Section):
    """[priors], notebook 01_priors: Part 1, VAEs with a 2-D latent on binarized images, one run per prior and seed."""

    TRAINS: ClassVar[bool] = True
    seeds: int  # seeds per prior (0 .. seeds-1): the spread of every Table 1 entry
    epochs: int = extends()  # passes over the training images
    batch_size: int = trains()  # images per Adam step
    lr: float = trains()  # Adam's learning rate
    bf16: bool | str = trains(precision="vae")  # bf16 autocast for the networks (the bound in fp32): true | false | "auto"
    stack_seeds: bool = trains()  # train a prior's seeds together as one stacked model (gen_lib.seeds); each seed keeps
    # its own initial weights, data order and noise, from its own generator (so this is part of the identity)
    train_subset: int = trains()  # the first N training images; 0 = all 60,000 of the "train" split
    test_subset: int  # test images of Table 1; 0 = all 10,000
    iwae_k: int  # K of the IWAE bound in Table 1 (every seed, every test image)
    quadrature_subset: int  # first test images whose log p(x) is integrated numerically (every seed)
    quadrature_grid: int  # n x n midpoint grid of the zoomed box (gen_lib.vae.log_likelihood_quadrature)
    k_table: str  # K of the IWAE-vs-K table, comma-separated (seed 0 of each prior, on the quadrature subset)
    brute_grid: int  # global n x n grid of the brute-force check of the largest IWAE overshoot (and n/2); 0 = none
    priors: str  # the priors compared, comma-separated ("gaussian,flow"); "" = every registered one; the first is
    # the baseline of the t-tests (gen_lib.priors.REGISTRY)
    mog_n_components: int = prior_size()  # mixture components
    flow_n_layers: int = prior_size()  # coupling layers of the flow prior
    flow_hidden: int = prior_size()  # hidden width of each coupling's networks
    vamp_n_pseudo: int = prior_size()  # VampPrior pseudo-inputs

    def check(self) -> None:
        try:
            priors.select(self.priors)
        except (KeyError, ValueError) as err:
            raise ValueError(f"priors={self.priors!r} in [priors] of profile {self.profile!r}: {err}") from None
        if not all(k.strip().isdigit() and int(k) > 0 for k in self.k_table.split(",")):
            raise ValueError(f"k_table={self.k_table!r} in [priors] of profile {self.profile!r}: expected positive "
                             "integers, comma-separated")


@dataclass(frozen=True)
class FlowSection(Section):
    """[flow], notebook 02_flow: the RealNVP image flow on dequantized images."""

    TRAINS: ClassVar[bool] = True
    n_layers: int = trains(model=True)  # affine couplings, alternating checkerboard masks
    hidden: int = trains(model=True)  # hidden ReLU units of each scale / translation net
    logit_alpha: float = trains(model=True)  # logit pre-transform logit(a + (1 - 2a) y); 0 = none
    actnorm: bool = trains(model=True)  # centre every pixel after the logit (gen_lib.flows explains why: stability)
    epochs: int = extends()  # passes over the training images
    batch_size: int = trains()  # images per Adam step
    lr: float = trains()  # Adam's learning rate
    schedule: str = trains()  # learning rate: constant | cosine (to 0 over the epochs)
    grad_clip: float = trains()  # max gradient norm; 0 = no clipping (gen_lib.flows explains why)
    bf16: bool | str = trains(precision="flow")  # bf16 autocast for training (evaluation is fp32): true | false | "auto"
    seed: int = trains()  # initial weights, data order, dequantization noise
    train_subset: int = trains()  # the first N training images; 0 = all 50,000 of the "fit" split
    eval_subset: int = trains()  # test images scored after every epoch (the learning curve in the checkpoint)
    test_subset: int  # test images of the final bits/dim; 0 = all 10,000
    n_samples: int  # samples written for 04_quality

    def choices(self) -> dict[str, tuple[tuple[Any, ...], str]]:
        return {"schedule": (SCHEDULES, "gen_lib.training.SCHEDULES")}


@dataclass(frozen=True)
class DDPMSection(Section):
    """[ddpm], notebook 03_ddpm: the DDPM (`gen_lib.diffusion.build_ddpm` of the `model=True` fields), its training
    and its samplers."""

    TRAINS: ClassVar[bool] = True
    epochs: int = extends()  # passes over the training images
    batch_size: int = trains()  # images per Adam step
    lr: float = trains()  # Adam, constant
    train_subset: int = trains()  # the first N training images; 0 = all 50,000 of the "fit" split
    base_channels: int = trains(model=True)  # U-Net width c0 of the 32x32 level
    channel_mults: str = trains(model=True)  # widths of the four levels, c0 * mult, comma-separated
    n_res: int = trains(model=True)  # residual blocks per level and side
    dropout: float = trains(model=True)  # in every residual block
    T: int = trains(model=True)  # diffusion steps
    ema_decay: float = trains()  # EMA of the weights, used for sampling
    bf16: bool | str = trains(precision="unet")  # bf16 autocast for the U-Net (loss in fp32): true | false | "auto"
    channels_last: bool | str = trains(precision="unet")  # channels_last memory format: true | false | "auto"
    seed: int = trains()  # initial weights, data order, noise
    n_samples: int  # samples written for 04_quality
    sample_method: str  # a sampler of gen_lib.samplers.SAMPLERS: ancestral | ddim | ddim_eta
    sample_steps: int  # steps for those samples
    sample_batch: int  # images per sampling batch (bounds memory: the activations of one batch)
    compare_steps: str  # DDIM step counts compared (time per sample and grids), comma-separated
    compare_n: int  # samples per step count in the comparison
    compare_ancestral: int  # also T-step ancestral in the comparison on this many samples (0 = no)
    fid_n: int  # FID against sampling steps: samples per DDIM step count, with intervals (0 = no); >= 2 x feature_dim
    fid_ancestral: bool  # ... and for the T-step ancestral sampler, at the same fid_n
    n_boot: int  # bootstrap replicates of every interval (gen_lib.intervals.quality_intervals_from_features)

    def choices(self) -> dict[str, tuple[tuple[Any, ...], str]]:
        return {"sample_method": (tuple(samplers.SAMPLERS), "gen_lib.samplers.SAMPLERS")}

    def check(self) -> None:
        for name in ("channel_mults", "compare_steps"):
            text = str(getattr(self, name))
            if not all(v.strip().isdigit() and int(v) > 0 for v in text.split(",")):
                raise ValueError(f"{name}={text!r} in [ddpm] of profile {self.profile!r}: expected positive integers, "
                                 "comma-separated")
        if self.sample_steps > self.T or self.ema_decay >= 1 or self.dropout >= 1:
            raise ValueError(f"[ddpm] of profile {self.profile!r}: need sample_steps <= T, ema_decay < 1 and "
                             f"dropout < 1 (sample_steps={self.sample_steps}, T={self.T}, "
                             f"ema_decay={self.ema_decay}, dropout={self.dropout})")


@dataclass(frozen=True)
class QualityVAESection(Section):
    """[quality_vae], notebook 04_quality: Part 2's VAE, a continuous Bernoulli decoder on dequantized images."""

    TRAINS: ClassVar[bool] = True
    prior: str = trains(model=True)  # its prior (with the prior's own default sizes): a name of gen_lib.priors.REGISTRY
    epochs: int = extends()  # passes over the training images
    batch_size: int = trains()  # images per Adam step
    lr: float = trains()  # Adam's learning rate
    bf16: bool | str = trains(precision="vae")  # as [priors] bf16
    train_subset: int = trains()  # the first N training images; 0 = all 50,000 of the "fit" split
    seed: int = trains()  # initial weights, data order, dequantization noise

    def choices(self) -> dict[str, tuple[tuple[Any, ...], str]]:
        return {"prior": (priors.names(), "gen_lib.priors.REGISTRY")}


@dataclass(frozen=True)
class ClassifierSection(Section):
    """[classifier], notebooks 03_ddpm and 04_quality: the CNN whose penultimate layer gives the FID/KID features."""

    TRAINS: ClassVar[bool] = True
    feature_dim: int = trains(model=True)  # feature dimension d; FID needs N >= 2d samples per set
    epochs: int = extends()  # passes over the training images at lr
    decay_epochs: int = extends()  # then passes at lr / 10
    batch_size: int = trains()  # images per Adam step
    lr: float = trains()  # Adam's learning rate (a tenth of it in the decay epochs)
    seed: int = trains()  # initial weights and data order
    train_subset: int = trains()  # the first N training images; 0 = all 50,000 of the "fit" split


@dataclass(frozen=True)
class QualitySection(Section):
    """[quality], notebook 04_quality: Table 2 (samples) and Table 3 (likelihoods) of the trained models (it trains
    nothing: its models are configured by [quality_vae], [classifier], [flow] and [ddpm])."""

    n_eval: int  # N for Table 2 (generated vs test, held-out vs test)
    n_boot: int  # bootstrap replicates of every Table 2 interval (95 %, basic bootstrap)
    pr_k: int  # precision/recall: k-th neighbour radius (Kynkaanniemi et al., 2019)
    fid_curve_max: int  # largest N of the FID-vs-N figure
    n_grid: int  # samples per model in Figure 2 (8 x 8)
    n_neighbours: int  # samples per model shown with their nearest training images
    nll_n: int  # Table 3: a fixed random sample of this many test images, the same y for every model
    nll_t: int  # ... the DDPM's variational bound summed over t by stratified sampling, this many strata (0 = all T)
    nll_k: int  # ... the VAE's IWAE bound with this K
    ode_steps: int  # ... the DDPM's probability-flow ODE likelihood (and Table 2's ODE samples): Heun on this many of
    # the T noise levels
    check_n: int  # ... solver and quadrature errors bounded on the first this many (grids of half the steps); also the
    # batch of Table 3's dequantization, so these images get the same y
    quadrature_grid: int  # ... the VAE's near-exact log p(y): n x n grid (gen_lib.vae.log_likelihood_quadrature)
    seed: int  # the evaluation's draws: test and held-out images, samples, dequantization of the test images


@dataclass(frozen=True)
class ExploreSection(Section):
    """[explore], notebook 05_explore: widgets over the cached models (it trains nothing)."""

    seed: int  # whose VAEs (01_priors seed) the latent-plane explorer shows
    test_images: int  # test images encoded for the nearest-encoding search and the scatter
    n_trajectory: int  # DDPM samples followed through the reverse process (T-step ancestral + DDIM)
    ancestral_steps: int  # steps of the ancestral sampler (T = 1000 = Ho et al.'s; fewer: respaced betas)
    ddim_steps: int  # DDIM steps beside the ancestral sampler


@dataclass(frozen=True)
class BudgetSection(Section):
    """[budget], read by the runner (gen_lib.study.plan): the whole run's minutes on the machine at hand, and the
    rule that gives the trainings fewer epochs where the profile's would not fit (only training epochs are cut)."""

    plan: bool  # measure this machine and print the plan (minutes per notebook) before anything trains
    minutes: float  # the budget of the whole run; 0 = none: the profile's epochs whatever the machine
    share_priors: float  # Part 1's VAEs' share of the training time left after the fixed work, when cut
    share_flow: float  # the image flow's share
    share_ddpm: float  # the DDPM's share
    share_quality_vae: float  # Part 2's VAE's share
    floor_priors: int  # the fewest epochs a budget may give Part 1's VAEs: below any floor nothing trains and the run
    # stops with the budget this machine needs; each floor is the epoch at which the model's learning curve came
    # within a stated distance of its value at the profile's epochs (profiles.toml says which run)
    floor_flow: int  # ... the image flow's
    floor_ddpm: int  # ... the DDPM's
    floor_quality_vae: int  # ... Part 2's VAE's


SECTIONS: dict[str, type[Section]] = {"common": CommonSection, "priors": PriorsSection, "flow": FlowSection,
                                      "ddpm": DDPMSection, "quality_vae": QualityVAESection,
                                      "classifier": ClassifierSection, "quality": QualitySection,
                                      "explore": ExploreSection, "budget": BudgetSection}
# the recipes' runs: each is configured by the section of its name
RUNS: tuple[str, ...] = tuple(name for name, cls in SECTIONS.items() if cls.TRAINS)
# the notebook and the recipe (gen_lib.study.recipes) that train each run, named by the errors of a missing model
TRAINED_BY: dict[str, tuple[str, str]] = {"priors": ("01_priors", "train_vaes"), "flow": ("02_flow", "train_flow"),
                                          "ddpm": ("03_ddpm", "train_ddpm"), "quality_vae": ("04_quality", "train_vae"),
                                          "classifier": ("04_quality", "train_classifier")}


def section_name(cls: type[Section]) -> str:
    return next(name for name, c in SECTIONS.items() if c is cls)


def _role(run: str, role: str) -> tuple[str, ...]:
    if run not in RUNS:
        raise ValueError(f"run={run!r} is unknown; choose one of {', '.join(RUNS)}")
    return tuple(f.name for f in dataclasses.fields(SECTIONS[run]) if f.metadata.get(role))


def identity(run: str) -> tuple[str, ...]:
    """The fields that decide the weights of `run` (a recipe's run: "priors", "flow", "ddpm", "quality_vae",
    "classifier"). A VAE's run adds the sizes of its own prior only (`prior_size()` fields, read by
    `gen_lib.priors.params` in `recipes.run_key`)."""
    return _role(run, "trains")


def epochs(run: str) -> tuple[str, ...]:
    """The fields that only extend `run`: left out of its identity so that a longer run resumes a shorter one."""
    return _role(run, "extends")


def model_args(run: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """{field: value} of `cfg` for the fields of `run`'s section that are its model's constructor arguments."""
    return {name: cfg[name] for name in _role(run, "model")}


def precision_keys(section: str) -> dict[str, str]:
    """{field: the model whose timing settles it} for the fields of `section` that may be "auto"."""
    return {f.name: f.metadata["precision"] for f in dataclasses.fields(SECTIONS[section])
            if f.metadata.get("precision")}
