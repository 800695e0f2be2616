"""The few-step bound calculator (tvm_theory.analysis.fewstep; docs/THEORY.md §10, proofs/README.md §9).

Exact references: affine models on Gaussian beds keep every law Gaussian (exact W2, D_N, A_N, B); an independent
mpmath implementation of the same closed forms (proofs/_fewstep_example.py); the one-step calculator at N = 1.
"""
import math

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from proofs import _fewstep_example as fx
from tvm_theory.analysis.bounds import exact_affine_report, make_grid
from tvm_theory.analysis.fewstep import (check_time_grid, exact_affine_few_step, few_step_report,
                                         few_step_sensitivity, fewstep_log_bounds, uniform_grid)
from tvm_theory.analysis.testbeds import AffineJump, BiasedFlowJump, Gaussian, PolynomialAffineJump
from tvm_theory.sampling import sample_few_step


class FlowPlusEps(AffineJump):
    """f_θ(x, t, s) = ψ(x, t, s) − x + ε(t − s)x on a centred Gaussian, so u_θ = (κ − ε)x (proofs/_fewstep_example)."""

    def __init__(self, bed, eps):
        self.bed, self.eps, self.dim = bed, eps, bed.dim

    def jump_coefficients(self, t, s):
        ratio = self.bed.sigma(s) / self.bed.sigma(t)
        zero = torch.zeros(len(s), self.dim, dtype=torch.float64)
        return ratio + self.eps * (t - s), zero, self.bed.kappa(s) * ratio - self.eps, zero

    def velocity_coefficients(self, s):
        return self.bed.kappa(s) - self.eps, torch.zeros(len(s), self.dim, dtype=torch.float64)


def test_grid_validation():
    assert uniform_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    for bad in ([1.0], [1.0, 0.5], [0.9, 0.0], [1.0, 0.5, 0.6, 0.0]):
        with pytest.raises(ValueError):
            check_time_grid(bad)


def test_one_step_reduces_to_the_one_step_theorem():
    """N = 1: the few-step (a), (b) are the one-step (a), (b) at t = 1 (two code paths, the same quantity)."""
    bed = Gaussian([1.0, -1.0], 0.5)
    m = PolynomialAffineJump([0.3, -0.2, 0.1], [[0.1, 0.2], [0.0, -0.1], [0.05, 0.0]], [-0.5, 0.8],
                             [[0.1, 0.0], [0.0, 0.2]])
    few = exact_affine_few_step(m, bed, 1, points=257)
    one = exact_affine_report(m, bed, 1.0, s_grid=make_grid(1.0, 257))
    for name in ("bound_a", "bound_b", "core", "Lambda"):
        assert few.bounds[name].value == pytest.approx(one.bounds[name].value, rel=1e-12), name
    assert few.D.value == pytest.approx(one.D.value, rel=1e-12)
    assert few.w2.value == pytest.approx(one.w2.value, rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("sig0", [1.0, 3.0])
def test_exact_calculator_matches_the_independent_mpmath_closed_forms(n, sig0):
    bed = Gaussian([0.0], sig0)
    rep = exact_affine_few_step(FlowPlusEps(bed, 0.2), bed, n, points=1025)
    mp.mp.dps = 15
    m, grid = fx.Model("flow_eps", 0.2, sig0), [mp.mpf(n - i) / n for i in range(n + 1)]
    assert rep.w2.value == pytest.approx(float(fx.w2_exact(m, grid)), rel=1e-10)
    assert rep.E == pytest.approx([float(e) for e in fx.node_errors(m, grid)], rel=1e-10, abs=1e-14)
    ref = float(fx.bound_a(m, grid)[0])
    assert abs(rep.bounds["bound_a"].value - ref) <= 2 * rep.bounds["bound_a"].quad + 1e-6 * ref
    assert abs(rep.bounds["bound_b"].value - float(fx.bound_b(m, grid))) <= 2 * rep.bounds["bound_b"].quad + 1e-5
    ref_v = float(fx.bound_jump_lipschitz(m, grid)[0])
    assert abs(rep.bounds["bound_v"].value - ref_v) <= 2 * rep.bounds["bound_v"].quad + 1e-6 * ref_v


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 5), dim=st.sampled_from([1, 2]), std=st.floats(0.3, 3.0))
def test_exact_chain_holds_for_random_affine_models(seed, n, dim, std):
    g = np.random.default_rng(seed)
    bed = Gaussian(g.normal(size=dim).tolist(), std)
    m = PolynomialAffineJump(g.normal(scale=0.5, size=3), g.normal(scale=0.3, size=(3, dim)),
                             g.normal(scale=0.7, size=2), g.normal(scale=0.3, size=(2, dim)))
    rep = exact_affine_few_step(m, bed, n, points=129)
    assert rep.w2.value <= rep.D.value * (1 + 1e-12) + 1e-14
    for claim in ("D_N<=(a)_N", "D_N^2<=(b)_N", "D_N<=(v)_N"):
        assert rep.comparisons[claim].verdict != "violated", rep.comparisons[claim].to_dict()
    # the recursion's node bounds, and its unrolled value equals the direct integral
    for e, lb in zip(rep.E[1:], rep.log_E_bound[1:]):
        assert e <= math.exp(lb) * (1 + 1e-9) + 2 * rep.bounds["bound_a"].quad
    assert rep.bounds["recursion_a"].value == pytest.approx(rep.bounds["bound_a"].value, rel=1e-10)


