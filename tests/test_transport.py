"""W2: exact OT, sliced, Gaussian closed form — each against a second method (docs/THEORY.md §6, §7; issue 2 item 4)."""
import itertools
import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tvm_theory.analysis.transport import sliced_w2, w2, w2_gaussian

F64 = torch.float64


def random_psd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0.0 if rank else 0.05) * np.eye(d)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), d=st.integers(1, 3))
def test_w2_equals_the_best_permutation_for_uniform_equal_sizes(seed, n, d):
    """With n = m and uniform weights an optimal plan is a permutation (Birkhoff): brute force over all n!."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.5
    best = min(((x - y[list(p)]) ** 2).sum(1).mean() for p in itertools.permutations(range(n)))
    assert math.isclose(w2(x, y), math.sqrt(best), rel_tol=1e-9, abs_tol=1e-12)


def test_w2_weights_are_masses():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 2)), rng.standard_normal((9, 2))
    doubled = np.concatenate([x, x])
    a = np.full(14, 1 / 14)
    assert math.isclose(w2(doubled, y, a=a), w2(x, y), rel_tol=1e-9)
    # a point mass against a weighted cloud: W2² = Σ b_j ‖y_j − x‖²
    b = rng.dirichlet(np.ones(9))
    assert math.isclose(w2(x[:1], y, b=b) ** 2, float(b @ ((y - x[0]) ** 2).sum(1)), rel_tol=1e-9)


def test_w2_agrees_with_w2_gaussian_within_sampling_error():
    """Gaussian samples: |W2_emp − W2| is of the order of the finite-sample floor W2_emp(p, p)."""
    rng = np.random.default_rng(1)
    m1, m2 = np.array([0.0, 1.0]), np.array([1.5, -0.5])
    C1, C2 = random_psd(rng, 2), random_psd(rng, 2)
    n = 700
    x = rng.multivariate_normal(m1, C1, n)
    y = rng.multivariate_normal(m2, C2, n)
    floor = w2(x, rng.multivariate_normal(m1, C1, n))
    exact = w2_gaussian(m1, C1, m2, C2)
    assert abs(w2(x, y) - exact) <= 2 * floor
    assert floor < 0.2 * exact  # the comparison is informative


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 8), singular=st.booleans())
def test_w2_gaussian_matches_pot(seed, d, singular):
    rng = np.random.default_rng(seed)
    """Non-singular: POT's routine directly. Singular (rank d/2; POT's sqrtm is unreliable there): POT on
    C + εI, since W2(N(m, C), N(m, C + εI)) ≤ sqrt(d ε) moves each side by at most that much."""
    rank = max(1, d // 2) if singular else None
    C1, C2 = random_psd(rng, d, rank), random_psd(rng, d, rank)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    eps = 1e-6 if singular else 0.0
    ref = float(ot.gaussian.bures_wasserstein_distance(m1, m2, C1 + eps * np.eye(d), C2 + eps * np.eye(d)))
    tol = 2 * math.sqrt(d * eps) + 1e-6
    assert math.isclose(w2_gaussian(m1, C1, m2, C2), ref, rel_tol=1e-6, abs_tol=tol)
    assert math.isclose(w2_gaussian(m2, C2, m1, C1), ref, rel_tol=1e-6, abs_tol=tol)  # symmetric


def test_w2_gaussian_closed_cases():
    # 1-D: W2² = (m1 − m2)² + (s1 − s2)²
    assert math.isclose(w2_gaussian([1.0], [[4.0]], [-1.0], [[0.25]]), math.sqrt(4 + 1.5**2), rel_tol=1e-12)
    # commuting (diagonal) covariances: Σ (√a − √b)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    assert math.isclose(w2_gaussian(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)),
                        math.sqrt(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()), rel_tol=1e-10)
    assert w2_gaussian(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)) < 1e-7
    # torch inputs on their device, same value
    assert math.isclose(w2_gaussian(torch.zeros(2), torch.eye(2), torch.ones(2), 2 * torch.eye(2)),
                        w2_gaussian(np.zeros(2), np.eye(2), np.ones(2), 2 * np.eye(2)), rel_tol=1e-12)


def test_w2_gaussian_in_feature_dimension_against_pot():
    """D = 128 (feature-scale Fréchet distances) against POT's routine; D = 2048 is the slow test below."""
    rng = np.random.default_rng(2)
    d = 128
    f1, f2 = rng.standard_normal((600, d)), rng.standard_normal((600, d)) @ (0.1 * rng.standard_normal((d, d)))
    C1, C2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    m1, m2 = f1.mean(0), f2.mean(0)
    ref = float(ot.gaussian.bures_wasserstein_distance(m1, m2, C1, C2))
    assert math.isclose(w2_gaussian(m1, C1, m2, C2), ref, rel_tol=1e-6)


