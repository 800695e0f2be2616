"""The one-step baselines (MeanFlow, flow matching) against independent float64 computations (issue 9).

MeanFlow's target is recomputed with central finite differences of the total derivative along the path,
d/dt F(x_t, t, s) ≈ [F(x_t + h v, t + h, s) − F(x_t − h v, t − h, s)] / 2h, instead of a JVP; its gradient with the
target and the adaptive weight held constant. Flow matching is recomputed from its definition.
"""
import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from toy.models import MLP
from tvm_theory.baselines import (OBJECTIVES, EulerJump, FlowMatchingSampler, MeanFlowSampler, fm_step_loss,
                                  jump_model, make_objective, meanflow_step_loss)
from tvm_theory.loss import CFGConfig, tvm_step_loss
from tvm_theory.param import NetworkJump
from tvm_theory.sampling import sample_few_step
from tvm_theory.time_samplers import GapSampler, TimeSample


pytestmark = pytest.mark.usefixtures("float64")


def _setup(seed, dim, n):
    torch.manual_seed(seed)
    F = MLP(dim, 10, 2, 4, max_freq=3.0)  # low frequencies keep the O(h²) finite-difference error ≈ 1e-10
    x0, x1 = torch.randn(n, dim), torch.randn(n, dim)
    ts = MeanFlowSampler(fm_share=0.3)(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F, x0, x1, ts


def _meanflow_reference(F, x0, x1, ts, p, c, h=1e-5):
    """Independent MeanFlow loss: finite-difference total derivative, constant target and weight."""
    t, s = ts.t, ts.s
    v = x1 - x0
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    with torch.no_grad():
        dF_dt = (F(x_t + h * v, t + h, s) - F(x_t - h * v, t - h, s)) / (2 * h)
        target = v - (t - s)[:, None] * dF_dt
    delta = F(x_t, t, s) - target
    weight = ((delta.detach() ** 2).sum(1) + c) ** (-p)
    per = weight * (delta**2).mean(1)
    return per.mean(), per


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(1, 3), n=st.integers(2, 8), p=st.sampled_from([0.0, 0.5, 1.0]))
def test_meanflow_loss_and_gradients_match_finite_difference_reference(seed, dim, n, p):
    F, x0, x1, ts = _setup(seed, dim, n)
    ours = meanflow_step_loss(F, None, x0, ts, x1=x1, adaptive_p=p)
    ref, per = _meanflow_reference(F, x0, x1, ts, p, 1e-3)
    torch.testing.assert_close(ours.loss, ref, rtol=1e-7, atol=1e-12)
    active = (ts.s < ts.t).double()
    torch.testing.assert_close(ours.terminal_per_example, (active * per).detach(), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(ours.fm_per_example, ((1 - active) * per).detach(), rtol=1e-7, atol=1e-12)
    g_ours = _flat_grad(ours.loss, F)
    g_ref = _flat_grad(ref, F)
    assert float((g_ours - g_ref).norm()) <= 1e-6 * float(g_ref.norm())  # central differences: O(h²) ≈ 1e-10


def _flat_grad(loss, F, **kw):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(F.parameters()), **kw)])


def test_meanflow_gradient_stops_at_target_and_weight():
    """Letting the gradient through the target or the adaptive weight changes it: the check above is sensitive."""
    F, x0, x1, ts = _setup(3, 2, 16)
    ours = meanflow_step_loss(F, None, x0, ts, x1=x1, adaptive_p=1.0)
    g_ours = _flat_grad(ours.loss, F)
    t, s, v = ts.t, ts.s, x1 - x0
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    F_val, dF_dt = torch.func.jvp(lambda x, tt: F(x, tt, s), (x_t, t), (v, torch.ones_like(t)))
    for target_grad, weight_grad in ((True, False), (False, True)):
        target = v - (t - s)[:, None] * dF_dt
        delta = F_val - (target if target_grad else target.detach())
        e = (delta**2).sum(1)
        weight = (e + 1e-3) ** -1.0 if weight_grad else (e.detach() + 1e-3) ** -1.0
        loss = (weight * (delta**2).mean(1)).mean()
        g = _flat_grad(loss, F, retain_graph=True)
        assert (g - g_ours).norm() > 1e-3 * g_ours.norm()


