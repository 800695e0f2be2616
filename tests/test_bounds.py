"""Bounds of docs/THEORY.md §4–6 with their errors: quadrature, exact affine chain, Monte Carlo ladder, verdicts."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from scipy.integrate import quad

from tvm_theory.analysis.bounds import (bound_report, compare, evaluate_bounds, exact_affine_report, make_grid, verdict)
from tvm_theory.analysis.estimate import Estimate
from tvm_theory.param import NetworkJump
from tvm_theory.analysis.testbeds import BiasedFlowJump, Gaussian, PolynomialAffineJump, make_testbed
from tvm_theory.analysis.transport import w2_gaussian

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def direct_bounds(t, s, A, B, L):
    """The four bounds by plain linear-space trapezoid rules (a second implementation, no log space)."""
    trap = lambda y, x: float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))  # noqa: E731
    cum = lambda y, x: np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))])  # noqa: E731
    lam = np.exp(cum(L, s))
    a = trap(lam * (np.sqrt(A) + np.sqrt(B)), s)
    paper = trap(lam * (A + B), s)
    c = 3 * t * trap(np.exp(3 * cum(L**2 * (t - s), s)) * (A + B), s)
    return {"bound_a": a, "bound_b": 2 * trap(lam, s) * paper, "bound_c": c, "paper": paper,
            "core": trap(np.sqrt(A) + np.sqrt(B), s), "Lambda": trap(lam, s), "lambda_t": lam[-1]}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.floats(0.05, 1.0), half=st.integers(1, 40), scale=st.floats(0.0, 5.0))
def test_log_space_bounds_equal_direct_quadrature(seed, t, half, scale):
    rng = np.random.default_rng(seed)
    s = np.sort(np.concatenate([[0.0, t], rng.uniform(0, t, 2 * half - 1)]))
    assume(np.all(np.diff(s) > 1e-9))
    A, B, L = rng.exponential(1.0, s.size), rng.exponential(1.0, s.size), scale * rng.uniform(0, 1, s.size)
    lin, log10 = evaluate_bounds(t, s, A, B, L)
    for name, ref in direct_bounds(t, s, A, B, L).items():
        assert math.isclose(lin[name].value, ref, rel_tol=1e-10), name
        assert math.isclose(log10[name].value, math.log10(ref), rel_tol=1e-10, abs_tol=1e-12), name
    assert math.isclose(lin["amplification"].value * lin["core"].value, lin["bound_a"].value, rel_tol=1e-10)
    assert 1 - 1e-12 <= lin["amplification"].value <= lin["lambda_t"].value * (1 + 1e-12)


def abs_kappa_integral(sigma0, s):
    """∫_0^s |κ| in closed form: κ = d log σ_s/ds changes sign once, at s* = σ0²/(σ0² + 1)."""
    sig = lambda u: math.sqrt((1 - u) ** 2 * sigma0**2 + u**2)  # noqa: E731
    s_star = sigma0**2 / (sigma0**2 + 1)
    if s <= s_star:
        return math.log(sigma0 / sig(s))
    return math.log(sigma0 / sig(s_star)) + math.log(sig(s) / sig(s_star))


@pytest.mark.parametrize("sigma0", [0.5, 1.0, 3.0, 10.0])
def test_quadrature_errors_cover_the_true_error_for_the_counterexample(sigma0):
    bed = Gaussian([0.0], sigma0)
    r = 0.1
    rep = exact_affine_report(BiasedFlowJump(bed, r), bed, 1.0, s_grid=make_grid(1.0, 257))
    Lam_true = quad(lambda u: math.exp(abs_kappa_integral(sigma0, u)), 0, 1, epsabs=1e-13, epsrel=1e-13,
                    points=[sigma0**2 / (sigma0**2 + 1)], limit=200)[0]
    lam = rep.bounds["Lambda"]
    assert abs(lam.value - Lam_true) <= lam.quad  # the coarse-vs-fine estimate is conservative here
    assert lam.quad < 1e-2 * Lam_true
    assert math.isclose(rep.bounds["lambda_t"].value, math.exp(abs_kappa_integral(sigma0, 1.0)),
                        rel_tol=10 * rep.bounds["lambda_t"].quad / rep.bounds["lambda_t"].value + 1e-12)
    # A ≡ 0 and B ≡ r²: (a) = r Λ, paper = r² Λ, (b) = 2 r² Λ², from the same quadrature
    assert np.allclose(rep.A, 0.0, atol=1e-20) and np.allclose(rep.B, r**2, rtol=1e-12)
    assert math.isclose(rep.bounds["bound_a"].value, r * lam.value, rel_tol=1e-12)
    assert math.isclose(rep.bounds["paper"].value, r**2 * lam.value, rel_tol=1e-12)
    assert math.isclose(rep.bounds["bound_b"].value, 2 * r**2 * lam.value**2, rel_tol=1e-12)


@pytest.mark.parametrize("sigma0, violated", [(1.0, True), (3.0, True), (0.3, False)])
def test_paper_form_is_violated_by_the_counterexample_beyond_its_errors(sigma0, violated):
    bed = Gaussian([0.0], sigma0)
    rep = exact_affine_report(BiasedFlowJump(bed, 0.1), bed, 1.0)
    # W2 of a pure shift, with G = ∫ ds/σ_s by scipy's quadrature (independent of the closed form in the model)
    G = quad(lambda u: 1 / math.sqrt((1 - u) ** 2 * sigma0**2 + u**2), 0, 1, epsabs=1e-13, epsrel=1e-13)[0]
    assert math.isclose(rep.w2.value, sigma0 * G * 0.1, rel_tol=1e-9)
    c = rep.comparisons
    assert c["W2^2<=paper"].verdict == ("violated" if violated else "holds")
    assert c["D_t<=(a)"].verdict == c["D_t^2<=(b)"].verdict == c["D_t^2<=(c)"].verdict == "holds"
    assert c["W2<=D_t"].verdict != "violated"


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.integers(1, 3), t=st.floats(0.1, 1.0), sd=st.floats(0.3, 3.0))
def test_bound_chain_holds_for_random_affine_models_with_exact_quantities(seed, dim, t, sd):
    g = torch.Generator().manual_seed(seed)
    bed = Gaussian(torch.randn(dim, generator=g, dtype=F64), sd)
    model = PolynomialAffineJump.random(dim, g)
    rep = exact_affine_report(model, bed, t, s_grid=make_grid(t, 513))
    # the exact W2 against the Gaussian closed form of the pushed law N(a m_t + b, a² σ_t² I)
    x0 = torch.zeros(1, dim, dtype=F64)
    b0 = model.displacement(x0, t, 0.0)[0]
    a0 = float((model.displacement(torch.ones(1, dim, dtype=F64), t, 0.0)[0] - b0)[0]) + 1
    m_t, v_t = bed.marginal(t)
    ref = w2_gaussian(a0 * m_t + b0, a0**2 * v_t * torch.eye(dim, dtype=F64), bed.mean, sd**2 * torch.eye(dim, dtype=F64))
    assert math.isclose(rep.w2.value, ref, rel_tol=1e-6, abs_tol=1e-7)
    c = rep.comparisons
    assert c["W2<=D_t"].verdict != "violated" and rep.w2.value <= rep.D.value * (1 + 1e-9)
    for claim in ("D_t<=(a)", "D_t^2<=(b)", "D_t^2<=(c)"):
        assert c[claim].verdict == "holds", (claim, c[claim])


def test_monte_carlo_report_agrees_with_the_exact_one():
    g = gen(1)
    bed = Gaussian([0.5, -1.0], 0.8)
    model = PolynomialAffineJump.random(2, g)
    t, grid = 0.9, make_grid(0.9, 17)
    exact = exact_affine_report(model, bed, t, s_grid=grid)
    mc = bound_report(model, bed, t, L=exact.L, s_grid=grid, n=3000, generator=g, b_fm=True, compute_w2=False)
    assert np.all(np.abs(mc.A - exact.A) <= 5 * mc.A_se + 1e-12)
    assert np.all(np.abs(mc.B - exact.B) <= 5 * mc.B_se + 1e-12)
    assert np.all(np.abs(mc.B_fm - exact.B) <= 5 * mc.B_fm_se + 1e-12)
    assert mc.B_fm_se.mean() > mc.B_se.mean()  # the direct form has the smaller variance
    assert abs(mc.D.value - exact.D.value) <= 5 * mc.D.se
    for name in ("bound_a", "bound_b", "bound_c", "paper"):
        e, m = exact.bounds[name], mc.bounds[name]
        assert abs(m.value - e.value) <= 5 * m.se + 1e-9, name
        assert m.se > 0 and m.quad > 0
    assert abs(mc.bounds["paper_fm"].value - exact.bounds["paper"].value) <= 5 * mc.bounds["paper_fm"].se


def test_monte_carlo_ladder_on_a_mixture_with_ode_flow():
    """An affine model (exact L) on the 8-Gaussian ring: ψ by ODE, its error reported; the chain holds."""
    bed = make_testbed("ring8", rtol=1e-6, atol=1e-6)
    model = PolynomialAffineJump.random(2, gen(2), scale=0.3)
    rep = bound_report(model, bed, 0.8, L=lambda s: model.lipschitz(s).numpy(), s_grid=make_grid(0.8, 17), n=300,
                       generator=gen(3), compute_w2=True)
    assert 0 < rep.D.ode < 1e-3 and rep.w2_kind == "empirical"
    assert rep.w2.value <= rep.D.value * (1 + 1e-9)  # identity pairing is a coupling of the empirical measures
    assert rep.comparisons["W2<=D_t"].verdict != "violated"
    for claim in ("D_t<=(a)", "D_t^2<=(b)", "D_t^2<=(c)"):
        assert rep.comparisons[claim].verdict == "holds", claim
    d = rep.to_dict()
    assert d["w2_kind"] == "empirical" and len(d["profiles"]["A"]) == 17
    assert 0 < rep.w2_floor.value < 0.5 and d["w2_floor"]["value"] == rep.w2_floor.value
    # a precomputed ψ is reused as given (here a deliberately shifted one: D_t moves accordingly)
    x_t = bed.sample_path(50, 0.8, gen(4)).x_t
    psi = bed.flow_with_error(x_t, 0.8, 0.0)
    shifted = type(psi)(x=psi.x + 1.0, err=psi.err, err_max=psi.err_max)
    kw = dict(L=1.0, s_grid=make_grid(0.8, 5), x_t=x_t, generator=gen(5))
    assert bound_report(model, bed, 0.8, psi=psi, **kw).D.value == bound_report(model, bed, 0.8, **kw).D.value
    assert bound_report(model, bed, 0.8, psi=shifted, **kw).D.value != bound_report(model, bed, 0.8, **kw).D.value
    with pytest.raises(ValueError, match="psi"):
        bound_report(model, bed, 0.8, psi=type(psi)(psi.x[:10], psi.err[:10], 0.0), **kw)


class TanhNet(torch.nn.Module):
    """F(x, t, s) = W2 tanh(W1 x + a t + b s + c): x ↦ F is ‖W2‖‖W1‖-Lipschitz (tanh is 1-Lipschitz)."""

    def __init__(self, dim, hidden, g):
        super().__init__()
        self.W1 = torch.nn.Parameter(torch.randn(hidden, dim, generator=g, dtype=F64) / math.sqrt(dim))
        self.W2 = torch.nn.Parameter(torch.randn(dim, hidden, generator=g, dtype=F64) / math.sqrt(hidden))
        self.ab = torch.nn.Parameter(torch.randn(3, hidden, generator=g, dtype=F64))

    def forward(self, x, t, s):
        h = x @ self.W1.T + t[:, None] * self.ab[0] + s[:, None] * self.ab[1] + self.ab[2]
        return torch.tanh(h) @ self.W2.T

    def lipschitz(self):
        with torch.no_grad():
            return float(torch.linalg.matrix_norm(self.W1, 2) * torch.linalg.matrix_norm(self.W2, 2))


def test_bound_a_holds_for_a_network_with_a_certified_constant():
    net = TanhNet(2, 16, gen(4))
    bed = make_testbed("gaussian-2d")
    rep = bound_report(NetworkJump(net), bed, 1.0, L=net.lipschitz(), s_grid=make_grid(1.0, 17), n=500,
                       generator=gen(5))
    assert np.all(rep.A >= 0) and rep.A[-1] == 0.0  # the terminal term vanishes at s = t
    assert rep.comparisons["D_t<=(a)"].verdict == "holds"
    assert rep.bounds["amplification"].value > 1


def test_huge_lipschitz_constants_are_handled_in_log_space():
    bed = Gaussian([0.0], 1.0)
    model = BiasedFlowJump(bed, 0.1)
    rep = exact_affine_report(model, bed, 1.0, s_grid=make_grid(1.0, 4097), L=2000.0)
    assert math.isinf(rep.bounds["bound_a"].value)
    la = rep.bounds_log10["bound_a"]
    true = math.log10(0.1) + 2000 / math.log(10) - math.log10(2000)  # r ∫_0^1 e^{2000 s} ds, e^{-2000} dropped
    assert math.isfinite(la.value) and abs(la.value - true) <= la.quad
    assert rep.comparisons["D_t<=(a)"].scale == "log10" and rep.comparisons["D_t<=(a)"].verdict == "holds"
    with np.errstate(invalid="raise"):  # a constant whose square overflows: (c) is inf, nothing is NaN
        vast = exact_affine_report(model, bed, 1.0, s_grid=make_grid(1.0, 65), L=1e200)
    assert math.isinf(vast.bounds["bound_c"].value) and math.isinf(vast.bounds_log10["bound_c"].value)
    assert all(c.verdict == "holds" for k, c in vast.comparisons.items() if k.startswith("D_t"))


finite = st.floats(-1e6, 1e6)
err = st.floats(0.0, 1e3)


@settings(max_examples=200, deadline=None)
@given(a=finite, b=finite, se1=err, se2=err, q1=err, q2=err, o=err, k=st.floats(1.0, 5.0))
def test_verdicts_never_go_beyond_the_errors(a, b, se1, se2, q1, q2, o, k):
    lhs, rhs = Estimate(a, se1, q1, o), Estimate(b, se2, q2)
    tol = k * math.hypot(se1, se2) + q1 + q2 + o
    v = verdict(lhs, rhs, k)
    if abs(a - b) <= tol:  # the gap is within the errors: no violation can be claimed
        assert v != "violated"
    if v == "violated":
        assert a - b > tol
    if v == "holds":
        assert b - a >= tol
    if a - b > tol * (1 + 1e-9) + 1e-12 * max(abs(a), abs(b)) + 1e-300:
        assert v == "violated"


def test_verdict_edge_cases():
    assert verdict(Estimate(1.0), Estimate(math.inf)) == "holds"
    assert verdict(Estimate(math.nan), Estimate(1.0)) == "inconclusive"
    assert verdict(Estimate(1.0), Estimate(1.0 + 1e-15)) == "inconclusive"  # rounding
    assert verdict(Estimate(1.0, se=0.1), Estimate(1.2)) == "inconclusive"
    assert verdict(Estimate(1.0, se=0.1), Estimate(1.4)) == "holds"
    c = compare("x", Estimate(2.0), "y", Estimate(math.inf), Estimate(400.0, 0.1, 0.1))
    assert c.scale == "log10" and c.verdict == "holds"


def test_bad_input_gives_clear_errors():
    bed = Gaussian([0.0], 1.0)
    model = BiasedFlowJump(bed, 0.1)
    with pytest.raises(ValueError, match="odd length"):
        exact_affine_report(model, bed, 1.0, s_grid=np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="run from 0 to t"):
        exact_affine_report(model, bed, 1.0, s_grid=np.linspace(0, 0.9, 11))
    with pytest.raises(ValueError, match="strictly increasing"):
        exact_affine_report(model, bed, 1.0, s_grid=np.array([0.0, 0.7, 0.5, 0.9, 1.0]))
    with pytest.raises(ValueError, match="t: expected t in"):
        exact_affine_report(model, bed, 0.0)
    with pytest.raises(ValueError, match="t: expected a time in"):
        bound_report(model, bed, 1.5, L=1.0)
    with pytest.raises(ValueError, match="L: expected finite, non-negative"):
        exact_affine_report(model, bed, 1.0, L=-1.0)
    with pytest.raises(ValueError, match="L: expected a number, a callable or an array"):
        exact_affine_report(model, bed, 1.0, s_grid=make_grid(1.0, 5), L=np.ones(4))
    with pytest.raises(ValueError, match=r"x_t: expected shape \(B, 1\)"):
        bound_report(model, bed, 1.0, L=1.0, x_t=torch.zeros(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="same dimension"):
        exact_affine_report(PolynomialAffineJump.random(2), bed, 1.0)
    with pytest.raises(TypeError, match="Gaussian"):
        exact_affine_report(model, make_testbed("ring8"), 1.0)
    with pytest.raises(ValueError, match="odd int"):
        make_grid(1.0, 4)
