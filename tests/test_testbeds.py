"""Analytic test beds against independent computations (docs/THEORY.md §1, §7; issue 2 item 3)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.integrate import solve_ivp
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from tvm_theory.analysis.ode import odeint, odeint_with_error
from tvm_theory.analysis.testbeds import (TESTBEDS, BiasedFlowJump, Gaussian, GaussianMixture, PolynomialAffineJump,
                                 checkerboard, make_testbed, moons, ring)
from tvm_theory.analysis.transport import w2

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def small_mixture():
    """Two anisotropic components with full covariances, unequal weights."""
    covs = [[[0.30, 0.12], [0.12, 0.10]], [[0.05, -0.02], [-0.02, 0.20]]]
    return GaussianMixture([0.3, 0.7], [[1.5, 0.5], [-1.0, -0.5]], covs)


def log_p0(bed, x0):
    """log density of a (non-singular) mixture by scipy, independent of the bed's eigen-decomposition."""
    comps = [np.log(float(w)) + multivariate_normal(m.numpy(), c.numpy()).logpdf(x0)
             for w, m, c in zip(bed.weights, bed.means, bed.covs)]
    return logsumexp(np.stack(comps), axis=0)


def mc_velocity(bed, x, t, n, rng):
    """E[x1 − x0 | x_t = x] by self-normalized importance sampling, with its standard error (per coordinate).

    t < 1/2: propose x1 ~ N(0, I) and set x0 = (x − t x1)/(1 − t) (sampling from the likelihood; weight ∝ p0(x0));
    t ≥ 1/2: propose x0 ~ p0, weight ∝ N(x; (1 − t) x0, t² I). (docs/THEORY.md §6.1: sampling from p0 collapses for small t.)
    """
    d = x.shape[0]
    if t < 0.5:
        x1 = rng.standard_normal((n, d))
        x0 = (x - t * x1) / (1 - t)
        logw = log_p0(bed, x0)
    else:
        x0 = bed.sample(n, torch.Generator().manual_seed(int(rng.integers(1 << 30)))).numpy()
        x1 = (x - (1 - t) * x0) / t
        logw = -0.5 * (x1**2).sum(1)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    v = x1 - x0
    mean = w @ v
    se = np.sqrt((w[:, None] ** 2 * (v - mean) ** 2).sum(0))  # delta-method s.e. of a ratio estimator
    return mean, se, 1.0 / (w**2).sum()


# ---- Gaussian -------------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(mu=st.lists(st.floats(-2, 2), min_size=1, max_size=3), sd=st.floats(0.2, 3.0), t=st.floats(0.0, 1.0),
       s=st.floats(0.0, 1.0))
def test_gaussian_flow_solves_the_ode_and_composes(mu, sd, t, s):
    bed = Gaussian(mu, sd)
    x = bed.sample_path(4, t, gen(0)).x_t
    y = bed.flow(x, t, s)
    # ∂_s ψ = u(ψ, s) (terminal velocity condition, Eq. 6), by central differences in float64
    h, sc = 1e-6, min(max(s, 1e-4), 1 - 1e-4)  # central differences inside the interval
    dpsi = (bed.flow(x, t, sc + h) - bed.flow(x, t, sc - h)) / (2 * h)
    assert torch.allclose(dpsi, bed.velocity(bed.flow(x, t, sc), sc), rtol=1e-5, atol=1e-6)
    # ψ(ψ(x, t, s), s, t) = x
    assert torch.allclose(bed.flow(y, s, t), x, rtol=1e-10, atol=1e-10)


def test_gaussian_flow_matches_scipy_ode_solve():
    bed = Gaussian([0.7, -1.2], 1.7)
    x = bed.sample_path(6, 0.9, gen(1)).x_t

    def rhs(r, z):
        return bed.velocity(torch.as_tensor(z, dtype=F64).reshape(6, 2), r).reshape(-1).numpy()

    sol = solve_ivp(rhs, (0.9, 0.0), x.reshape(-1).numpy(), rtol=1e-11, atol=1e-12, method="DOP853")
    assert np.allclose(sol.y[:, -1].reshape(6, 2), bed.flow(x, 0.9, 0.0).numpy(), atol=1e-8)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.6, 1.0])
