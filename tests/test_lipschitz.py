"""Lipschitz estimators (docs/THEORY.md §6): the certificate is an upper bound (exact for affine maps), the local
estimate a lower one, both checked against the exact Jacobian from float64 autograd."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from toy.models import MLP
from tvm_theory.analysis.lipschitz import certified_mlp_lipschitz, local_lipschitz, model_local_lipschitz
from tvm_theory.param import velocity


def _jacobian_norms(model: MLP, x: torch.Tensor, s: float) -> torch.Tensor:
    """‖∂_x u_θ(x, s)‖₂ per row, from the full Jacobian by reverse-mode autograd and an SVD (the reference)."""
    def u_row(z):
        return velocity(model, z[None], s)[0]
    jac = torch.func.vmap(torch.func.jacrev(u_row))(x)
    return torch.linalg.matrix_norm(jac, ord=2)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(1, 3), hidden=st.integers(4, 24), depth=st.integers(1, 3),
       scale=st.floats(0.3, 3.0))
def test_certificate_bounds_the_jacobian_everywhere(seed, dim, hidden, depth, scale):
    torch.manual_seed(seed)
    model = MLP(dim, hidden, depth, emb_dim=4).double()
    with torch.no_grad():
        for layer in model.linears:
            layer.weight.mul_(scale)
    x = 3 * torch.randn(64, dim, dtype=torch.float64)
    cert = certified_mlp_lipschitz(model.linears, model.act_lipschitz, dim)
    for s in (0.0, 0.37, 1.0):
        assert float(_jacobian_norms(model, x, s).max().detach()) <= cert.value
    assert cert.n_activations == depth and not cert.exact
    assert math.isclose(cert.log10_value, math.log10(cert.value), rel_tol=1e-12, abs_tol=1e-12)


def test_certificate_is_exact_for_a_single_affine_layer():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()  # inputs: x (2 columns) and 3 time features
    cert = certified_mlp_lipschitz([layer], 1.1, x_dim=2)
    exact = float(torch.linalg.svdvals(layer.weight[:, :2])[0])
    assert cert.exact and cert.n_activations == 0
    assert exact <= cert.value <= exact * (1 + 1e-12)
    # and the constant is attained: ‖W_x v‖ = σ_max for the top right-singular vector v
    v = torch.linalg.svd(layer.weight[:, :2]).Vh[0]
    x = torch.cat([torch.zeros(1, 2), torch.randn(1, 3)], 1).double()
    dx = torch.cat([v, torch.zeros(3)]).double()[None]
    assert math.isclose(float((layer(x + dx) - layer(x)).norm()), exact, rel_tol=1e-12)


def test_certificate_in_log_space_where_the_product_overflows():
    layers = [nn.Linear(4, 4) for _ in range(30)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(1e12 * torch.eye(4))
    cert = certified_mlp_lipschitz(layers, 1.0, 2)
    assert cert.value == math.inf
    assert math.isclose(cert.log10_value, 360.0, rel_tol=1e-9)


def test_certificate_rejects_bad_arguments():
    layers = [nn.Linear(4, 8), nn.Linear(8, 2)]
    with pytest.raises(ValueError, match="x_dim"):
        certified_mlp_lipschitz(layers, 1.1, 5)
    with pytest.raises(ValueError, match="act_lipschitz"):
        certified_mlp_lipschitz(layers, -1.0, 2)
    with pytest.raises(ValueError, match="layer 0 outputs 8"):
        certified_mlp_lipschitz([nn.Linear(4, 8), nn.Linear(7, 2)], 1.1, 2)
    with pytest.raises(ValueError, match="linears"):
        certified_mlp_lipschitz([], 1.1, 2)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(2, 4))
def test_local_estimate_converges_to_and_never_exceeds_the_jacobian_norm(seed, dim):
    torch.manual_seed(seed)
    model = MLP(dim, 16, 2, emb_dim=4).double()
    x = 2 * torch.randn(32, dim, dtype=torch.float64)
    exact = _jacobian_norms(model, x, 0.6)
    est = local_lipschitz(lambda z: velocity(model, z, 0.6), x, n_iter=150, tol=1e-12,
                          generator=torch.Generator().manual_seed(seed))
    assert bool((est.per_point <= exact * (1 + 1e-10)).all())  # a lower estimate, point by point
    torch.testing.assert_close(est.per_point, exact, rtol=1e-4, atol=1e-12)
    assert est.max == pytest.approx(float(est.per_point.max())) and est.quantiles["max"] == est.max


def test_local_estimate_on_an_s_grid_uses_each_grid_point():
    # u(x, s) = s·A x: the local constant at s is s·‖A‖₂, exactly.
    a = torch.tensor([[2.0, 1.0], [0.0, 0.5]], dtype=torch.float64)

    def u(x, s):
        return s[:, None] * (x @ a.T)
    s = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    probes = [torch.randn(8, 2, dtype=torch.float64) for _ in s]
    res = model_local_lipschitz(u, probes, s, n_iter=200, tol=1e-14)
    top = float(torch.linalg.svdvals(a)[0])
    assert [r.max for r in res] == pytest.approx([0.0, 0.5 * top, top], rel=1e-8, abs=1e-12)
    with pytest.raises(ValueError, match="one probe set per s"):
        model_local_lipschitz(u, probes[:2], s)
