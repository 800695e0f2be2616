"""The analytic data kind, its presets, full_scale.verify and the GPU study's script, on the CPU (issue 18, parts 2–5):
the truth is rebuilt from config.yaml alone, the data follow the bed's law, and analytic-tiny trains and verifies end
to end in seconds."""
import json

import numpy as np
import pytest
import torch

from device_audit import DeviceAudit
from full_scale import checkpoint
from full_scale.config import load_config
from full_scale.data import build_dataset
from full_scale.data.analytic import analytic_bed, analytic_parameters
from full_scale.experiments import analytic_study
from full_scale.metrics import read_metrics
from full_scale.sample import load_run
from full_scale.train import train
from full_scale.verify import FlatJump, verify
from full_scale.verify import main as verify_main
from tvm_theory.param import NetworkJump

FAST = ["train.steps=6", "checkpoint.every=3", "log.every=3"]
VERIFY = dict(samples=32, nfe=[1, 2], pot_samples=32, n_projections=32, gelbrich_boot=3, n_boot=20,
              theorem_samples=4, points=3, lip_probes=2, lip_iters=3, sens_samples=2, sens_nodes=1, sens_rtol=1e-2,
              device="cpu")


def test_presets_state_the_mixture():
    big = load_config("analytic-256")
    m, d = big.model, big.data
    assert (m.in_channels, m.input_size) == (4, 32) and m.num_classes >= 100 and d.kind == "analytic"
    eig_max, floor = d.analytic_top_std**2 + d.analytic_noise_std**2, d.analytic_noise_std**2
    assert np.log10(eig_max / floor) >= 2  # covariance spectrum spans at least two decades
    assert d.analytic_mean_std * np.sqrt(2 * 4 * 32 * 32) > 10 * d.analytic_top_std  # separated classes
    assert load_config("analytic-tiny").data.kind == "analytic"


@pytest.mark.parametrize("key, value, match", [
    ("data.analytic_noise_std", 0.0, "data.analytic_noise_std"),
    ("data.analytic_rank", 0, "data.analytic_rank"),
    ("data.analytic_min_std", 5.0, "data.analytic_min_std"),
    ("data.analytic_mean_std", -1.0, "data.analytic_mean_std"),
])
def test_config_errors_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        load_config("analytic-tiny", [f"{key}={value}"])


def test_rank_above_dimension_is_an_error():
    cfg = load_config("analytic-tiny", ["data.analytic_rank=33"])
    with pytest.raises(ValueError, match="data.analytic_rank"):
        analytic_bed(cfg)


def test_truth_is_rebuilt_from_the_config_and_the_data_follow_it():
    cfg = load_config("analytic-tiny")
    a, b = analytic_parameters(cfg.data, (2, 4, 4), 4), analytic_parameters(cfg.data, (2, 4, 4), 4)
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3]))
    other = analytic_parameters(load_config("analytic-tiny", ["data.analytic_seed=1"]).data, (2, 4, 4), 4)
    assert not torch.equal(a[1], other[1])
    bed = analytic_bed(cfg)
    sv = bed.svals[0]
    assert float(sv.max()) == pytest.approx(1.0) and float(sv.min()) == pytest.approx(0.1)
    data = build_dataset(cfg)
    items = [data_item for _, data_item in zip(range(3000), data)]
    x = torch.stack([i[0] for i in items]).reshape(len(items), -1).double()
    y = torch.stack([i[1] for i in items])
    assert data.latent_shape == (2, 4, 4) and int(y.max()) < 4
    for k in range(4):
        xk = x[y == k]
        cov = bed.factors[k] @ bed.factors[k].T + bed.noise_std**2 * torch.eye(32, dtype=torch.float64)
        assert torch.allclose(xk.mean(0), bed.means[k], atol=6 * (1.0 / len(xk)) ** 0.5)
        assert torch.allclose(torch.cov(xk.T), cov, atol=0.25)