def test_gaussian_velocity_is_the_conditional_mean(t):
    """Least squares of v on x_t converges to E[v | x_t], which is affine for a Gaussian."""
    bed = Gaussian([0.5, -1.0], 1.5)
    p = bed.sample_path(200_000, t, gen(2))
    X = torch.cat([p.x_t, torch.ones(p.x_t.shape[0], 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(X, p.v).solution  # (3, 2)
    grid = torch.tensor([[0.0, 0.0], [1.0, -2.0], [-1.5, 0.5]], dtype=F64)
    fit = torch.cat([grid, torch.ones(3, 1, dtype=F64)], 1) @ coef
    assert torch.allclose(fit, bed.velocity(grid, t), atol=0.03)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.8, 1.0])
def test_gaussian_cond_variance_against_monte_carlo(t):
    bed = Gaussian([1.0, 0.0, -1.0], 0.8)
    p = bed.sample_path(200_000, t, gen(3))
    r = ((p.v - bed.velocity(p.x_t, t)) ** 2).sum(1)
    se = float(r.std()) / math.sqrt(r.numel())
    assert abs(float(r.mean()) - bed.cond_variance(t).value) <= 4 * se + 1e-12


def test_gaussian_flow_pushes_p_t_to_p_s_within_the_sample_floor():
    bed = Gaussian([1.0, -1.0], 0.5)
    n = 400
    pushed = bed.flow(bed.sample_path(n, 1.0, gen(4)).x_t, 1.0, 0.3)
    fresh = [bed.sample_path(n, 0.3, gen(10 + i)).x_t for i in range(4)]
    floor = max(w2(fresh[i], fresh[i + 1]) for i in range(3))
    assert w2(pushed, fresh[0]) <= 1.5 * floor
    assert w2(bed.sample_path(n, 1.0, gen(4)).x_t, fresh[0]) > 3 * floor  # the check has power


# ---- mixtures -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.97])
@pytest.mark.parametrize("name", ["small", "ring8"])
def test_mixture_velocity_against_importance_sampled_posterior(name, t):
    bed = small_mixture() if name == "small" else make_testbed("ring8")
    rng = np.random.default_rng(5)
    x = bed.sample_path(3, t, gen(6)).x_t
    u = bed.velocity(x, t).numpy()
    for i in range(3):
        mean, se, ess = mc_velocity(bed, x[i].numpy(), t, 50_000, rng)
        assert ess > 200
        assert np.all(np.abs(mean - u[i]) <= 5 * se + 1e-3), (mean, u[i], se)


def test_single_component_mixture_equals_gaussian():
    g = Gaussian([0.4, -0.3], 1.3)
    m = GaussianMixture([1.0], [[0.4, -0.3]], [1.69 * np.eye(2)])
    x = g.sample_path(50, 0.5, gen(7)).x_t
    for t in [0.0, 1e-9, 0.3, 1.0]:
        assert torch.allclose(m.velocity(x, t), g.velocity(x, t), atol=1e-12)
    sol = m.flow_with_error(x, 0.8, 0.1)
    exact = g.flow(x, 0.8, 0.1)
    true_err = (sol.x - exact).norm(dim=1)
    assert float(true_err.max()) < 1e-8
    assert bool((true_err <= sol.err + 1e-12).all())  # the reported error covers the true one


def test_mixture_cond_variance_against_direct_monte_carlo():
    bed = small_mixture()
    for t in [0.0, 0.1, 0.5, 1.0]:
        est = bed.cond_variance(t, n=10_000, generator=gen(8))
        p = bed.sample_path(40_000, t, gen(9))
        r = ((p.v - bed.velocity(p.x_t, t)) ** 2).sum(1)
        se = float(r.std()) / math.sqrt(r.numel())
        assert abs(float(r.mean()) - est.value) <= 4 * math.hypot(se, est.se) + 1e-12
    assert bed.cond_variance(0.0).value == 2.0  # σ²(0) = D exactly
    tr_cov0 = float(sum(w * (torch.trace(c) + (m - bed.means.T @ bed.weights).pow(2).sum())
                        for w, m, c in zip(bed.weights, bed.means, bed.covs)))
    one = bed.cond_variance(1.0, n=10_000, generator=gen(10))  # σ²(1) = tr Cov(x0)
    assert abs(one.value - tr_cov0) <= 4 * one.se + 1e-9


def test_mixture_samples_have_the_right_moments():
    bed = small_mixture()
    x = bed.sample(200_000, gen(11))
    mean = bed.weights @ bed.means
    second = sum(w * (c + torch.outer(m, m)) for w, m, c in zip(bed.weights, bed.means, bed.covs))
    assert torch.allclose(x.mean(0), mean, atol=0.01)
    assert torch.allclose(x.T @ x / x.shape[0], second, atol=0.02)


def test_ring_flow_from_noise_samples_p0_within_the_sample_floor():
    bed = ring(8, radius=2.0, std=0.3, rtol=1e-6, atol=1e-6)
    n = 250
    sol = bed.flow_with_error(torch.randn(n, 2, generator=gen(12), dtype=F64), 1.0, 0.0)
    assert sol.err_max < 1e-4
    fresh = [bed.sample(n, gen(20 + i)) for i in range(4)]
    floor = max(w2(fresh[i], fresh[i + 1]) for i in range(3))
    assert w2(sol.x, fresh[0]) <= 1.5 * floor


def test_float32_flow_uses_tolerances_it_can_meet():
    bed = ring(8, dtype=torch.float32)
    x = bed.sample_path(16, 1.0, gen(0)).x_t
    sol = bed.flow_with_error(x, 1.0, 0.0)
    ref = ring(8).flow(x.double(), 1.0, 0.0)
    assert sol.x.dtype == torch.float32 and sol.err_max < 1e-3
    assert float((sol.x.double() - ref).norm(dim=1).max()) < 1e-3


def test_singular_components_are_handled_at_and_near_t0():
    covs = np.stack([np.diag([1.0, 0.0]), np.zeros((2, 2))])  # a segment and a point mass
    bed = GaussianMixture([0.5, 0.5], [[0.0, 1.0], [2.0, -1.0]], covs)
    near = GaussianMixture([0.5, 0.5], [[0.0, 1.0], [2.0, -1.0]], covs + 1e-12 * np.eye(2))
    x = torch.tensor([[0.3, 0.9], [2.1, -1.05], [1.0, 0.0]], dtype=F64)
    assert torch.equal(bed.velocity(x, 0.0), -x)  # u(x, 0) = −x exactly
    for t in [1e-300, 1e-12, 1e-6, 0.2, 1.0]:
        u = bed.velocity(x, t)
        assert bool(torch.isfinite(u).all())
    for t in [0.05, 0.5, 1.0]:
        assert torch.allclose(bed.velocity(x, t), near.velocity(x, t), atol=1e-6)
    assert bed.cond_variance(0.0).value == 2.0
    assert math.isfinite(bed.cond_variance(1e-6, n=1000, generator=gen(0)).value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(TESTBEDS))
def test_registered_beds_are_finite_on_the_closed_interval(name, dtype):
    bed = make_testbed(name, dtype=dtype)
    x = bed.sample_path(64, 0.5, gen(13)).x_t
    assert x.dtype == dtype and x.shape == (64, bed.dim)
    for t in [0.0, 1e-12, 1e-4, 0.5, 1 - 1e-7, 1.0]:
        assert bool(torch.isfinite(bed.velocity(x, t)).all()), t
    assert math.isfinite(bed.cond_variance(0.5, n=2000, generator=gen(0)).value)
    times = torch.linspace(0, 1, 16, dtype=dtype)
    per_sample = bed.velocity(x[:16], times)
    one = torch.stack([bed.velocity(x[i:i + 1], times[i:i + 1])[0] for i in range(16)])
    assert torch.allclose(per_sample, one, atol=1e-5 if dtype == torch.float32 else 1e-12)



def test_shapes_have_the_promised_geometry():
    r = ring(6, radius=4.0, std=0.2)
    assert torch.allclose(r.means.norm(dim=1), torch.full((6,), 4.0, dtype=F64))
    m = moons(n_per_moon=10)
    assert m.n_components == 20 and torch.allclose(m.means.mean(0), torch.zeros(2, dtype=F64), atol=0.15)
    c = checkerboard(n_squares=4, side=1.0, per_side=3)
    assert c.n_components == 8 * 9
    cells = torch.floor(c.means + 2.0)  # which unit square each component sits in
    assert bool(((cells.sum(1) % 2) == 0).all())
    x = c.sample(100_000, gen(14))
    inside = (torch.floor(x + 2.0).sum(1) % 2 == 0) & (x.abs() < 2).all(1)
    assert float(inside.double().mean()) > 0.9  # most mass on the filled squares


# ---- closed-form jump models ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma0", [0.5, 1.0, 3.0])
def test_biased_flow_jump_is_the_exact_flow_of_u_plus_r(sigma0):
    bed = Gaussian([0.3], sigma0)
    model = BiasedFlowJump(bed, 0.1)
    x = bed.sample_path(5, 1.0, gen(15)).x_t

    def rhs(r, z):
        zz = torch.as_tensor(z, dtype=F64).reshape(5, 1)
        return (bed.velocity(zz, r) + 0.1).reshape(-1).numpy()

    for t, s in [(1.0, 0.0), (0.7, 0.2), (0.3, 0.9)]:
        sol = solve_ivp(rhs, (t, s), x.reshape(-1).numpy(), rtol=1e-11, atol=1e-12, method="DOP853")
        jump = x + model.displacement(x, t, s)
        assert np.allclose(sol.y[:, -1], jump.reshape(-1).numpy(), atol=1e-8)
        f, dfds = model.displacement_and_ds(x, t, s)
        assert torch.allclose(dfds, model.velocity(x + f, s), atol=1e-12)  # A ≡ 0
    assert torch.allclose(model.velocity(x, 0.4), bed.velocity(x, 0.4) + 0.1, atol=1e-14)
    assert torch.allclose(model.displacement(x, 0.6, 0.6), torch.zeros_like(x))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.integers(1, 3), t=st.floats(0.05, 1.0), frac=st.floats(0.0, 1.0))
