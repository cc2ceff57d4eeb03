"""Profiles: one file (`profiles.toml`) holds every notebook's parameters. `default` is
complete; `smoke` and `paper` list only what they change and inherit the rest.
GEN_LIB_PROFILE_OVERRIDES may name a further TOML file of the same shape whose values
replace the file's (the tests run the `paper` profile's code paths at tiny sizes this way);
it may only change parameters that exist. GEN_LIB_PARAMS (JSON of the same shape, written by the runner from its
`--param section.key=value` arguments) changes values on top of both, under the same rule.

A notebook's papermill parameters cell is a block of scalars (`profile`, `dataset`,
and overrides left at None); `resolve` fills the rest from the profile, refuses unknown
names and returns the section's typed dataclass (`gen_lib.study.sections`, where each
field is documented and its role in a run's identity declared).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from .. import data, paths  # the dataset registry, data.INFO
from ..system import machine_key
from .sections import SECTIONS, Section, precision_keys

PROFILES_FILE = Path(__file__).with_name("profiles.toml")
PARAMS_ENV = "GEN_LIB_PARAMS"  # {profile: {section: {key: value}}} as JSON: the runner's --param section.key=value
PROFILES = ("smoke", "default", "paper")
AUTO = "auto"
# the parameters that may be "auto" (settled at training time by `precision.settle`), per section, and the model
# whose timing decides each: read from the sections' dataclasses
PRECISION_KEYS: dict[str, dict[str, str]] = {name: keys for name in SECTIONS if (keys := precision_keys(name))}


def _read(path: Path, what: str = "") -> dict[str, dict[str, dict[str, Any]]]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what or path}: no such file ({path.resolve()})") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{what or path}: not valid TOML: {err}") from None


def _merge(base: dict[str, dict[str, Any]], changes: dict[str, dict[str, Any]], where: str
           ) -> dict[str, dict[str, Any]]:
    out = {section: dict(params) for section, params in base.items()}
    for section, params in changes.items():
        if section not in base:
            raise ValueError(f"{where}: section {section!r} is unknown; choose from {', '.join(base)}")
        unknown = sorted(set(params) - set(base[section]))
        if unknown:
            raise ValueError(f"{where}: unknown parameter(s) {', '.join(unknown)} in [{section}]; "
                             f"valid: {', '.join(base[section])}")
        out[section].update(params)
    return out


def _load() -> dict[str, dict[str, dict[str, Any]]]:
    """Every profile, resolved: `default`, then each other profile's changes on top of it."""
    raw = _read(PROFILES_FILE)
    extra = os.environ.get("GEN_LIB_PROFILE_OVERRIDES")
    overrides = _read(Path(extra), f"GEN_LIB_PROFILE_OVERRIDES={extra}") if extra else {}
    unknown = sorted(set(raw) - set(PROFILES)) + sorted(set(overrides) - set(PROFILES))
    if unknown:
        raise ValueError(f"profile(s) {', '.join(unknown)} in {PROFILES_FILE} or {extra} are unknown; "
                         f"choose from {', '.join(PROFILES)}")
    try:
        params = json.loads(os.environ.get(PARAMS_ENV) or "{}")
    except ValueError as err:
        raise ValueError(f"{PARAMS_ENV}: not valid JSON: {err}") from None
    table = {}
    for profile in PROFILES:
        table[profile] = _merge(raw["default"], raw.get(profile, {}) if profile != "default" else {},
                                f"{PROFILES_FILE} [{profile}]")
        table[profile] = _merge(table[profile], overrides.get(profile, {}), f"{extra} [{profile}]")
        table[profile] = _merge(table[profile], params.get(profile, {}), f"--param ({PARAMS_ENV}) [{profile}]")
    return table


def sections() -> tuple[str, ...]:
    return tuple(_load()["default"])


def planned(profile: str) -> dict[str, dict[str, int]]:
    """The epochs that this machine's current plan for `profile` gives ({section: {field: epochs}}), written by
    `gen_lib.study.plan.make` in `build/plan-<profile>.json`; empty without a plan made on this machine."""
    try:
        stored = json.loads((paths.build_dir() / f"plan-{profile}.json").read_text())
    except (OSError, ValueError):
        return {}
    key = stored.get("current", "")
    if not key.startswith(machine_key() + " "):
        return {}
    return stored.get("plans", {}).get(key, {}).get("overrides", {})


def resolve(section: str, profile: str, _plan: bool = True, **overrides: Any) -> Section:
    """Parameters of `section` (a notebook's part) under `profile`, with this machine's planned epochs (`planned`,
    unless `_plan` is false) and then the non-None overrides. Nothing runs: an "auto" precision stays "auto" until
    a training recipe settles it (`precision.settle`).

    Raises ValueError naming an unknown profile, section or parameter and the valid ones.
    """
    table = _load()
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {', '.join(PROFILES)}")
    if section not in table[profile]:
        raise ValueError(f"section={section!r} is unknown; choose one of {', '.join(table[profile])}")
    params = {"profile": profile, **table[profile].get("common", {}), **table[profile][section]}
    if _plan:
        params.update({k: v for k, v in planned(profile).get(section, {}).items() if k in params})
    unknown = sorted(k for k in overrides if k not in params)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for {section}; "
                         f"valid: {', '.join(sorted(params))}")
    params.update({k: v for k, v in overrides.items() if v is not None})
    if params.get("dataset", "mnist") not in data.INFO:
        raise ValueError(f"dataset={params['dataset']!r} is unknown; choose one of {', '.join(data.INFO)}")
    for k in PRECISION_KEYS.get(section, {}):
        if k in params and not (isinstance(params[k], bool) or params[k] == AUTO):
            raise ValueError(f"{k}={params[k]!r} in [{section}]: choose true, false or \"auto\"")
    cls = SECTIONS[section]
    declared = {f.name for f in dataclasses.fields(cls)}
    if declared != set(params):
        raise ValueError(f"[{section}] of {PROFILES_FILE} and {cls.__name__} (gen_lib/study/sections.py) disagree: "
                         f"only in the file: {sorted(set(params) - declared)}; only in the class: "
                         f"{sorted(declared - set(params))}")
    return cls(**params)


def _diff(a: str, b: str) -> None:
    """Print two profiles side by side, every section resolved and checked (a bad value stops with its error)."""
    table = _load()
    for section in table[a]:
        for profile in (a, b):
            resolve(section, profile, _plan=False)
    print(f"{'parameter':22s} {a:>10s} {b:>10s}   (* where they differ)")
    for section in table[a]:
        keys = sorted(set(table[a][section]) | set(table[b][section]))
        print(f"[{section}]")
        for k in keys:
            va, vb = table[a][section].get(k), table[b][section].get(k)
            print(f"  {k:20s} {va!s:>10s} {vb!s:>10s}{'' if va == vb else '   *'}")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gen_lib.study.config",
                                     description="Print two profiles side by side (default against paper).")
    parser.add_argument("a", nargs="?", default="default", help=f"a profile: {' | '.join(PROFILES)}")
    parser.add_argument("b", nargs="?", default="paper", help="another profile")
    args = parser.parse_args(argv)
    for name in (args.a, args.b):
        if name not in PROFILES:
            parser.error(f"profile {name!r} is unknown; choose from {', '.join(PROFILES)}")
    try:
        _diff(args.a, args.b)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