def test_flat_jump_is_the_network_jump():
    torch.manual_seed(0)
    from full_scale.model import DiT
    cfg = load_config("analytic-tiny")
    model = DiT(cfg.model.dit()).double().eval()
    lab = torch.tensor([1, 3])
    x = torch.randn(4, 32, dtype=torch.float64)  # two copies of the two rows: labels tile
    t, s = torch.full((4,), 0.9, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    flat = FlatJump(model, lab, 2.0)
    ref = NetworkJump(model, w=2.0, y=lab.repeat(2))
    f, dfds = flat.displacement_and_ds(x, t, s)
    f2, dfds2 = ref.displacement_and_ds(x.view(4, 2, 4, 4), t, s)
    assert torch.allclose(f, f2.reshape(4, -1)) and torch.allclose(dfds, dfds2.reshape(4, -1))
    assert torch.allclose(flat.velocity(x, s), ref.velocity(x.view(4, 2, 4, 4), s).reshape(4, -1))
    with pytest.raises(ValueError, match="multiple of 2"):
        flat.velocity(x[:3], s[:3])


def test_analytic_tiny_trains_and_verifies_end_to_end(tmp_path):
    run = tmp_path / "run"
    summary = train(load_config("analytic-tiny", FAST), run)
    assert summary["step"] == 6
    with DeviceAudit() as audit:  # what a GPU would refuse (a CPU tensor beside a CUDA one), found on the CPU
        report = verify(run, tmp_path / "verify", **VERIFY)
    assert audit.findings == {}, audit.findings
    on_disk = json.loads((tmp_path / "verify" / "verify.json").read_text())
    assert on_disk["schema"] == "full_scale.verify/1" and on_disk["complete"] and [c["step"] for c in on_disk["checkpoints"]] == [3, 6]
    assert report["bed"]["guidance"] == 2.0 and report["bed"]["exact_flow_ode_err"]["max"] < 1e-6
    for c in report["checkpoints"]:
        for n in ("1", "2"):
            s, th = c["nfe"][n]["sandwich"], c["nfe"][n]["theorem"]
            assert s["upper_minus_pot"] >= -1e-9  # W2_emp ≤ paired RMSE on the same pairs, exactly
            assert s["lower_mean"]["value"] <= s["upper"]["value"]
            assert th["n_steps"] == int(n) and len(th["profiles"]["A"]) == int(n)
            assert th["D_N"]["value"] > 0 and len(th["lipschitz"]["L_model"]) >= 3
            sens = th["sensitivity_directional"]
            assert sens["resolved"] == (sens["identity_rel"] <= 0.5)
    assert set(report["references"]) == {"gaussian_fit", "class_means"}
    for name in ("sandwich_vs_step.png", "sandwich_vs_nfe.png", "theorem_terms.png"):
        assert (tmp_path / "verify" / name).stat().st_size > 0
    # the model sampled by verify is the checkpoint's evaluation EMA on the recorded noise: a second run agrees
    again = verify(run, tmp_path / "again", **{**VERIFY, "theorem": "none", "figures": False}, steps_at=[6])
    assert again["checkpoints"][0]["nfe"]["1"]["sandwich"]["upper"] == \
        report["checkpoints"][1]["nfe"]["1"]["sandwich"]["upper"]
    model, _, _ = load_run(run, "eval_ema", None, "cpu")
    assert model.cfg.num_classes == report["bed"]["K"]


def test_verify_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        verify_main(["--help"])
    assert e.value.code == 0 and "--steps-at" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="--run"):
        verify_main(["--run", str(tmp_path), "--out", str(tmp_path / "o")])