def test_affine_jump_derivative_by_finite_differences(seed, dim, t, frac):
    model = PolynomialAffineJump.random(dim, gen(seed))
    s = frac * t
    x = torch.randn(4, dim, generator=gen(seed + 1), dtype=F64)
    h = 1e-6
    _, dfds = model.displacement_and_ds(x, t, s)
    lo, hi = max(s - h, 0.0), min(s + h, 1.0)  # central inside [0, 1], one-sided at s = 0 and at s = 1
    fd = (model.displacement(x, t, hi) - model.displacement(x, t, lo)) / (hi - lo)
    assert torch.allclose(dfds, fd, atol=1e-5)
    assert torch.allclose(model.displacement(x, t, t), torch.zeros_like(x), atol=1e-15)


# ---- the ODE solver ---------------------------------------------------------------------------------------------------
def test_odeint_controls_every_sample():
    """dz/dr = a z with per-sample rates spanning two decades; exact solution z0 e^{a (t1 − t0)}."""
    rates = torch.logspace(-1, 1.3, 32, dtype=F64)[:, None]
    z0 = torch.ones(32, 1, dtype=F64)
    for t0, t1 in [(0.0, 1.0), (1.0, 0.0)]:
        sol = odeint_with_error(lambda z, r: rates * z, z0, t0, t1, rtol=1e-8, atol=1e-10)
        exact = torch.exp(rates * (t1 - t0))
        rel = ((sol.x - exact).abs() / exact).squeeze(1)
        assert float(rel.max()) < 1e-5  # global error: local tolerance amplified by growth up to e^20
        assert bool(((sol.x - exact).abs().squeeze(1) <= sol.err + 1e-14).all())  # and reported per sample
    assert torch.equal(odeint(lambda z, r: z, z0, 0.3, 0.3), z0)