def test_meanflow_at_s_equal_t_is_flow_matching():
    """At s = t the MeanFlow target is v, so with p = 0 the loss is the flow-matching loss at that time."""
    F, x0, x1, _ = _setup(5, 2, 12)
    t = torch.rand(12)
    same = TimeSample(t=t, s=t, s_fm=t)
    mf = meanflow_step_loss(F, None, x0, same, x1=x1, adaptive_p=0.0)
    fm = fm_step_loss(F, None, x0, same, x1=x1)
    torch.testing.assert_close(mf.loss, fm.loss, rtol=1e-12, atol=0)
    assert float(mf.terminal) == 0.0



def _exact_average_velocity(mu, sigma0):
    """F*(x, t, s) = (ψ(x, t, s) − x)/(s − t) for p0 = N(μ, σ0²) in 1-D (docs/THEORY.md §7), and u(x, t) at s = t:
    ψ(x, t, s) = m(s) + σ(s)/σ(t) (x − m(t)), m(t) = (1 − t)μ, σ(t)² = (1 − t)²σ0² + t²."""
    def m(t):
        return (1 - t) * mu

    def sd(t):
        return ((1 - t) ** 2 * sigma0**2 + t**2).sqrt()

    def F_star(x, t, s):
        t, s = t[:, None], s[:, None]
        gap = torch.where(s < t, s - t, torch.ones_like(t))
        jump = (m(s) + sd(s) / sd(t) * (x - m(t)) - x) / gap
        u = -mu + (t - (1 - t) * sigma0**2) / sd(t) ** 2 * (x - m(t))
        return torch.where(s < t, jump, u)

    return F_star


@pytest.mark.parametrize("offset, stationary", [(0.0, True), (0.1, False)])
def test_exact_average_velocity_is_meanflow_stationary_point(offset, stationary):
    """On a Gaussian, the exact average velocity F* (closed form) makes the MeanFlow gradient vanish in every
    direction g (E[Δ g] = 0: the conditional target averages to F*), up to Monte Carlo error; F* + 0.1 does not."""
    mu, sigma0 = 1.0, 0.5
    F_star = _exact_average_velocity(mu, sigma0)
    theta = torch.zeros(4, requires_grad=True)

    def F(x, t, s):
        g = torch.stack([torch.ones_like(t), x[:, 0], t, s * x[:, 0]], 1)
        return F_star(x, t, s) + offset + (g @ theta)[:, None]

    gen = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(20):
        n = 2000
        ts = MeanFlowSampler(fm_share=0.5)(n, generator=gen, dtype=torch.float64)
        x0 = mu + sigma0 * torch.randn(n, 1, generator=gen)
        x1 = torch.randn(n, 1, generator=gen)
        loss = meanflow_step_loss(F, None, x0, ts, x1=x1, adaptive_p=0.0).loss
        grads.append(torch.autograd.grad(loss, theta)[0])
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / math.sqrt(len(grads))
    if stationary:
        assert bool((mean.abs() < 5 * se).all()), (mean, se)
    else:
        assert float(mean[0]) > 10 * float(se[0])  # d/dθ_1 = 2·E[Δ] = 2 · 0.1
        torch.testing.assert_close(mean[0], torch.tensor(0.2), rtol=0, atol=5 * float(se[0]))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(1, 3), n=st.integers(2, 8))
