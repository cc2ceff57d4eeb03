import dataclasses
import inspect
import re

import pytest

from gen_lib.diffusion import DDPMConfig
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


def test_the_ddpm_section_trains_what_the_ddpm_config_holds():
    # gen_lib.diffusion.DDPMConfig is the model's own dataclass: every field of it but epochs decides a DDPM run
    assert set(sections.identity("ddpm")) == {"dataset"} | {f.name for f in dataclasses.fields(DDPMConfig)} - {"epochs"}
    assert sections.epochs("ddpm") == ("epochs",)
