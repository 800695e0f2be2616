"""The inequality steps of the proofs of (a), (b), (c) (proofs/README.md, "The corrected theorem"), checked on random
admissible instances with hypothesis.

The check scripts in proofs/ verify identities and equality cases; the steps that are inequalities are checked here:
* backward Gronwall (Lemma G): a path with e(t) = 0 and ‖e′‖ ≤ α + L‖e‖ + β has ‖e(0)‖ ≤ ∫_0^t λ(α + β);
* the whole pathwise chain of (c) (Jensen with its (t − s), the factor 3, Volterra–Gronwall, integration by parts):
  ‖e(0)‖² ≤ 3t ∫_0^t G (α² + β²), G(r) = exp(3∫_0^r L(u)²(t − u) du);
* the Volterra comparison lemma on its own: φ ≥ 0 with φ(s) ≤ h(s) + (t − s)∫_s^t 3L²φ, h = 3(t − s)∫_s^t g, has
  φ(0) ≤ 3t ∫_0^t G g;
* Minkowski's integral inequality and the triangle inequality in L² (step from Lemma G to (a)), weighted
  Cauchy–Schwarz and (√A + √B)² ≤ 2(A + B) (step to (b)), discrete Jensen and (p + q + w)² ≤ 3(p² + q² + w²).

An admissible instance has α, β ≥ 0 and L ≥ 0 piecewise constant on a random partition of [0, t] (measurable and
integrable, not continuous), in dimension 1–3. The path solves e′ = L(s)M(s)e + α(s)m(s) + β(s)n(s) with
‖M‖₂ ≤ 1 and unit vectors m, n, so ‖e′‖ ≤ α + L‖e‖ + β holds by construction; on each piece the equation is linear
with constant coefficients, so e is computed exactly (matrix exponential), backwards from e(t) = 0. Some instances
are the equality case of Gronwall (M = −I, m = n fixed), so the bounds are tested where they are tight. Each harness
is shown to reject a wrong bound (the tests named ``..._rejects_...``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad, solve_ivp
from scipy.linalg import expm

REL = 1e-9  # relative allowance for floating-point rounding in a bound that may be attained


class Instance:
    """Piecewise-constant α, β, L on the partition ``knots`` of [0, t], with the matrices and directions of e′."""

    def __init__(self, knots, alpha, beta, lip, mats, dirs_a, dirs_b):
        self.knots, self.alpha, self.beta, self.lip = (np.asarray(v, dtype=float) for v in (knots, alpha, beta, lip))
        self.mats, self.dirs_a, self.dirs_b = mats, dirs_a, dirs_b
        self.t = float(self.knots[-1])

    def pieces(self):
        return zip(self.knots[:-1], self.knots[1:], self.alpha, self.beta, self.lip)

    def error_at_zero(self) -> np.ndarray:
        """e(0) for e(t) = 0, e′ = L M e + α m + β n, exactly on each piece: [e; 1]′ = [[LM, αm + βn], [0, 0]][e; 1]."""
        d = self.mats[0].shape[0]
        z = np.zeros(d + 1)
        z[-1] = 1.0
        for k in reversed(range(len(self.alpha))):
            gen = np.zeros((d + 1, d + 1))
            gen[:d, :d] = self.lip[k] * self.mats[k]
            gen[:d, d] = self.alpha[k] * self.dirs_a[k] + self.beta[k] * self.dirs_b[k]
            z = expm(-(self.knots[k + 1] - self.knots[k]) * gen) @ z
        return z[:d]

    def gronwall_bound(self, weight=True) -> float:
        """∫_0^t λ(α + β) with λ = exp∫_0^s L (or λ ≡ 1 when ``weight`` is False), in closed form per piece."""
        total, log_lam = 0.0, 0.0
        for a, b, h, lip in ((a, b, hi - lo, lip) for lo, hi, a, b, lip in self.pieces()):
            rate = lip if weight else 0.0
            x = rate * h  # growth = ∫ e^{rate·u} du over the piece = h·expm1(x)/x, h when x underflows to 0
            growth = h * (math.expm1(x) / x if x > 0 else 1.0)
            total += math.exp(log_lam) * (a + b) * growth
            log_lam += rate * h
        return total

    def log_g(self, r: float, factor: float = 3.0) -> float:
        """log G(r) = factor·∫_0^r L(u)²(t − u) du."""
        total, t = 0.0, self.t
        for lo, hi, _, _, lip in self.pieces():
            if lo >= r:
                break
            top = min(hi, r)
            total += lip**2 * ((t - lo) ** 2 - (t - top) ** 2) / 2
        return factor * total

    def bound_c_pathwise(self, g=None, factor: float = 3.0, front: float = 3.0) -> float:
        """front·t ∫_0^t G(r) g(r) dr with g = α² + β² by default (adaptive quadrature on each piece)."""
        g = np.asarray(self.alpha**2 + self.beta**2 if g is None else g, dtype=float)
        total = 0.0
        for k, (lo, hi, *_rest) in enumerate(self.pieces()):
            val, _err = quad(lambda r: math.exp(self.log_g(r, factor)), lo, hi, epsabs=0, epsrel=1e-13, limit=200)
            total += g[k] * val
        return front * self.t * total


@st.composite
def instances(draw, tight=None):
    t = draw(st.floats(0.05, 1.0))
    n = draw(st.integers(1, 6))
    inner = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=n - 1, max_size=n - 1)))
    knots = np.array([0.0] + [t * u for u in inner] + [t])
    knots = np.maximum.accumulate(knots)
    rates = st.floats(0.0, 3.0)
    alpha = draw(st.lists(rates, min_size=n, max_size=n))
    beta = draw(st.lists(rates, min_size=n, max_size=n))
    lip = draw(st.lists(st.floats(0.0, 6.0), min_size=n, max_size=n))
    d = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if tight if tight is not None else draw(st.booleans()):
        mats = [-np.eye(d)] * n  # backwards in time e grows at the full rate L, in the fixed direction m
        m = rng.normal(size=d)
        dirs_a = dirs_b = [m / np.linalg.norm(m)] * n
    else:
        mats = []
        for _ in range(n):
            g = rng.normal(size=(d, d))
            mats.append(draw(st.floats(-1.0, 1.0)) * g / np.linalg.norm(g, 2))
        unit = [v / np.linalg.norm(v) for v in rng.normal(size=(2 * n, d))]
        dirs_a, dirs_b = unit[:n], unit[n:]
    return Instance(knots, alpha, beta, lip, mats, dirs_a, dirs_b)


# ---- Lemma G and the pathwise chain of (c) --------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(inst=instances())
def test_backward_gronwall(inst):
    err, bound = np.linalg.norm(inst.error_at_zero()), inst.gronwall_bound()
    assert err <= bound * (1 + REL) + 1e-12


@settings(max_examples=40, deadline=None)
@given(inst=instances(tight=True))
def test_backward_gronwall_is_attained_in_the_tight_case(inst):
    err, bound = np.linalg.norm(inst.error_at_zero()), inst.gronwall_bound()
    assert err == pytest.approx(bound, rel=1e-8, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(inst=instances())
def test_pathwise_bound_c(inst):
    err2, bound = float(np.sum(inst.error_at_zero() ** 2)), inst.bound_c_pathwise()
    assert err2 <= bound * (1 + REL) + 1e-12


def test_gronwall_harness_rejects_a_bound_without_the_amplification():
    inst = Instance([0.0, 1.0], [1.0], [0.0], [3.0], [-np.eye(1)], [np.ones(1)], [np.ones(1)])
    assert np.linalg.norm(inst.error_at_zero()) > 1.5 * inst.gronwall_bound(weight=False)


def test_bound_c_harness_rejects_the_form_without_the_factor_three():
    """Without the factor 3 (in front and in the exponent) the pathwise (c) fails on the tight instance (by 8%)."""
    inst = Instance([0.0, 1.0], [1.0], [0.0], [3.0], [-np.eye(1)], [np.ones(1)], [np.ones(1)])
    err2 = float(np.sum(inst.error_at_zero() ** 2))
    assert err2 <= inst.bound_c_pathwise()
    assert err2 > 1.05 * inst.bound_c_pathwise(factor=1.0, front=1.0)


# ---- the Volterra comparison lemma ----------------------------------------------------------------------------------
def volterra_solution_at_zero(inst: Instance, g, lip) -> float:
    """φ(0) for the solution of φ(s) = h(s) + (t − s)∫_s^t 3L²φ, h = 3(t − s)∫_s^t g (g, L piecewise constant on
    the instance's partition). With q = t − s, H = ∫_s^t g and R = ∫_s^t 3L²φ: H′ = g, R′ = 3L²q(3H + R), and
    φ(0) = 3tH(0) + tR(0)."""
    t, state = inst.t, np.zeros(2)
    for k in reversed(range(len(g))):
        lo, hi = inst.knots[k], inst.knots[k + 1]
        if hi - lo <= 0:
            continue

        def rhs(q, y, k=k):
            return [g[k], 3 * lip[k] ** 2 * q * (3 * y[0] + y[1])]

        state = solve_ivp(rhs, (t - hi, t - lo), state, method="DOP853", rtol=1e-12, atol=1e-14).y[:, -1]
    return 3 * t * state[0] + t * state[1]


@settings(max_examples=40, deadline=None)
@given(inst=instances(), shrink=st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12))
def test_volterra_comparison(inst, shrink):
    """φ solves the equation with g′ = θg ≤ g and L′ = θ′L ≤ L, hence satisfies the inequality with g and L."""
    n = len(inst.alpha)
    g = inst.alpha**2 + inst.beta**2
    g_small, lip_small = g * np.array(shrink[:n]), inst.lip * np.array(shrink[6:6 + n])
    phi0 = volterra_solution_at_zero(inst, g_small, lip_small)
    assert phi0 <= inst.bound_c_pathwise(g=g) * (1 + 1e-7) + 1e-12


def test_volterra_comparison_is_an_equality_for_the_equation_itself():
    inst = Instance([0.0, 0.3, 0.8], [1.0, 0.5], [0.2, 1.0], [2.0, 4.0], [np.eye(1)] * 2, [np.ones(1)] * 2,
                    [np.ones(1)] * 2)
    g = inst.alpha**2 + inst.beta**2
    assert volterra_solution_at_zero(inst, g, inst.lip) == pytest.approx(inst.bound_c_pathwise(g=g), rel=1e-9)


# ---- the L² steps to (a) and (b), discrete Jensen and the factor 3 --------------------------------------------------
def nonneg(shape):
    return st.lists(st.floats(0.0, 10.0), min_size=math.prod(shape), max_size=math.prod(shape)).map(
        lambda v: np.array(v).reshape(shape))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n_s: st.integers(1, 6).flatmap(lambda n_x: st.tuples(
    nonneg((n_s, n_x)), nonneg((n_s, n_x)), nonneg((n_s,)), nonneg((n_s,)), nonneg((n_x,))))))
def test_minkowski_and_triangle_give_a(arrays):
    """‖∫λ(α + β) ds‖_{L²(p)} ≤ ∫λ(‖α‖_{L²(p)} + ‖β‖_{L²(p)}) ds for a quadrature rule in s and a discrete p."""
    alpha, beta, w, lam_steps, p = arrays
    if p.sum() == 0:
        p = np.ones_like(p)
    p = p / p.sum()
    lam = np.exp(np.cumsum(lam_steps / 10))
    lhs = math.sqrt(np.sum(p * (np.sum((w * lam)[:, None] * (alpha + beta), axis=0)) ** 2))
    rhs = np.sum(w * lam * (np.sqrt(alpha**2 @ p) + np.sqrt(beta**2 @ p)))
    assert lhs <= rhs * (1 + 1e-12) + 1e-12


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(nonneg((n,)), nonneg((n,)), nonneg((n,)), nonneg((n,)))))
def test_weighted_cauchy_schwarz_gives_b(arrays):
    a_vals, b_vals, w, lam_steps = arrays
    lam = np.exp(np.cumsum(lam_steps / 10))
    core = np.sum(w * lam * (np.sqrt(a_vals) + np.sqrt(b_vals)))
    big_lam = np.sum(w * lam)
    assert core**2 <= big_lam * np.sum(w * lam * (np.sqrt(a_vals) + np.sqrt(b_vals)) ** 2) * (1 + 1e-12) + 1e-12
    assert core**2 <= 2 * big_lam * np.sum(w * lam * (a_vals + b_vals)) * (1 + 1e-12) + 1e-12


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.integers(1, 3).flatmap(lambda d: st.tuples(
    nonneg((n,)), st.lists(st.floats(-10.0, 10.0), min_size=n * d, max_size=n * d).map(
        lambda v: np.array(v).reshape(n, d))))))
def test_discrete_jensen_with_the_length_factor(arrays):
    """‖Σ w_i v_i‖² ≤ (Σ w_i) Σ w_i ‖v_i‖²: the (t − s) of step (J) is Σ w_i."""
    w, vecs = arrays
    lhs = float(np.sum((w[:, None] * vecs).sum(axis=0) ** 2))
    assert lhs <= w.sum() * np.sum(w * np.sum(vecs**2, axis=1)) * (1 + 1e-12) + 1e-9


def test_jensen_harness_rejects_the_form_without_the_length_factor():
    w, vecs = np.array([1.0, 1.0]), np.array([[1.0], [1.0]])  # an interval of length 2, constant e′ = 1
    assert float(np.sum((w[:, None] * vecs).sum(axis=0) ** 2)) > np.sum(w * np.sum(vecs**2, axis=1))


@settings(max_examples=100, deadline=None)
@given(st.tuples(*[st.floats(-1e3, 1e3)] * 3))
def test_factor_three(vals):
    p, q, w = vals
    assert (p + q + w) ** 2 <= 3 * (p * p + q * q + w * w) * (1 + 1e-12) + 1e-9
