import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from gen_lib import classifier, diffusion, flows, vae
from gen_lib.study import config, sections


def test_every_profile_has_every_section():
    sections = config.sections()
    for profile in config.PROFILES:
        for section in sections:
            if section == "common":
                continue
            cfg = config.resolve(section, profile)  # the keys; precision has its own tests
            assert cfg["profile"] == profile and cfg["dataset"] in ("mnist", "fashion")


def test_profiles_share_keys():
    for section in config.sections():
        keys = {p: set(config.resolve(section, p)) - {"profile"} for p in config.PROFILES if section != "common"}
        if keys:
            assert len({frozenset(k) for k in keys.values()}) == 1, f"profiles disagree on the keys of {section}"


def test_unknown_profile_lists_valid():
    with pytest.raises(ValueError, match="profile='fast' is unknown; choose one of smoke, default, paper"):
        config.resolve("priors", "fast")


def test_unknown_section_and_parameter():
    with pytest.raises(ValueError, match="section='gan' is unknown"):
        config.resolve("gan", "smoke")
    with pytest.raises(ValueError, match="unknown parameter.*epohcs.*valid:.*epochs"):
        config.resolve("priors", "smoke", epohcs=3)


def test_overrides_and_none():
    assert config.resolve("priors", "smoke", epochs=7)["epochs"] == 7
    assert config.resolve("priors", "smoke", epochs=None)["epochs"] == config.resolve("priors", "smoke")["epochs"]
    assert config.resolve("priors", "smoke", dataset="fashion")["dataset"] == "fashion"


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset='cifar' is unknown; choose one of mnist, fashion"):
        config.resolve("flow", "smoke", dataset="cifar")


def test_resolve_leaves_auto_to_the_recipes():
    assert config.resolve("ddpm", "paper")["bf16"] == "auto"


def test_every_field_is_typed_documented_and_in_the_profiles():
    """Each section's dataclass declares exactly the profile's keys, with a comment on every field's line, and
    refuses a value of the wrong type by name."""
    for name, cls in sections.SECTIONS.items():
        source = inspect.getsource(cls).splitlines()
        for f in dataclasses.fields(cls):
            lines = [line for line in source if re.match(rf"\s+{f.name}: ", line)] or \
                [line for line in inspect.getsource(sections.Section).splitlines() if re.match(rf"\s+{f.name}: ", line)]
            assert lines and "#" in lines[0], (name, f.name)
        assert {f.name for f in dataclasses.fields(cls)} == set(config.resolve(name, "default"))
    with pytest.raises(ValueError, match=r"epochs='ten' in \[flow\] of profile 'smoke': expected int"):
        config.resolve("flow", "smoke", epochs="ten")
    with pytest.raises(ValueError, match=r"seeds=True in \[priors\] of profile 'smoke': expected int"):
        config.resolve("priors", "smoke", seeds=True)


# each model's constructor, and its arguments that come from the dataset rather than from the section
CONSTRUCTORS = {"ddpm": (diffusion.build_ddpm, {"shape"}), "flow": (flows.build_image_flow, {"image_shape"}),
                "classifier": (classifier.MNISTClassifier, {"self", "n_classes", "image_shape"}),
                "quality_vae": (vae.build_vae, {"likelihood", "image_shape", "prior_params", "latent_dim", "hidden"})}


def test_every_model_field_is_declared_once_as_a_constructor_argument():
    """A run is configured by the section of its name; the fields it marks model=True are its constructor's
    arguments by name (the VAE's fixed 2-D latent and 512 hidden units are build_vae's own, never configured)."""
    assert sections.RUNS == ("priors", "flow", "ddpm", "quality_vae", "classifier")
    for run, (build, from_data) in CONSTRUCTORS.items():
        arguments = set(inspect.signature(build).parameters) - from_data
        assert set(sections.model_args(run, config.resolve(run, "smoke"))) == arguments, run
    # the DDPM's whole configuration is its section: no second dataclass with other defaults
    unet = set(inspect.signature(diffusion.build_ddpm).parameters) - {"shape"}
    assert set(sections.identity("ddpm")) == unet | {"dataset", "batch_size", "lr", "train_subset", "ema_decay", "bf16",
                                                     "channels_last", "seed"}
    assert sections.epochs("ddpm") == ("epochs",) and sections.epochs("classifier") == ("epochs", "decay_epochs")
    model_fields = {f.name for cls in sections.SECTIONS.values() for f in dataclasses.fields(cls)
                    if f.metadata.get("model")}
    for path in Path(sections.__file__).parent.parent.rglob("*.py"):  # no other dataclass declares them
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and path.name != "sections.py" and any(
                    "dataclass" in ast.unparse(d) for d in node.decorator_list):
                names = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
                assert len(names & model_fields) < 2, (path, node.name, names & model_fields)


def test_no_key_carries_a_prefix_of_another_run():
    """[quality] configures no run: Part 2's VAE and the classifier are sections of their own."""
    for name, cls in sections.SECTIONS.items():
        assert not [f.name for f in dataclasses.fields(cls) if f.name.startswith(("vae_", "classifier_"))], name
    assert not sections.QualitySection.TRAINS and "prior" in config.resolve("quality_vae", "smoke")