def test_exact_flow_with_a_bias_gives_the_same_law_and_bound_for_every_grid():
    """u_θ = u + r with f_θ its exact flow: the jumps compose (semigroup), A_N ≡ 0, so W2 and (a)_N = r√D Λ_1 do
    not depend on N; σ0 = 3 makes (a) nearly tight (κ ≤ 0 on [0, 0.9])."""
    bed = Gaussian([0.0, 0.0], 3.0)
    m = BiasedFlowJump(bed, 0.1)
    reps = [exact_affine_few_step(m, bed, n, points=257) for n in (1, 2, 4)]
    for r in reps[1:]:
        assert r.w2.value == pytest.approx(reps[0].w2.value, rel=1e-10)
        assert r.bounds["bound_a"].value == pytest.approx(reps[0].bounds["bound_a"].value, rel=1e-5)
    lam = reps[0].bounds["Lambda"].value
    assert reps[0].bounds["bound_a"].value == pytest.approx(0.1 * math.sqrt(2) * lam, rel=1e-10)
    assert reps[0].bounds["bound_a"].value / reps[0].w2.value < 1.02


def test_planted_error_is_detected():
    """Dropping the transport factor (L = 0) makes the bound fall below the true error: the check can fail."""
    bed = Gaussian([0.0], 3.0)
    rep = exact_affine_few_step(BiasedFlowJump(bed, 0.1), bed, 2, points=129, L=0.0)
    assert rep.comparisons["D_N<=(a)_N"].verdict == "violated"


def test_log_space_bound_survives_huge_constants():
    pieces = [np.linspace(0.5, 1.0, 5), np.linspace(0.0, 0.5, 5)]
    A = [np.full(5, 1e-4), np.full(5, 1e-4)]
    B = [np.full(5, 1e-2), np.full(5, 1e-2)]
    L = [np.full(5, 3000.0), np.full(5, 3000.0)]
    out = fewstep_log_bounds(pieces, A, B, L)
    assert np.isfinite(out["bound_a"]) and out["bound_a"] / math.log(10) > 1000
    assert out["recursion_a"] == pytest.approx(out["bound_a"], rel=1e-12)


def test_monte_carlo_report_agrees_with_the_exact_one():
    bed = Gaussian([1.0, -1.0], 0.5)
    m = PolynomialAffineJump([0.3, -0.2, 0.1], [[0.1, 0.2], [0.0, -0.1], [0.05, 0.0]], [-0.5, 0.8],
                             [[0.1, 0.0], [0.0, 0.2]])
    x1 = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_affine_few_step(m, bed, 2, points=257)
    jl = lambda t, s: abs(float(m.jump_coefficients(torch.tensor([t]), torch.tensor([s]))[0]))  # noqa: E731
    mc = few_step_report(m, bed, 2, L=lambda s: m.lipschitz(s).numpy(), x1=x1, points=33, n_boot=50,
                         generator=torch.Generator().manual_seed(1), jump_lipschitz=jl)
    paired = float((sample_few_step(m, x1, 2) - bed.flow(x1, 1.0, 0.0)).pow(2).sum(1).mean().sqrt())
    assert mc.D.value == pytest.approx(paired, rel=1e-12)  # the report's sampler is the project's sampler
    assert abs(mc.D.value - exact.D.value) <= 4 * mc.D.se
    b = mc.bounds["bound_a"]
    assert abs(b.value - exact.bounds["bound_a"].value) <= 4 * b.se + 2 * b.quad + exact.bounds["bound_a"].quad
    assert mc.comparisons["D_N<=(a)_N"].verdict == "holds"
    v = mc.bounds["bound_v"]
    assert abs(v.value - exact.bounds["bound_v"].value) <= 4 * v.se + 2 * v.quad + exact.bounds["bound_v"].quad
    assert mc.comparisons["D_N<=(v)_N"].verdict == "holds"
    assert mc.w2.value <= mc.D.value * (1 + 1e-9)


