"""The W2 sandwich and the directional sensitivity diagnostic on closed-form cases (issue 18, part 5): the exact flow as
the model gives upper ≈ lower ≈ 0; a Gaussian with an affine error of known W2 lies inside the sandwich and Gelbrich
equals it; Gelbrich without D × D matrices equals the dense Gaussian W2; the directional diagnostic agrees with the
full-Jacobian one of tvm_theory.analysis.fewstep where both apply."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tvm_theory.analysis.directional import directional_sensitivity, flow_jvp
from tvm_theory.analysis.fewstep import few_step_sensitivity, uniform_grid
from tvm_theory.analysis.sandwich import floors, gelbrich, mean_gap, paired_rmse, sandwich
from tvm_theory.analysis.testbeds import BiasedFlowJump, Gaussian
from tvm_theory.analysis.transport import w2_gaussian

F64 = torch.float64


def gaussian_samples(n, d, seed, scales):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64) * scales


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 40), d=st.integers(1, 30), seed=st.integers(0, 1000))
def test_gelbrich_matches_dense_gaussian_w2(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64) * torch.rand(d, generator=g, dtype=F64)
    y = torch.randn(n + 1, d, generator=g, dtype=F64) + 0.3
    cov = lambda v: torch.cov(v.T, correction=0).reshape(d, d)  # noqa: E731
    want = w2_gaussian(x.mean(0), cov(x), y.mean(0), cov(y))
    assert gelbrich(x, y) == pytest.approx(want, rel=1e-7, abs=1e-6)


def test_exact_flow_as_the_model_gives_zero():
    z = gaussian_samples(200, 16, 0, torch.linspace(0.1, 2.0, 16, dtype=F64))
    zi = gaussian_samples(200, 16, 1, torch.linspace(0.1, 2.0, 16, dtype=F64))
    s = sandwich(z, z, z_err=torch.full((200,), 1e-9, dtype=F64), n_pot=100, gelbrich_boot=5)
    assert s["upper"]["value"] == 0.0 and s["upper"]["hi"] == pytest.approx(1e-9)
    assert s["lower_mean"]["value"] == 0.0 and s["lower_gelbrich"]["value"] < 1e-6
    assert s["pot"] < 1e-6 and s["sliced"]["value"] < 1e-6 and abs(s["upper_minus_pot"]) < 1e-6
    f = floors(z, zi, n_pot=100, gelbrich_boot=5)
    assert f["pot_floor"] > 0.5 and f["gelbrich_floor"]["value"] > 0.1  # two independent sets are not at distance 0


@pytest.mark.parametrize("n, d", [(4000, 6), (300, 40)])
def test_affine_error_of_known_w2_lies_inside_the_sandwich(n, d):
    """z ~ N(μ, S) exactly; the 'model' maps the same noise through an affine error y = μ + δ + A(z − μ) with A a
    rotation times a scaling, so law(y) = N(μ + δ, A S Aᵀ) and W2 is the closed form of docs/THEORY.md §7."""
    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(0, -1, d, dtype=F64)
    mu = torch.randn(d, generator=g, dtype=F64)
    x1 = torch.randn(n, d, generator=g, dtype=F64)
    z = mu + x1 * scales
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    a = q * torch.linspace(0.8, 1.2, d, dtype=F64)
    delta = 0.05 * torch.randn(d, generator=g, dtype=F64)
    y = mu + delta + (z - mu) @ a.T
    S = torch.diag(scales**2)
    exact = w2_gaussian(mu, S, mu + delta, a @ S @ a.T)
    s = sandwich(y, z, n_pot=500, gelbrich_boot=20)
    assert s["lower_mean"]["lo"] <= exact <= s["upper"]["hi"]
    assert s["lower_mean"]["value"] <= exact <= s["upper"]["value"]
    gel = s["lower_gelbrich"]
    assert abs(gel["value"] - exact) <= 4 * gel["se"] + 0.02 * exact  # Gelbrich is exact for Gaussians
    if n > 10 * d:
        assert abs(gel["value"] - exact) < 0.03 * exact
    assert s["upper_minus_pot"] >= -1e-9  # the identity pairing is a coupling of the two clouds


def test_paired_rmse_and_mean_gap_intervals():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 5, generator=g, dtype=F64)
    y = z + torch.tensor([0.3, 0, 0, 0, 0], dtype=F64) + 0.1 * torch.randn(2000, 5, generator=g, dtype=F64)
    up = paired_rmse(y, z, torch.full((2000,), 0.01, dtype=F64))
    true_rmse = math.sqrt(0.09 + 5 * 0.01)
    assert up.lo <= true_rmse <= up.hi and up.det == pytest.approx(0.01)
    gap = mean_gap(y, z)
    assert gap.lo <= 0.3 <= gap.hi
    # D ≫ n with a small gap (the GPU study's case): the interval must still contain its value and the true gap
    y, z = torch.randn(300, 2000, generator=g, dtype=F64), torch.randn(300, 2000, generator=g, dtype=F64)
    gap = mean_gap(y + 0.05, z)  # ‖E y − E z‖ = 0.05·√2000 ≈ 2.24 against tr Cov(d)/n ≈ 13.3
    assert gap.lo <= gap.value <= gap.hi and gap.lo <= 0.05 * math.sqrt(2000) <= gap.hi
    with pytest.raises(ValueError, match="z_err"):
        paired_rmse(y, z, torch.zeros(3))
    with pytest.raises(ValueError, match="y and z"):
        paired_rmse(y, z[:, :3])
    with pytest.raises(ValueError, match="n_pot"):
        sandwich(y, z, n_pot=1)


def test_flow_jvp_on_a_gaussian_is_the_exact_tangent():
    bed = Gaussian([0.5, -1.0, 2.0], 0.7)
    y = torch.randn(4, 3, dtype=F64)
    v = torch.randn(4, 3, dtype=F64)
    z, tan, err = flow_jvp(bed.velocity, y, 0.6, v, rtol=1e-10, atol=1e-10)
    exact = bed.sigma(0.0) / bed.sigma(0.6) * v  # ∂_xψ = σ_0/σ_t I
    assert torch.allclose(z, bed.flow(y, 0.6, 0.0), atol=1e-8)
    assert torch.allclose(tan, exact, atol=1e-8)
    assert float((tan - exact).norm(dim=1).max()) <= float(err.max()) + 1e-12  # the error estimate covers it
    _, tan2, _ = flow_jvp(bed.velocity, y, 0.6, v, rtol=1e-10, atol=1e-10,
                           u_jvp=lambda x, s, t: torch.func.jvp(lambda xx: bed.velocity(xx, s), (x,), (t,)))
    assert torch.allclose(tan2, tan, atol=1e-12)


@pytest.mark.parametrize("n_steps", [1, 2])
def test_directional_diagnostic_matches_the_full_jacobian_one(n_steps):
    """On a Gaussian ∂_xψ is a multiple of I, so the directional form equals the full one; both use the same grid."""
    bed = Gaussian([1.0, -0.5], 0.5)
    model = BiasedFlowJump(bed, [0.1, -0.05])
    x1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = uniform_grid(n_steps)
    z0 = bed.flow(x1, 1.0, 0.0)
    d = directional_sensitivity(model, bed.velocity, x1, grid, z0, n_nodes=4, rtol=1e-9)
    full = few_step_sensitivity(model, bed.velocity, x1, grid, z0, n_nodes=4, ode_steps=64)
    assert d.bound == pytest.approx(full.bound_directional, rel=1e-6)
    assert d.paired_rmse == pytest.approx(full.paired_rmse, rel=1e-12)
    assert d.identity_rel < 1e-3
    assert d.bound >= d.paired_rmse * (1 - 1e-6)