def test_fm_loss_and_gradients_match_definition(seed, dim, n):
    torch.manual_seed(seed)
    F = MLP(dim, 10, 2, 4)
    x0, x1 = torch.randn(n, dim), torch.randn(n, dim)
    ts = FlowMatchingSampler()(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ours = fm_step_loss(F, None, x0, ts, x1=x1)
    r = ts.s_fm
    per = ((F((1 - r)[:, None] * x0 + r[:, None] * x1, r, r) - (x1 - x0)) ** 2).mean(1)
    torch.testing.assert_close(ours.loss, per.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.fm_per_example, per.detach(), rtol=1e-12, atol=0)
    assert float(ours.terminal) == 0.0 and not bool(ours.terminal_per_example.any())
    for a, b in zip(torch.autograd.grad(ours.loss, list(F.parameters())),
                    torch.autograd.grad(per.mean(), list(F.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_meanflow_sampler_statistics():
    """s ≤ t; P(s = t) = fm_share; t = max of two logit-normal draws, so P(t ≤ q) = Φ((logit q − m)/σ)²."""
    n, share = 40_000, 0.75
    ts = MeanFlowSampler(fm_share=share)(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert bool((ts.s <= ts.t).all())
    eq = float((ts.s == ts.t).double().mean())
    assert abs(eq - share) < 5 * math.sqrt(share * (1 - share) / n)
    for q in (0.2, 0.5, 0.8):
        p = float(torch.special.ndtr(torch.tensor((math.log(q / (1 - q)) + 0.4) / 1.0))) ** 2
        emp = float((ts.t <= q).double().mean())
        assert abs(emp - p) < 5 * math.sqrt(p * (1 - p) / n)
    with pytest.raises(ValueError, match="fm_share"):
        MeanFlowSampler(fm_share=1.5)


def test_flow_matching_sampler_is_logit_normal():
    n = 40_000
    ts = FlowMatchingSampler()(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(ts.t, ts.s) and torch.equal(ts.s, ts.s_fm)
    z = torch.logit(ts.s_fm)
    assert abs(float(z.mean()) + 0.4) < 5 / math.sqrt(n)
    assert abs(float(z.std()) - 1.0) < 5 / math.sqrt(2 * n)


def test_euler_jump_is_the_euler_solver():
    """With EulerJump, sample_few_step runs x ← x + (t_{k+1} − t_k) u_θ(x, t_k); ∂_s f = u_θ(x, t)."""
    torch.manual_seed(0)
    F = MLP(2, 10, 2, 4)
    x1 = torch.randn(7, 2)
    x = x1.clone()
    grid = torch.linspace(1, 0, 4, dtype=torch.float64)
    for a, b in zip(grid[:-1], grid[1:]):
        x = x + (b - a) * F(x, a.expand(7), a.expand(7))
    torch.testing.assert_close(sample_few_step(EulerJump(F), x1, 3), x, rtol=1e-12, atol=1e-14)
    t, s, h = torch.full((7,), 0.7), torch.full((7,), 0.3), 1e-6
    jump = EulerJump(F)
    _, dfds = jump.displacement_and_ds(x1, t, s)
    fd = (jump.displacement(x1, t, s + h) - jump.displacement(x1, t, s - h)) / (2 * h)
    torch.testing.assert_close(dfds, fd, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(jump.velocity(x1, s), F(x1, s, s))


def test_registry_and_errors():
    assert OBJECTIVES["tvm"] is tvm_step_loss
    for name in OBJECTIVES:
        loss, sampler = make_objective(name)
        assert loss is OBJECTIVES[name]
        ts = sampler(4, generator=torch.Generator().manual_seed(0))
        assert bool((ts.s <= ts.t).all())
    assert isinstance(make_objective("tvm", "gap")[1], GapSampler)
    F = MLP(2, 8, 1, 4)
    assert isinstance(jump_model("meanflow", F), NetworkJump) and isinstance(jump_model("fm", F), EulerJump)
    with pytest.raises(ValueError, match="objective"):
        make_objective("consistency")
    with pytest.raises(ValueError, match="objective"):
        jump_model("consistency", F)
    x0, ts = torch.randn(3, 2), FlowMatchingSampler()(3)
    for fn in (meanflow_step_loss, fm_step_loss):
        with pytest.raises(ValueError, match="TVM objective only"):
            fn(F, None, x0, ts, y=torch.zeros(3, dtype=torch.long), cfg=CFGConfig(null_class=0))
    with pytest.raises(ValueError, match="adaptive_p"):
        meanflow_step_loss(F, None, x0, ts, adaptive_p=-1.0)


# ---- the comparison command (toy/compare.py) through the trainer's ``objective`` hook --------------------------
def test_compare_short_run_recomputes_independently(tmp_path):
    """A tiny `compare` run: its W2 floor equals the exact assignment-problem W2 (scipy, independent of POT), its
    RMSE equals the distance of the saved one-step samples to ψ, and the table, verdicts and figures exist."""
    from scipy.optimize import linear_sum_assignment
    from safetensors.torch import load_file

    from toy.__main__ import main as toy_main

    torch.set_default_dtype(torch.float32)  # the trainer works in float32
    assert toy_main(["compare", "--out", str(tmp_path), "--testbeds", "gaussian-2d", "--seeds", "2", "--steps", "3",
                         "--hidden", "8", "--batch", "16", "--n-eval", "64"]) == 0
    res = json.loads((tmp_path / "compare.json").read_text())
    bed = res["testbeds"]["gaussian-2d"]
    assert set(bed["methods"]) == {"tvm", "tvm-sg", "meanflow", "fm"}
    assert set(bed["methods"]["fm"]["steps"]) == {"1", "2", "4", "100"}
    assert set(bed["verdicts"]) == {"tvm-sg", "meanflow", "fm", "fm-100"}
    tvm1 = bed["methods"]["tvm"]["steps"]["1"]["w2"]["values"]
    fm100 = bed["methods"]["fm"]["steps"]["100"]["w2"]["values"]
    assert math.isclose(bed["verdicts"]["fm-100"]["1"]["w2"]["diff"], sum(a - b for a, b in zip(tvm1, fm100)) / 2)
    for seed in range(2):
        d = load_file(str(tmp_path / "eval" / f"gaussian-2d_seed{seed}_n64_tol1e-06.safetensors"))
        cost = torch.cdist(d["x_other"], d["x_test"]).pow(2).numpy()
        rows, cols = linear_sum_assignment(cost)
        assert math.isclose(bed["floor_w2"]["values"][seed], math.sqrt(cost[rows, cols].mean()), rel_tol=1e-9)
        for m in bed["methods"]:
            x = load_file(str(tmp_path / "runs" / "gaussian-2d" / m / f"seed{seed}" / "samples_1step.safetensors"))["x"]
            rmse = float((x.double() - d["psi"]).pow(2).sum(1).mean().sqrt())
            assert math.isclose(bed["methods"][m]["steps"]["1"]["rmse"]["values"][seed], rmse, rel_tol=1e-9)
    md = (tmp_path / "compare.md").read_text()
    assert "| TVM (EMA 0.99) |" in md and "python -m toy compare" in md
    assert (tmp_path / "compare.png").stat().st_size > 0 and (tmp_path / "samples.png").stat().st_size > 0


def test_trainer_objective_hook(tmp_path):
    """toy.train's ``objective`` selects the step loss and its time sampler; an unknown name is refused."""
    from toy.train import TrainConfig, train

    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="consistency")
    torch.set_default_dtype(torch.float32)
    for name in OBJECTIVES:
        cfg = TrainConfig(testbed="gaussian-2d", steps=2, hidden=8, batch=8, objective=name)
        assert train(cfg, tmp_path / name, resume=False, progress=False).step == 2
        last = json.loads((tmp_path / name / "train.jsonl").read_text().splitlines()[-1])
        assert math.isfinite(last["loss"]) and math.isfinite(last["terminal"])
        assert name != "fm" or last["terminal"] == 0.0


def test_paired_verdict():
    from toy.compare import paired_verdict

    assert paired_verdict([1.0, 1.1, 0.9], [2.0, 2.2, 1.9])["verdict"] == "win"
    assert paired_verdict([2.0, 2.2, 1.9], [1.0, 1.1, 0.9])["verdict"] == "loss"
    v = paired_verdict([1.0, 2.0, 3.0], [1.5, 1.5, 3.1])
    assert v["verdict"] == "tie" and math.isclose(v["diff"], (-0.5 + 0.5 - 0.1) / 3)
    assert paired_verdict([1.0], [2.0])["verdict"] == "tie"  # one seed: no interval