def test_sensitivity_identity_along_the_concatenated_path():
    bed = Gaussian([1.0, -1.0], 0.5)
    m = PolynomialAffineJump([0.3, -0.2, 0.1], [[0.1, 0.2], [0.0, -0.1], [0.05, 0.0]], [-0.5, 0.8],
                             [[0.1, 0.0], [0.0, 0.2]])
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z0 = bed.flow(x1, 1.0, 0.0)
    for n in (1, 3):
        sens = few_step_sensitivity(m, bed.velocity, x1, uniform_grid(n), z0, n_nodes=8, ode_steps=24)
        assert sens.identity_rel < 1e-6
        assert sens.bound >= sens.paired_rmse - sens.quad_err - sens.ode_err
        assert sens.bound_directional <= sens.bound * (1 + 1e-12)
    # planted: a wrong reference (z0 shifted) breaks the identity
    bad = few_step_sensitivity(m, bed.velocity, x1, uniform_grid(2), z0 + 0.05, n_nodes=8, ode_steps=24)
    assert bad.identity_rel > 1e-2


def test_verify_entry_has_every_few_step_field_and_no_certified_violation():
    """The report.json block of `python -m toy verify` (toy/fewstep_entry.py) on a random MLP, tiny settings."""
    from toy.fewstep_entry import few_step_entry
    from toy.models import MLP
    from tvm_theory.analysis.testbeds import make_testbed
    from tvm_theory.param import NetworkJump

    torch.manual_seed(3)
    bed = make_testbed("gaussian-2d")
    net = MLP(2, 16, 2, emb_dim=4).double().eval()
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    z0 = bed.flow(x1, 1.0, 0.0)
    s = np.linspace(0.0, 1.0, 17)
    out = few_step_entry(bed, net, NetworkJump(net), x1, z0, 0.0, steps=(1, 2), s_grid=17, n_sens=8,
                         local_L=(s, np.full(17, 2.0)), sens_ode_steps=8, sens_nodes=4)
    assert set(out) == {"1", "2"}
    for e in out.values():
        for key in ("w2_emp", "paired_rmse", "log10_bound_a_certified", "log10_bound_b_certified",
                    "log10_bound_v_certified", "bound_a_local",
                    "bound_sensitivity", "E_k", "log10_E_k_bound_certified", "verdicts"):
            assert key in e, key
        assert e["verdicts"]["D_N<=(a)_N_certified"] != "violated"
        assert e["verdicts"]["D_N^2<=(b)_N_certified"] != "violated"
        assert e["verdicts"]["D_N<=(v)_N_certified"] != "violated"
        assert e["verdicts"]["D_N<=(a)_N_local"] != "violated"  # never called violated with a local L
        assert len(e["E_k"]) == e["n_steps"] + 1


def test_guided_reference_field_and_flow():
    """GuidedMixture: u^w = u + w(u_c − u), with u_c from the closed-form Gaussian bed (an independent code path);
    at w = 1 its flow is the Gaussian flow map of class c."""
    from tvm_theory.analysis.testbeds import ring
    from tvm_theory.analysis.testbeds.guided import GuidedMixture

    mix = ring()
    cls_bed = Gaussian(mix.means[3].tolist(), 0.3)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    for t in (0.05, 0.4, 0.9):
        tt = torch.full((16,), t, dtype=torch.float64)
        u, uc = mix.velocity(x, tt), cls_bed.velocity(x, tt)
        for w in (1.0, 2.0, 3.5):
            torch.testing.assert_close(GuidedMixture(mix, 3, w).velocity(x, tt), u + w * (uc - u), rtol=1e-10,
                                       atol=1e-10)
    sol = GuidedMixture(mix, 3, 1.0).flow_with_error(x, 1.0, 0.0)
    torch.testing.assert_close(sol.x, cls_bed.flow(x, 1.0, 0.0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        GuidedMixture(mix, 3, 0.5)


@pytest.mark.slow
def test_guided_check_runs_and_its_certified_bounds_hold():
    """python -m toy.guided end to end with tiny settings: a briefly trained class-conditional model at w = 2
    (about 2 CPU minutes: the guided flow's ODE solves dominate)."""
    from toy.guided import evaluate, train_guided

    net = train_guided(2.0, steps=3, hidden=8, depth=1, batch=16)
    out = evaluate(net, 2.0, 1, steps=(1, 2), n=24, n_sens=4, points_total=9)
    for e in out["per_N"].values():
        assert e["w2_emp"] <= e["paired_rmse"] * (1 + 1e-9)
        assert e["verdict_D_N<=(a)_N_certified"] != "violated"
        assert e["verdict_D_N<=(v)_N_certified"] != "violated"
        assert e["sensitivity_identity_rel"] < 0.05
