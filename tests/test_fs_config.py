"""The typed full-scale configuration: presets on top of the defaults, overrides, validation that names the key, and
the round trip through config.yaml."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from full_scale.config import Config, load_config, load_preset, presets
from full_scale.data import DATASETS


def test_defaults_are_the_paper_recipe_and_presets_state_only_differences():
    default = Config()
    assert load_config("imagenet-256") == default  # the 256 recipe is the default
    assert (default.model.dit().hidden_size, default.model.dit().num_heads, default.train.global_batch) == (1152, 18, 2048)
    for name in presets():
        stated = load_preset(name)
        cfg = load_config(name)
        for section, values in stated.items():
            for key in values:
                ours, base = getattr(getattr(cfg, section), key), getattr(getattr(default, section), key)
                assert ours != base, f"{name}: {section}.{key} repeats a default"


def test_overrides_parse_yaml_and_apply_in_order():
    cfg = load_config("tiny-digits", ["train.lr=3e-4", "sample.nfe=[1,8]", "model.name=DiT-S/2", "train.lr=5e-4"])
    assert cfg.train.lr == 5e-4 and cfg.sample.nfe == (1, 8) and cfg.model.dit().hidden_size == 64  # explicit wins
    again = cfg.override({"train.steps": 7, "guidance.mode": "none"})
    assert (again.train.steps, again.guidance.mode, again.train.lr) == (7, "none", 5e-4)
    assert cfg.train.steps == 1500  # frozen: the original is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr: expected a finite number, got 'abc'"),
    ("train.lr=.inf", "train.lr: expected a finite number"),
    ("train.global_batch=0", "train.global_batch: expected a value ≥ 1"),
    ("train.global_batch=2.5", "train.global_batch: expected an integer"),
    ("log.every=0", "log.every: expected a value ≥ 1"),
    ("checkpoint.every=0", "checkpoint.every: expected a value ≥ 1"),
    ("checkpoint.keep=0", "checkpoint.keep: expected a value ≥ 1"),
    ("train.betas=[0.9]", "train.betas: expected a list of 2 finite numbers"),
    ("train.target_ema=1.0", "train.target_ema: expected a rate in"),
    ("train.compile=maybe", "train.compile: expected"),
    ("train.nan_policy=ignore", "train.nan_policy: expected skip or stop"),
    ("train.time_sampler=beta", "train.time_sampler: expected"),
    ("model.num_heads=5", "model.num_heads: 5 does not divide"),
    ("model.attention_backend=flash", "model.attention_backend: expected auto, triton or reference"),
    ("guidance.weight=0.5", "guidance.weight: expected a guidance weight ≥ 1"),
    ("guidance.label_dropout=2", "guidance.label_dropout"),
    ("guidance.scaled=maybe", "guidance.scaled: expected true or false"),
    ("sample.nfe=[]", "sample.nfe"),
    ("data.kind=imagenet", "data.kind: expected latents, digits, patches, synthetic"),
    ("train.learning_rate=1", "unknown key"),
    ("training.lr=1", "unknown key"),
    ("train.lr", "expected section.key=value"),
])
def test_bad_values_fail_when_the_config_is_built_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_config("tiny-digits", [override])


def test_cross_section_rule_and_from_dict_errors():
    with pytest.raises(ValueError, match="196700"):
        load_config("tiny-digits", ["train.jvp=functorch", "model.rms_norm=false"])
    with pytest.raises(ValueError, match="unknown section 'optim'"):
        Config.from_dict({"optim": {"lr": 1.0}})
    with pytest.raises(ValueError, match="train: expected a mapping"):
        Config.from_dict({"train": [1, 2]})


@settings(max_examples=30, deadline=None)
@given(lr=st.floats(1e-6, 1.0), steps=st.integers(0, 10 ** 6), clip=st.none() | st.floats(0.01, 10.0),
       beta2=st.floats(0.0, 0.999), kind=st.sampled_from(sorted(DATASETS)), compile_=st.sampled_from(["auto", True,
                                                                                                      False]))
def test_to_dict_round_trips_through_yaml(lr, steps, clip, beta2, kind, compile_):
    cfg = load_config("tiny-digits").override({"train.lr": lr, "train.steps": steps, "train.grad_clip": clip,
                                               "train.betas": [0.9, beta2], "data.kind": kind,
                                               "train.compile": compile_})
    assert Config.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_every_field_has_a_default_and_a_comment():
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        lines = inspect.getsource(cls).splitlines()
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING, f"{section.name}.{f.name} has no default"
            line = next(line for line in lines if line.strip().startswith(f"{f.name}:"))
            assert "#" in line, f"{section.name}.{f.name} has no comment"
