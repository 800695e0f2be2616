"""YAML presets (``full_scale/configs/*.yaml``) and command-line overrides ``section.key=value``.

A configuration is a two-level dict: sections (model, data, train, guidance, log, checkpoint, sample) of scalar or
list values. Overrides may only set keys that the preset defines (a typo is an error, not a silently ignored key);
values are parsed as YAML (``train.lr=3e-4``, ``guidance.mode=none``, ``sample.steps=[1,8]``).
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from .models import DiTConfig, dit_config

PRESET_DIR = Path(__file__).parent / "configs"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    """The preset ``full_scale/configs/{name}.yaml``, or a YAML file path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"preset: no preset {name!r}; expected one of {presets()} or a path to a .yaml file")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict) or not all(isinstance(v, dict) for v in cfg.values()):
        raise ValueError(f"preset {path}: expected a mapping of sections to mappings")
    return cfg


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """A copy of ``cfg`` with each ``section.key=value`` applied (value parsed as YAML)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        if section not in cfg or name not in cfg[section]:
            known = sorted(f"{s}.{k}" for s in cfg for k in cfg[s])
            raise ValueError(f"--set {item!r}: unknown key {key!r}; known keys: {', '.join(known)}")
        cfg[section][name] = yaml.safe_load(raw)
    return cfg


def model_config(cfg: dict) -> DiTConfig:
    """The :class:`DiTConfig` of a configuration's ``model`` section (null fields come from the named size)."""
    fields = {k: v for k, v in cfg["model"].items() if v is not None and k != "name"}
    return dit_config(cfg["model"].get("name"), **fields)
