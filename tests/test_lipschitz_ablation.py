"""The Lipschitz-ablation driver (issue 8): a tiny end-to-end run, its statistics, and the patches data set."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from full_scale.data import patches
from full_scale.experiments import ablation_report, lipschitz_ablation as la


def test_smoke_run_two_variants_one_seed(tmp_path):
    out = tmp_path / "study"
    report = la.main(["--out", str(out), "--seeds", "1", "--datasets", "digits", "--variants", "all_on", "vanilla",
                      "--steps", "2", "--toy-steps", "0", "--figures-dir", str(tmp_path / "figs")])
    runs = report["runs"]
    assert [(r["variant"], r["status"]) for r in runs] == [("all_on", "ok"), ("vanilla", "ok")]
    for r in runs:
        assert [p["step"] for p in r["probes"]] == [2]  # checkpoint.every = min(probe_every, steps)
        assert all(math.isfinite(v) for v in r["probes"][0].values())
        assert r["training"]["steps_logged"] == 2 and r["training"]["nonfinite_steps"] == 0
        assert set(r["quality"]) == {"1step", "2step"} and r["quality"]["1step"]["n"] == 300
    on, off = (r["model_config"] for r in runs)
    assert all(on[k] for k in la.LIPSCHITZ_SWITCHES) and not any(off[k] for k in la.LIPSCHITZ_SWITCHES)
    # mod_norm on: a row's RMS is |h| / sqrt(|h|² + ε) ≤ 1 — near 1 where Adam has moved the adaLN-Zero weights
    # (the gates after step 1), 0 where it has not yet (shift and scale get no gradient while the gates are 0)
    mod = [v for k, v in runs[0]["probes"][0].items() if k.startswith("rms_max/") and "modulation" in k]
    assert len(mod) == 2 * 6 + 2 and all(v <= 1.0 + 1e-6 for v in mod) and max(mod) > 0.5
    saved = json.loads((out / "ablation.json").read_text())
    assert set(saved["summary"]["digits"]) == {"all_on", "vanilla"}
    assert saved["toy"]["mlp"]["log10_certified_over_local"] >= 0.0  # certified ≥ local (docs/THEORY.md §6)
    table = (out / "LIPSCHITZ.md").read_text()
    assert "| all_on |" in table and "| vanilla |" in table
    for name in ("lipschitz_training.png", "lipschitz_gradnorm.png", "lipschitz_quality.png"):
        assert (out / name).stat().st_size > 0 and (tmp_path / "figs" / name).exists()
    # A finished run is reused instead of trained again.
    stamp = (out / "runs/digits/all_on/seed0/result.json").stat().st_mtime_ns
    spec = la.run_specs(out, "small", ["digits"], ["all_on"], 1, 2, 1)[0]
    assert json.dumps(la.run_one(spec)) == json.dumps(runs[0])
    assert (out / "runs/digits/all_on/seed0/result.json").stat().st_mtime_ns == stamp
    # --report-only aggregates finished runs and trains nothing (the missing seed 1 is simply absent).
    again = la.main(["--out", str(out), "--seeds", "2", "--datasets", "digits", "--variants", "all_on", "vanilla",
                     "--steps", "2", "--toy-steps", "0", "--report-only"])
    assert again["meta"]["runs_finished"] == 2 and again["meta"]["runs_planned"] == 4
    assert not (out / "runs/digits/all_on/seed1").exists()


def test_run_config_switches_each_change_and_is_accepted_by_the_trainer_config():
    budget = la.BUDGETS["small"]
    for variant, (switches, train_over) in la.VARIANTS.items():
        cfg = la.run_config("patches", variant, 3, budget, steps=7)
        mcfg = cfg.model.dit()
        assert {k: getattr(mcfg, k) for k in switches} == switches
        assert mcfg.num_classes == patches.NUM_CLASSES and cfg.data.kind == "patches"
        assert cfg.train.seed == 3 and cfg.train.steps == 7
        assert list(cfg.train.betas) == train_over.get("betas", la.RECIPE["train"]["betas"])
        assert cfg.guidance.weight == la.GUIDANCE_WEIGHT and mcfg.time_scale == la.RECIPE["model"]["time_scale"]
    assert la.VARIANTS["no_spectral_init"][0]["spectral_init_time"] is False
    with pytest.raises(ValueError, match="variant"):
        la.run_config("digits", "no_such_change", 0, budget)


def test_grad_spikes_flags_exactly_the_steps_above_five_running_medians():
    g = [1.0] * 100
    g[60], g[61], g[80], g[10] = 10.0, 4.9, float("nan"), 50.0  # index 10 is inside the warm-up
    assert la.grad_spikes(g) == [60]
    assert la.grad_spikes([]) == []


def test_welch_and_holm_against_scipy_and_the_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 5).tolist(), rng.normal(1, 2, 4).tolist()
    assert ablation_report.welch(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert math.isnan(ablation_report.welch([1.0], b))
    adj = ablation_report.holm({"x": 0.01, "y": 0.04, "z": 0.03, "n": math.nan})
    assert adj["x"] == pytest.approx(0.03) and adj["z"] == pytest.approx(0.06) and adj["y"] == pytest.approx(0.06)
    assert math.isnan(adj["n"])
    m = ablation_report.mean_se([1.0, 2.0, 3.0, math.nan])
    assert m["n"] == 3 and m["mean"] == pytest.approx(2.0) and m["se"] == pytest.approx(1 / math.sqrt(3))


def test_patches_are_a_disjoint_balanced_split_in_range():
    x, y = patches.all_patches()
    assert x.shape == (2080, 1, 8, 8) and torch.equal(y.bincount(), torch.tensor([1040, 1040]))
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    train_x, train_y = patches.load_split("train")
    held_x, held_y = patches.load_split("held_out")
    assert len(train_y) + len(held_y) == 2080
    assert torch.equal(held_y.bincount(), torch.tensor([150, 150]))
    train_rows = {tuple(r) for r in train_x.flatten(1).tolist()}
    assert not any(tuple(r) in train_rows for r in held_x.flatten(1).tolist())
    ds = patches.PatchesDataset(rank=1, world_size=2, seed=0)
    assert len(ds) == len(train_y) // 2 and ds.latent_shape == (1, 8, 8) and ds.num_classes == 2
    scores = patches.evaluate(held_x)
    assert scores["w2"] == pytest.approx(0.0, abs=1e-6) and scores["frechet"] == pytest.approx(0.0, abs=1e-8)
    assert scores["w2_floor"] > 0.1 and patches.evaluate(held_x + 0.5)["w2"] == pytest.approx(0.5 * 8, rel=1e-6)
