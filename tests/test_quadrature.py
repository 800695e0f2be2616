"""The quadrature rules of tvm_theory.analysis.quadrature against closed-form integrals: the trapezoid rule (exact for
linear integrands, error Σ h³/6 for s²) and adaptive Simpson (exact for cubics, Richardson estimate exact for
quartics, splitting where the integrand peaks)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_theory.analysis.quadrature import (adaptive_simpson, check_grid, cumulative_trapezoid, make_grid,
                                            trapezoid_weights)

coef = st.floats(-5.0, 5.0)


def _random_grid(seed: int, t: float, n: int) -> np.ndarray:
    inner = np.sort(np.random.default_rng(seed).uniform(0.0, t, n - 2))
    return np.concatenate([[0.0], inner, [t]])


# ---- trapezoid -------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), t=st.floats(0.1, 1.0), n=st.integers(3, 40), a=coef, b=coef)
def test_trapezoid_is_exact_for_linear_integrands_on_any_grid(seed, t, n, a, b):
    s = _random_grid(seed, t, n)
    y = a + b * s
    exact = a * s + b * s**2 / 2  # ∫_0^{s_i} (a + b u) du
    assert trapezoid_weights(s) @ y == pytest.approx(exact[-1], abs=1e-12)
    np.testing.assert_allclose(cumulative_trapezoid(y, s), exact, rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(3, 40))
def test_trapezoid_error_for_s_squared_is_the_sum_of_h_cubed_over_6(seed, n):
    # per interval [p, q]: (q − p)(p² + q²)/2 − (q³ − p³)/3 = (q − p)³/6
    s = _random_grid(seed, 1.0, n)
    err = trapezoid_weights(s) @ s**2 - 1.0 / 3.0
    assert err == pytest.approx((np.diff(s) ** 3).sum() / 6, rel=1e-9, abs=1e-15)


def test_cumulative_trapezoid_works_along_the_last_axis_of_a_batch():
    s = make_grid(0.8, 9)
    y = np.stack([np.ones_like(s), 2 * s, np.cos(s)])  # (3, 9)
    c = cumulative_trapezoid(y, s)
    assert c.shape == y.shape and (c[:, 0] == 0).all()
    np.testing.assert_allclose(c[:2], [s, s**2], atol=1e-15)
    np.testing.assert_allclose(c[2, -1], trapezoid_weights(s) @ y[2], rtol=1e-14)
    assert abs(c[2, -1] - math.sin(0.8)) <= 0.8 * 0.1**2 / 12  # the trapezoid bound (t − 0) h² max|y″| / 12


def test_grids_reject_bad_input_naming_the_argument():
    with pytest.raises(ValueError, match="n: expected an odd int"):
        make_grid(1.0, 4)
    with pytest.raises(ValueError, match="t: expected a time in"):
        make_grid(1.5)
    with pytest.raises(ValueError, match="s_grid: expected a 1-D grid of odd length"):
        check_grid(np.linspace(0, 1, 4), 1.0)
    with pytest.raises(ValueError, match="s_grid: expected finite, strictly increasing"):
        check_grid([0.0, 0.6, 0.5, 1.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="s_grid: expected to run from 0 to t"):
        check_grid(np.linspace(0, 0.9, 5), 1.0)
    s = check_grid(np.linspace(0, 1 - 1e-14, 5), 1.0)
    assert s[-1] == 1.0  # snapped to t


# ---- adaptive Simpson ------------------------------------------------------------------------------------------------
def _poly(c):
    """Integrand batches for y(σ) = Σ_k c_k σ^k as a 1-tuple of 0-d entries per σ, and ∫_0^T y."""
    def f(sigmas):
        x = torch.tensor(sigmas, dtype=torch.float64)
        return (sum(ck * x**k for k, ck in enumerate(c)),)

    def exact(T):
        return sum(ck * T ** (k + 1) / (k + 1) for k, ck in enumerate(c))
    return f, exact


@settings(max_examples=30, deadline=None)
@given(c=st.lists(coef, min_size=1, max_size=4), T=st.floats(0.05, 2.0), n_panels=st.integers(1, 5))
def test_simpson_is_exact_for_cubics(c, T, n_panels):
    f, exact = _poly(c)
    res = adaptive_simpson(f, T, n_panels=n_panels, max_rounds=0)
    assert len(res.panels) == n_panels
    scale = sum(abs(ck) * T ** (k + 1) for k, ck in enumerate(c))
    assert float(res.integral(0)) == pytest.approx(exact(T), abs=1e-13 * (1 + scale))
    assert res.error <= 1e-14 * (1 + scale)  # S₂ = S for cubics: the Richardson estimate sees no error


@settings(max_examples=20, deadline=None)
@given(c4=st.floats(0.1, 5.0), c=st.lists(coef, min_size=4, max_size=4), T=st.floats(0.1, 1.0))
def test_richardson_estimate_is_the_true_error_for_quartics(c4, c, T):
    # Simpson's error for y⁗ ≡ 24 c4 is −(b − a)⁵ c4/120, so S₂'s error is 1/16 of S's and (S₂ − S)/15 is exact.
    f, exact = _poly(c + [c4])
    res = adaptive_simpson(f, T, n_panels=1, max_rounds=0)
    true_err = abs(float(res.integral(0)) - exact(T))
    assert true_err == pytest.approx(c4 * T**5 / 120 / 16, rel=1e-6)
    assert res.panels[0].err == pytest.approx(true_err, rel=1e-6)


def test_a_peaked_integrand_is_split_near_its_peak():
    # y(σ) = 1/((σ − c)² + ε²), ∫_0^1 y = (atan((1 − c)/ε) + atan(c/ε))/ε
    c, eps = 0.3, 0.02

    def f(sigmas):
        x = torch.tensor(sigmas, dtype=torch.float64)
        return (1 / ((x - c) ** 2 + eps**2),)
    exact = (math.atan((1 - c) / eps) + math.atan(c / eps)) / eps
    coarse = adaptive_simpson(f, n_panels=4, max_rounds=0)
    fine = adaptive_simpson(f, n_panels=4, rtol=1e-6, max_rounds=12)
    assert abs(float(coarse.integral(0)) - exact) > 1e-2 * exact
    assert abs(float(fine.integral(0)) - exact) < 1e-5 * exact
    assert fine.error < 1e-5 * exact
    widths = {p: float(p.b - p.a) for p in fine.panels}
    near = min(fine.panels, key=lambda p: abs((p.a + p.b) / 2 - c))
    assert widths[near] <= min(widths.values()) * 2 and widths[near] * 16 <= max(widths.values())
    # the panels tile [0, 1] in order, and every node was evaluated once
    assert fine.panels[0].a == 0 and fine.panels[-1].b == 1
    assert all(p.b == q.a for p, q in zip(fine.panels, fine.panels[1:]))
    assert fine.nodes == sorted({v for p in fine.panels for v in p.nodes})


def test_tuple_integrands_are_integrated_together_and_each_node_evaluated_once():
    # y_0(σ) = e^{a_i σ} per sample (n,), y_1(σ) = (σ, σ³) per sample (n, 2), on [0, T], with n_panels = 3
    # (non-dyadic nodes: a node reached from two panels must still be the same cache entry).
    a = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    T = 0.7
    seen = []

    def f(sigmas):
        seen.extend(sigmas)
        x = torch.tensor(sigmas, dtype=torch.float64)
        y0 = torch.exp(a[None, :] * x[:, None])
        y1 = torch.stack([x, x**3], dim=-1)[:, None, :].expand(len(sigmas), 3, 2)
        return y0, y1
    res = adaptive_simpson(f, T, n_panels=3, rtol=1e-10, max_rounds=6)
    assert len(seen) == len(set(seen)) == len(res.nodes)
    torch.testing.assert_close(res.points, torch.tensor(sorted(seen), dtype=torch.float64))
    torch.testing.assert_close(res.integral(0), torch.expm1(a * T) / a, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.integral(1), torch.tensor([T**2 / 2, T**4 / 4], dtype=torch.float64).expand(3, 2),
                               rtol=1e-13, atol=0)
    assert res.at_nodes(1).shape == (len(res.nodes), 3, 2)
    assert sum(res.width(p) for p in res.panels) == pytest.approx(T)


def test_adaptive_simpson_rejects_bad_input_naming_the_argument():
    f, _ = _poly([1.0])
    for kwargs, name in [({"upper": 0.0}, "upper"), ({"upper": math.inf}, "upper"), ({"n_panels": 0}, "n_panels"),
                         ({"n_panels": 2.0}, "n_panels"), ({"max_rounds": -1}, "max_rounds"),
                         ({"rtol": -1e-3}, "rtol"), ({"rtol": math.nan}, "rtol")]:
        with pytest.raises(ValueError, match=f"^{name}: expected"):
            adaptive_simpson(f, **kwargs)


def test_log_space_helpers_against_direct_formulas():
    from tvm_theory.analysis.logspace import abs_change, exp_inf, log0, logsumexp

    a = np.array([[0.0, math.log(2.0), -np.inf], [-np.inf, -np.inf, -np.inf]])
    np.testing.assert_allclose(logsumexp(a)[0], math.log(3.0), rtol=1e-15)
    assert logsumexp(a)[1] == -np.inf and logsumexp(np.array([1000.0, 1000.0])) == pytest.approx(1000 + math.log(2))
    assert log0(np.array([0.0]))[0] == -np.inf and exp_inf(np.array([1e4]))[0] == np.inf
    assert abs_change(1.0, 3.5) == 2.5 and abs_change(math.nan, math.nan) == 0.0
    assert abs_change(1.0, math.inf) == math.inf and abs_change(1.0, math.nan) == math.inf
