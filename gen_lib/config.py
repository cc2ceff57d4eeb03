"""Profiles: one file (`profiles.toml`) holds every notebook's parameters for the
`smoke`, `default` and `paper` profiles, so that two profiles can be diffed.

A notebook's papermill parameters cell is a block of scalars (`profile`, `dataset`,
and overrides left at None); `resolve` fills the rest from the profile and refuses
unknown names. The resolved dict is what part modules turn into their config
dataclasses and what is saved beside every checkpoint and result.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

PROFILES_FILE = Path(__file__).with_name("profiles.toml")
PROFILES = ("smoke", "default", "paper")
DATASETS = ("mnist", "fashion")


def _load() -> dict[str, dict[str, dict[str, Any]]]:
    with open(PROFILES_FILE, "rb") as f:
        return tomllib.load(f)


def sections() -> tuple[str, ...]:
    return tuple(_load()["default"])


def resolve(section: str, profile: str, **overrides: Any) -> dict[str, Any]:
    """Parameters of `section` (a notebook's part) under `profile`, with non-None overrides.

    Raises ValueError naming an unknown profile, section or parameter and the valid ones.
    """
    table = _load()
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {', '.join(PROFILES)}")
    if section not in table[profile]:
        raise ValueError(f"section={section!r} is unknown; choose one of {', '.join(table[profile])}")
    params = {"profile": profile, **table[profile].get("common", {}), **table[profile][section]}
    unknown = sorted(k for k in overrides if k not in params)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for {section}; "
                         f"valid: {', '.join(sorted(params))}")
    params.update({k: v for k, v in overrides.items() if v is not None})
    if params.get("dataset", "mnist") not in DATASETS:
        raise ValueError(f"dataset={params['dataset']!r} is unknown; choose one of {', '.join(DATASETS)}")
    return params


def make(cls: type, params: dict[str, Any]):
    """Build the dataclass `cls` from resolved params (ignoring keys it does not declare)."""
    names = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(names - params.keys())
    if missing:
        raise ValueError(f"{cls.__name__} needs parameter(s) {', '.join(missing)} that the profile lacks")
    return cls(**{k: v for k, v in params.items() if k in names})


def _diff(a: str, b: str) -> None:
    table = _load()
    for section in table[a]:
        keys = sorted(set(table[a][section]) | set(table[b][section]))
        print(f"[{section}]")
        for k in keys:
            va, vb = table[a][section].get(k), table[b][section].get(k)
            print(f"  {k:20s} {va!s:>10s} {vb!s:>10s}{'' if va == vb else '   *'}")


if __name__ == "__main__":
    import sys

    _diff(*(sys.argv[1:3] if len(sys.argv) >= 3 else ("default", "paper")))