def test_odeint_reports_non_convergence():
    with pytest.raises(RuntimeError, match="max_steps"):
        odeint(lambda z, r: 50 * z, torch.ones(2, 1, dtype=F64), 0.0, 1.0, max_steps=3)


# ---- bad input ---------------------------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="std"):
        Gaussian([0.0], 0.0)
    with pytest.raises(ValueError, match="mean"):
        Gaussian([float("nan")], 1.0)
    bed = Gaussian([0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 2\)"):
        bed.velocity(torch.zeros(3, 3, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="t: expected times in"):
        bed.velocity(torch.zeros(3, 2, dtype=F64), 1.5)
    with pytest.raises(ValueError, match="non-finite"):
        bed.velocity(torch.full((3, 2), float("inf"), dtype=F64), 0.5)
    with pytest.raises(ValueError, match="s: expected"):
        bed.flow(torch.zeros(3, 2, dtype=F64), 0.5, -0.1)
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -0.5]]])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0]], np.stack([np.eye(2)] * 2))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(3)])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([-1.0], [[0.0, 0.0]], [np.eye(2)])
    with pytest.raises(ValueError, match="unknown test bed"):
        make_testbed("spiral")
    with pytest.raises(ValueError, match="n: expected"):
        bed.sample(0)
    with pytest.raises(ValueError, match="bias"):
        BiasedFlowJump(bed, [0.1, 0.2, 0.3])
