"""∂_s f by forward-mode JVP against central finite differences in float64 (docs/THEORY.md §2)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from toy.models import MLP
from nets import Conditional
from tvm_theory.param import (NetworkJump, displacement, displacement_and_ds, displacement_ds_and_velocity_of,
                              guided_call_and_ds, takes_tangent_rows, velocity)



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


class _OwnTangent(Conditional):
    """The same network with its own ``forward_and_ds`` (as the DiT has), computed here by ``torch.func.jvp``."""

    def forward_and_ds(self, x, t, s, y, beta):
        return torch.func.jvp(lambda s_: self(x, t, s_, y, beta), (s,), (torch.ones_like(s),))


class _OwnTangentRows(Conditional):
    """A network whose ``forward_and_ds`` takes ``n_tangent`` (as the DiT's does): ∂_s F of the first rows only."""

    def forward_and_ds(self, x, t, s, y, beta=None, *, n_tangent=None):
        value, ds = torch.func.jvp(lambda s_: self(x, t, s_, y, beta), (s,), (torch.ones_like(s),))
        return value, ds[:n_tangent]


@settings(max_examples=10, deadline=None)
@given(w=st.floats(1.0, 4.0), scaled=st.booleans(), seed=st.integers(0, 2**16))
def test_one_pass_student_equals_the_two_calls(w, scaled, seed):
    """displacement_ds_and_velocity_of: one stacked call (a network that takes n_tangent) gives the f, ∂_s f and u of
    the separate calls, values and gradients."""
    torch.manual_seed(seed)
    rows, plain = _OwnTangentRows(3), Conditional(3)
    plain.load_state_dict(rows.state_dict())
    x, x2, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    t, s, s2 = torch.rand(4) * 0.5 + 0.5, torch.rand(4) * 0.5, torch.rand(4)
    wt = torch.full((4,), w)
    assert takes_tangent_rows(rows) and not takes_tangent_rows(plain) and not takes_tangent_rows(_OwnTangent(3))
    outs = []
    for F in (rows, plain):
        out = displacement_ds_and_velocity_of(F, x, t, s, x2, s2, wt, {"y": y}, scaled)
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out)
        outs.append([*out, *torch.autograd.grad(loss, list(F.parameters()))])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_tangent_rows_need_a_network_that_takes_them():
    x, t = torch.randn(4, 3), torch.rand(4)
    with pytest.raises(TypeError, match="n_tangent"):
        guided_call_and_ds(_OwnTangent(3), x, t, t, None, {"y": torch.zeros(4, dtype=torch.long)}, n_tangent=2)


@settings(max_examples=10, deadline=None)
@given(w=st.floats(1.0, 4.0), seed=st.integers(0, 2**16), own=st.booleans())
def test_cfg_unscaled_parameterization(w, seed, own):
    """scaled=False: f = (s − t) F(x, t, s, c, 1/w), ∂_s f by central differences, u = F(x, s, s, c, 1/w) — the
    network is told β = 1/w but its output is not multiplied by w (official ``do_scale_param: false``)."""
    torch.manual_seed(seed)
    F = _OwnTangent(3) if own else Conditional(3)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    t, s = torch.rand(4) * 0.5 + 0.5, torch.rand(4) * 0.5
    beta = torch.full((4,), 1 / w)
    f, dfds = displacement_and_ds(F, x, t, s, w, scaled=False, y=y)
    torch.testing.assert_close(f, (s - t)[:, None] * F(x, t, s, y, beta))
    h = 1e-6
    fd = ((s + h - t)[:, None] * F(x, t, s + h, y, beta) - (s - h - t)[:, None] * F(x, t, s - h, y, beta)) / (2 * h)
    torch.testing.assert_close(dfds, fd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(velocity(F, x, s, w, scaled=False, y=y), F(x, s, s, y, beta))
    jump = NetworkJump(F, w, scaled=False, y=y)
    torch.testing.assert_close(jump.displacement(x, t, s), f)
    torch.testing.assert_close(jump.displacement_and_ds(x, t, s)[1], dfds)
    if w > 1.01:  # the switch changes the output by the factor w
        scaled = displacement(F, x, t, s, w, y=y)
        torch.testing.assert_close(scaled, w * f)


@settings(max_examples=6, deadline=None)
@given(w=st.floats(1.0, 3.0), n_steps=st.integers(1, 4), scaled=st.booleans(), seed=st.integers(0, 2**16))
def test_few_step_sampler_follows_the_official_generator(w, n_steps, scaled, seed):
    """The official generate_images.generator_fn: x ← x + (t_{k+1} − t_k)·F(x, t_k, t_{k+1}, c, 1/w)·out with
    out = w if do_scale_param else 1, on t = linspace(1, 0, N + 1) (float64)."""
    from tvm_theory.sampling import sample_few_step

    torch.manual_seed(seed)
    F = Conditional(3)
    x1, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    ours = sample_few_step(NetworkJump(F, w, scaled=scaled, y=y), x1, n_steps)
    grid, x, beta = torch.linspace(1, 0, n_steps + 1, dtype=torch.float64), x1.clone(), torch.full((5,), 1 / w)
    with torch.no_grad():
        for t_cur, t_next in zip(grid[:-1], grid[1:]):
            x = x + (t_next - t_cur) * F(x, t_cur.expand(5), t_next.expand(5), y, beta) * (w if scaled else 1.0)
    torch.testing.assert_close(ours, x)


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
