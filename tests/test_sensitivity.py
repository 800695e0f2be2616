"""The sensitivity (variation-of-constants) bound of docs/THEORY.md §6.1: its Jacobian against closed forms, its exact
identity, and the pathwise inequality it rests on."""
import math

import pytest
import torch

from toy.models import MLP
from tvm_theory.param import NetworkJump
from tvm_theory.analysis.sensitivity import flow_jacobian, sensitivity_bound
from tvm_theory.analysis.testbeds import BiasedFlowJump, Gaussian, make_testbed


def test_flow_jacobian_matches_the_gaussian_closed_form():
    # ψ(x, σ, 0) = μ + (σ_0/σ_σ)(x − (1 − σ)μ), so ∂_x ψ = (σ0/σ_σ) I, for every start time σ of the batch.
    bed = Gaussian([1.0, -2.0], 0.5)
    sigma = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    z, jac = flow_jacobian(bed.velocity, y, sigma, n_steps=64)
    ratio = bed.std / bed.sigma(sigma)
    torch.testing.assert_close(jac, ratio[:, None, None] * torch.eye(2, dtype=torch.float64).expand(5, 2, 2),
                               rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(z, bed.flow(y, sigma, torch.zeros_like(sigma)), rtol=1e-8, atol=1e-10)


def test_bound_is_tight_for_a_constant_velocity_bias():
    # u_θ = u + r with f_θ its exact flow: ρ ≡ ... the residual against the true field is r along the model path
    # and ∂_x ψ = (σ0/σ_σ) I is a positive multiple of I, so ‖∫ Jρ‖ = ∫ ‖J‖‖ρ‖: the bound is attained.
    bed = Gaussian([0.5, 0.0], 0.7)
    model = BiasedFlowJump(bed, [0.1, -0.05])
    x1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sensitivity_bound(model, bed.velocity, x1, 1.0, bed.flow(x1, 1.0, 0.0), ode_steps=32)
    assert res.paired_rmse > 0.05
    assert res.bound == pytest.approx(res.paired_rmse, rel=1e-6)
    assert res.bound_directional == pytest.approx(res.bound, rel=1e-12)
    assert res.identity_rel < 1e-6
    assert res.residual_quantiles["max"] == pytest.approx(math.hypot(0.1, 0.05), rel=1e-9)


@pytest.mark.parametrize("name, t", [("gaussian-2d", 1.0), ("gaussian-1d", 0.6), ("ring8", 1.0)])
def test_identity_and_pathwise_bound_for_a_random_network(name, t):
    bed = make_testbed(name)
    torch.manual_seed(3)
    net = MLP(bed.dim, 16, 2, emb_dim=4).double()
    g = torch.Generator().manual_seed(1)
    ring = name == "ring8"
    n = 6 if ring else 24
    x_t = torch.randn(n, bed.dim, generator=g, dtype=torch.float64) if t == 1.0 else bed.sample_path(n, t, g).x_t
    z0 = bed.flow(x_t, t, 0.0)  # independent reference: closed form / adaptive Dormand–Prince
    res = sensitivity_bound(NetworkJump(net), bed.velocity, x_t, t, z0, ode_steps=24 if ring else 32,
                            rtol=1e-3 if ring else 1e-4, max_rounds=2 if ring else 5)
    # the exact identity y(0) − z(0) = −∫ ∂_xψ ρ dσ, up to the quadrature and ODE errors
    assert res.identity_rel < (1e-2 if ring else 1e-4)
    # the pathwise inequality ‖y(0) − z(0)‖ ≤ ∫ ‖∂_xψ‖ ‖ρ‖, sample by sample (within the identity's residual)
    assert bool((res.error_direct <= res.per_sample + res.identity_residual + 1e-12).all())
    assert res.bound >= res.paired_rmse - float(res.identity_residual.pow(2).mean().sqrt())
    assert res.quad_err < 1e-2 * res.bound and res.ode_err < 1e-2 * res.bound
    assert res.amplification == pytest.approx(res.bound / res.core)
    # ‖∫ Jρ‖ ≤ ∫ ‖Jρ‖ ≤ ∫ ‖J‖‖ρ‖
    assert res.paired_rmse - 1e-3 * res.bound <= res.bound_directional <= res.bound * (1 + 1e-12)


def test_sensitivity_rejects_bad_arguments():
    bed = Gaussian([0.0], 1.0)
    model = BiasedFlowJump(bed, 0.1)
    x = torch.randn(4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="t: expected"):
        sensitivity_bound(model, bed.velocity, x, 0.0, x)
    with pytest.raises(ValueError, match="x_t, z0"):
        sensitivity_bound(model, bed.velocity, x, 1.0, x[:2])
    with pytest.raises(ValueError, match="ode_steps"):
        sensitivity_bound(model, bed.velocity, x, 1.0, x, ode_steps=0)