@pytest.mark.slow
def test_w2_gaussian_at_dimension_2048():
    rng = np.random.default_rng(3)
    d = 2048
    C1, C2 = random_psd(rng, d), random_psd(rng, d)
    m = np.zeros(d)
    ref = float(ot.gaussian.bures_wasserstein_distance(m, m + 0.01, C1, C2))
    assert math.isclose(w2_gaussian(m, C1, m + 0.01, C2), ref, rel_tol=1e-6)


def test_sliced_w2_in_one_dimension_is_exact_and_bounded_by_w2_above():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((300, 1)), 2 * rng.standard_normal((300, 1)) + 1
    est = sliced_w2(x, y, n_projections=8, generator=torch.Generator().manual_seed(0))
    assert math.isclose(est.value, w2(x, y), rel_tol=1e-9) and est.se < 1e-9
    x2, y2 = rng.standard_normal((400, 3)), rng.standard_normal((400, 3)) * [1.0, 2.0, 0.5] + [1.0, 0, 0]
    est2 = sliced_w2(x2, y2, n_projections=512, generator=torch.Generator().manual_seed(1))
    assert est2.value <= w2(x2, y2) + 3 * est2.se
    # Gaussians: every projection is a 1-D Gaussian, E_θ W2²(θ·p, θ·q) for large n within sampling error
    big_x, big_y = rng.standard_normal((8000, 2)), rng.standard_normal((8000, 2)) * [1.0, 3.0]
    th = np.linspace(0, np.pi, 2001)[:-1]
    exact = math.sqrt(np.mean((np.sqrt(np.cos(th) ** 2 + 9 * np.sin(th) ** 2) - 1) ** 2))
    est3 = sliced_w2(big_x, big_y, n_projections=200, generator=torch.Generator().manual_seed(2))
    assert abs(est3.value - exact) <= 4 * est3.se + 0.04


def test_w2_reports_non_convergence():
    rng = np.random.default_rng(5)
    with pytest.raises(RuntimeError, match="did not converge"):
        w2(rng.standard_normal((60, 2)), rng.standard_normal((60, 2)), num_itermax=5)


def test_bad_input_gives_clear_errors():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="same dimension"):
        w2(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        w2(np.full((4, 2), np.nan), x)
    with pytest.raises(ValueError, match=r"x: expected a point cloud"):
        w2(np.zeros(4), x)
    with pytest.raises(ValueError, match="a: expected weights"):
        w2(x, x, a=np.ones(3) / 3)
    with pytest.raises(ValueError, match="summing to 1"):
        w2(x, x, b=np.ones(4))
    with pytest.raises(ValueError, match="positive semi-definite"):
        w2_gaussian(np.zeros(2), np.diag([1.0, -0.5]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="positive semi-definite"):
        w2_gaussian(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.diag([0.0, -1.0]))
    with pytest.raises(ValueError, match="symmetric"):
        w2_gaussian(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="C2: expected shape"):
        w2_gaussian(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="m1 and m2"):
        w2_gaussian(np.zeros(2), np.eye(2), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        w2_gaussian(np.zeros(2), np.eye(2), np.array([np.inf, 0.0]), np.eye(2))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_w2(x, x, n_projections=1)
