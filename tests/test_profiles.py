"""Profiles are overrides: `default` is complete, `smoke` and `paper` list only their changes, and an
overrides file (GEN_LIB_PROFILE_OVERRIDES) can change existing parameters only."""

import tomllib

import pytest

from gen_lib.study import config


def test_smoke_and_paper_list_only_what_they_change():
    raw = tomllib.loads(config.PROFILES_FILE.read_text())
    for profile in ("smoke", "paper"):
        for section, params in raw[profile].items():
            same = [k for k, v in params.items() if raw["default"][section].get(k) == v]
            assert not same, f"[{profile}.{section}] repeats default's values of {same}"
    # and inherit the rest
    assert config.resolve("ddpm", "smoke")["T"] == config.resolve("ddpm", "default")["T"]


def test_overrides_file_changes_existing_parameters_only(tmp_path, monkeypatch):
    extra = tmp_path / "tiny.toml"
    extra.write_text("[paper.priors]\nseeds = 2\n")
    monkeypatch.setenv("GEN_LIB_PROFILE_OVERRIDES", str(extra))
    assert config.resolve("priors", "paper")["seeds"] == 2
    assert config.resolve("priors", "paper")["iwae_k"] == 5000  # the rest is paper's
    extra.write_text("[paper.priors]\nsedes = 2\n")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) sedes in \[priors\]"):
        config.resolve("priors", "paper")
    extra.write_text("[fast.priors]\nseeds = 2\n")
    with pytest.raises(ValueError, match="profile.*fast.*unknown"):
        config.resolve("priors", "paper")