def test_the_gpu_study_runs_at_tiny_size_over_two_calls(tmp_path):
    args = ["--out", str(tmp_path), "--preset", "analytic-tiny", "--variants", "guided", "--train-seconds", "2.5",
            "--checkpoints", "2", "--samples", "16", "--nfe", "1", "--theorem-samples", "2", "--sens-samples", "2",
            "--sens-nodes", "1", "--sens-rtol", "1e-2", "--lip-probes", "2", "--pot-samples", "16",
            "--set", "train.steps=100000"]
    first = analytic_study.main([*args, "--call-seconds", "0.6"])["variants"]["guided"]
    assert first["train_summary"]["stopped_by"] == "sigterm" and "rows" not in first  # the call ended, unverified
    assert 0.6 <= first["trained_s"] < 1.25 and first["status"].startswith("trained")
    clock = json.loads((tmp_path / "guided" / "clock.json").read_text())
    assert clock == {"trained_s": first["trained_s"], "budget_reached": False}
    after_first = checkpoint.latest(tmp_path / "guided" / "run")

    v = analytic_study.main(args)["variants"]["guided"]  # resumes the run and its clock, then verifies
    assert v["status"] == "verified" and v["train_summary"]["stopped_by"] == "sigterm"
    assert v["trained_s"] >= 2.5 and v["train_wall_s"] < 2.5 + 60  # the rest of the budget, not all of it again
    starts = [r for r in read_metrics(tmp_path / "guided" / "run") if r.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"] == str(after_first)
    steps = sorted({r["step"] for r in v["rows"]})  # the mark at 1.25 s, the first call's end, the budget's end
    assert len(steps) == 3 and steps[0] < steps[1] < steps[2]
    assert json.loads((tmp_path / "study.json").read_text())["variants"]["guided"]["rows"] == v["rows"]
    again = analytic_study.main(args)["variants"]["guided"]  # the budget was reached: no more training
    assert again["train_summary"] is None and again["rows"] == v["rows"]


def test_a_run_that_reaches_its_step_count_before_the_budget_is_verified(tmp_path):
    v = analytic_study.main(["--out", str(tmp_path), "--preset", "analytic-tiny", "--variants", "guided",
                             "--train-seconds", "3600", "--checkpoints", "1", "--samples", "16", "--nfe", "1",
                             "--theorem", "none", "--theorem-samples", "2", "--sens-samples", "2", "--lip-probes", "2",
                             "--pot-samples", "16", "--set", "train.steps=3", "--commit", "abc1234"])["variants"]["guided"]
    assert v["train_summary"]["stopped_by"] == "steps" and v["trained_s"] < 3600
    assert json.loads((tmp_path / "study.json").read_text())["commit"] == "abc1234"
    assert v["status"] == "verified" and {r["step"] for r in v["rows"]} == {3}


def test_verification_noise_is_independent_of_the_mixture():
    """The verifier's noise stream and the parameters' stream differ even when --seed equals data.analytic_seed (a
    plain manual_seed for both made x1_i = 2 m_i)."""
    from full_scale.verify import stream
    cfg = load_config("analytic-256")
    _, means, _, _ = analytic_parameters(cfg.data, (4, 32, 32), 100)
    x1 = torch.randn(32, 4096, generator=stream(cfg.data.analytic_seed, "noise"), dtype=torch.float64)
    cos = (x1 @ means.T) / (x1.norm(dim=1, keepdim=True) * means.norm(dim=1))
    assert float(cos.abs().max()) < 0.1


def test_a_bound_far_above_the_sandwich_is_marked_at_the_edge_not_stretching_the_axis():
    """plots._draw: (a)_N of 2.7e18 (the unguided study's, with a local L of ~50) stays off the axis, written beside
    its marker at the top edge, while a value within OFF_SCALE of the distances is drawn where it is."""
    import matplotlib.pyplot as plt

    from full_scale.verify import plots

    def entry(upper, bound_a):
        v = {"value": upper, "lo": upper - 0.1, "hi": upper + 0.1}
        return {"sandwich": {"upper": v, "pot": upper - 5, "sliced": {"value": 0.2},
                             "lower_gelbrich": {"value": upper - 10}, "lower_mean": {"value": 3.0}},
                "theorem": {"bounds": {"bound_a": {"value": bound_a}},
                            "sensitivity_directional": {"bound": 20.0, "identity_rel": 0.1}}}

    report = {"floors": {"pot_floor": 23.0, "sliced_floor": {"value": 0.04}, "gelbrich_floor": {"value": 8.8}},
              "references": {"gaussian_fit": {"upper": {"value": 38.6}}, "class_means": {"upper": {"value": 32.2}}}}
    fig, ax = plt.subplots()
    plots._draw(ax, [1, 2], [entry(36.0, 2.7e18), entry(37.0, 400.0)], report)
    bottom, top = ax.get_ylim()
    assert 400.0 < top < plots.OFF_SCALE * 38.6  # the in-range bound is inside, the huge one does not set the scale
    assert [a.get_text() for a in ax.texts] == ["2.7e+18"]
    line = next(l for l in ax.get_lines() if l.get_label().startswith("(a)_N"))
    assert "above the axis" in line.get_label() and line.get_ydata()[0] < top and line.get_ydata()[1] == 400.0
    plt.close(fig)


def test_an_unresolved_sensitivity_integral_is_left_out_of_figures_and_rows():
    """The unguided study's sensitivity integral missed its own identity by 109-122% and fell below D_N, which the
    exact inequality forbids: resolved_sensitivity drops it (and only it), the figure does not draw it, the study's
    row says None beside the residual."""
    import matplotlib.pyplot as plt

    from full_scale.verify import SENS_IDENTITY_MAX, plots, resolved_sensitivity

    def theorem(identity_rel):
        return {"bounds": {"bound_a": {"value": 50.0}},
                "sensitivity_directional": {"bound": 27.7, "identity_rel": identity_rel}}

    assert resolved_sensitivity(theorem(0.33)) == 27.7
    assert resolved_sensitivity(theorem(SENS_IDENTITY_MAX)) == 27.7
    assert resolved_sensitivity(theorem(1.22)) is None
    v = {"value": 36.0, "lo": 35.9, "hi": 36.1}
    sandwich = {"upper": v, "pot": 29.2, "sliced": {"value": 0.2}, "lower_gelbrich": {"value": 22.0},
                "lower_mean": {"value": 3.9}}
    entries = [{"sandwich": sandwich, "theorem": theorem(0.02)}, {"sandwich": sandwich, "theorem": theorem(1.22)}]
    report = {"floors": {"pot_floor": 23.0, "sliced_floor": {"value": 0.04}, "gelbrich_floor": {"value": 8.8}},
              "references": {"gaussian_fit": {"upper": {"value": 38.6}}, "class_means": {"upper": {"value": 32.2}}},
              "checkpoints": [{"step": 10, "nfe": {"1": entries[0], "2": entries[1]}}]}
    fig, ax = plt.subplots()
    plots._draw(ax, [1, 2], entries, report)
    line = next(l for l in ax.get_lines() if l.get_label().startswith("sensitivity"))
    assert line.get_ydata()[0] == 27.7 and np.isnan(line.get_ydata()[1])
    assert "class means (upper)" in [l.get_label() for l in ax.get_lines()]  # no "bed": labelled as before
    plt.close(fig)
    fig, ax = plt.subplots()
    plots._draw(ax, [1, 2], entries, {**report, "bed": {"labels": None}})  # unconditional: the reference is p0's mean
    assert "data mean (upper)" in [l.get_label() for l in ax.get_lines()]
    plt.close(fig)
    rows = analytic_study.summarize(report)
    assert [r["sensitivity_directional"] for r in rows] == [27.7, None]
    assert [r["sensitivity_identity_rel"] for r in rows] == [0.02, 1.22]
