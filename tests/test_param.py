"""∂_s f by forward-mode JVP against central finite differences in float64 (docs/THEORY.md §2)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from toy.models import MLP
from nets import Conditional
from tvm_theory.param import NetworkJump, displacement, displacement_and_ds, velocity



pytestmark = pytest.mark.usefixtures("float64")


def _times(draw_t, draw_gap, n):
    t = torch.full((n,), draw_t)
    return t, (t - draw_gap).clamp(1e-4, 1 - 1e-4)  # room for the ±h finite-difference steps


@settings(max_examples=20, deadline=None)
@given(dim=st.integers(1, 4), hidden=st.integers(2, 24), depth=st.integers(1, 3), emb=st.sampled_from([4, 8]),
       t=st.floats(0.05, 1.0), gap=st.floats(0.0, 0.9), seed=st.integers(0, 2**16))
def test_jvp_matches_central_differences(dim, hidden, depth, emb, t, gap, seed):
    torch.manual_seed(seed)
    F = MLP(dim, hidden, depth, emb)
    x = torch.randn(5, dim)
    t, s = _times(t, gap, 5)
    f, dfds = displacement_and_ds(F, x, t, s)
    h = 1e-6
    fd = (displacement(F, x, t, s + h) - displacement(F, x, t, s - h)) / (2 * h)
    torch.testing.assert_close(f, displacement(F, x, t, s))
    torch.testing.assert_close(dfds, fd, rtol=1e-5, atol=1e-6)
    # ∂_s f = F + (s − t) ∂_s F: at s = t the derivative is the velocity itself.
    _, d_at_t = displacement_and_ds(F, x, t, t)
    torch.testing.assert_close(d_at_t, velocity(F, x, t))


@settings(max_examples=10, deadline=None)
@given(w=st.floats(1.0, 4.0), seed=st.integers(0, 2**16))
def test_cfg_scaled_parameterization(w, seed):
    torch.manual_seed(seed)
    F = Conditional(3)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    t, s = torch.rand(4) * 0.5 + 0.5, torch.rand(4) * 0.5
    f, dfds = displacement_and_ds(F, x, t, s, w, y=y)
    beta = torch.full((4,), 1 / w)
    torch.testing.assert_close(f, (s - t)[:, None] * w * F(x, t, s, y, beta))
    h = 1e-6
    fd = ((s + h - t)[:, None] * F(x, t, s + h, y, beta) - (s - h - t)[:, None] * F(x, t, s - h, y, beta)) * w / (2 * h)
    torch.testing.assert_close(dfds, fd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(velocity(F, x, s, w, y=y), w * F(x, s, s, y, beta))
    jump = NetworkJump(F, w, y=y)
    torch.testing.assert_close(jump.displacement(x, t, s), f)


def test_gradient_reaches_parameters_through_the_tangent():
    torch.manual_seed(0)
    F = MLP(2, 8, 1, 4)
    x, t, s = torch.randn(3, 2), torch.full((3,), 0.9), torch.full((3,), 0.2)
    _, dfds = displacement_and_ds(F, x, t, s)
    (g,) = torch.autograd.grad(dfds.sum(), [F.layers[0].weight])
    h = 1e-6

    def fd_tangent():
        return ((displacement(F, x, t, s + h) - displacement(F, x, t, s - h)) / (2 * h)).sum()

    (g_ref,) = torch.autograd.grad(fd_tangent(), [F.layers[0].weight])
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_scalar_times_are_accepted_under_jvp():
    torch.manual_seed(0)
    F = MLP(2, 8, 1, 4)
    x = torch.randn(3, 2)
    f, dfds = displacement_and_ds(F, x, 0.9, 0.3)
    f_ref, dfds_ref = displacement_and_ds(F, x, torch.full((3,), 0.9), torch.full((3,), 0.3))
    torch.testing.assert_close(f, f_ref)
    torch.testing.assert_close(dfds, dfds_ref)


@pytest.mark.parametrize("bad, match", [
    (dict(t=torch.full((3,), 1.5)), "t: expected times in"),
    (dict(s=torch.full((3,), float("nan"))), "s: expected finite"),
    (dict(t=torch.zeros(4)), "t: expected a scalar or shape"),
    (dict(w=0.5), "w: expected finite guidance weights"),
])
def test_bad_input_is_named(bad, match):
    F = MLP(2, 4, 1, 4)
    args = dict(x=torch.randn(3, 2), t=torch.full((3,), 0.5), s=torch.full((3,), 0.1), w=None) | bad
    with pytest.raises(ValueError, match=match):
        displacement(F, args["x"], args["t"], args["s"], args["w"])
