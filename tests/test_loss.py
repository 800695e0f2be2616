"""The practical TVM loss and the exact objective against independent float64 computations (docs/THEORY.md §3)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nets import Conditional
from toy.models import MLP
from tvm_theory.loss import CFGConfig, exact_objective_terms, prepare_batch, student_forward, tvm_loss, tvm_step_loss
from tvm_theory.time_samplers import GapSampler, TimeSample


pytestmark = pytest.mark.usefixtures("float64")


def _fd_ds(F, x, t, s, *cond, h=1e-6):
    """Central difference of (s − t) F(x, t, s, ...) in s — differentiable in the parameters."""
    def f(s_):
        return (s_ - t)[:, None] * F(x, t, s_, *cond)
    return (f(s + h) - f(s - h)) / (2 * h)


def _manual_plain(F, T, x0, x1, ts):
    t, s, r = ts.t, ts.s, ts.s_fm
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    f = (s - t)[:, None] * F(x_t, t, s)
    target = T(x_t + f.detach(), s, s).detach()
    terminal = (s < t).double() * ((_fd_ds(F, x_t, t, s) - target) ** 2).mean(1)
    x_r = (1 - r)[:, None] * x0 + r[:, None] * x1
    fm = ((F(x_r, r, r) - (x1 - x0)) ** 2).mean(1)
    return (terminal + fm).mean(), terminal, fm


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(1, 3), n=st.integers(2, 9))
def test_plain_loss_and_gradients_match_independent_computation(seed, dim, n):
    torch.manual_seed(seed)
    F, T = MLP(dim, 10, 2, 4), MLP(dim, 10, 2, 4)
    x0, x1 = torch.randn(n, dim), torch.randn(n, dim)
    ts = GapSampler()(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ours = tvm_step_loss(F, T, x0, ts, x1=x1)
    ref, terminal, fm = _manual_plain(F, T, x0, x1, ts)
    torch.testing.assert_close(ours.loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.terminal_per_example, terminal.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.fm_per_example, fm.detach())
    params = list(F.parameters())
    g_ours = torch.autograd.grad(ours.loss, params)
    g_ref = torch.autograd.grad(ref, params)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in T.parameters())  # the target gets no gradient


def test_terminal_term_vanishes_where_s_equals_t():
    torch.manual_seed(0)
    F = MLP(2, 8, 1, 4)
    t = torch.rand(6)
    ts = TimeSample(t=t, s=t.clone(), s_fm=torch.rand(6))
    out = tvm_step_loss(F, F, torch.randn(6, 2), ts)
    assert float(out.terminal_per_example.abs().max()) == 0.0
    assert float(out.fm) > 0


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), w=st.floats(1.0, 3.0), p_drop=st.sampled_from([0.0, 0.3, 1.0]))
def test_cfg_loss_matches_independent_computation(seed, w, p_drop):
    torch.manual_seed(seed)
    n, dim, null = 8, 2, 3
    F, T = Conditional(dim), Conditional(dim)
    x0, x1, y = torch.randn(n, dim), torch.randn(n, dim), torch.randint(0, 3, (n,))
    ts = GapSampler()(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cfg = CFGConfig(null_class=null, weight=w, label_dropout=p_drop)
    batch = prepare_batch(x0, ts, x1=x1, y=y, cfg=cfg, generator=torch.Generator().manual_seed(seed + 1))
    dropped = batch.y == null
    assert bool((batch.w[dropped] == 1).all()) and bool((batch.w[~dropped] == w).all())
    assert bool((batch.y[~dropped] == y[~dropped]).all())
    ours = tvm_loss(batch, student_forward(F, batch), T, null_class=null)

    t, s, r, yb, wb = ts.t, ts.s, ts.s_fm, batch.y, batch.w
    beta = 1 / wb
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    f = wb[:, None] * (s - t)[:, None] * F(x_t, t, s, yb, beta)
    u_tgt = (wb[:, None] * T(x_t + f.detach(), s, s, yb, beta)).detach()
    dfds = wb[:, None] * _fd_ds(F, x_t, t, s, yb, beta)
    terminal = (s < t).double() / wb**2 * ((dfds - u_tgt) ** 2).mean(1)
    x_r = (1 - r)[:, None] * x0 + r[:, None] * x1
    u_unc = T(x_r, r, r, torch.full_like(yb, null), torch.ones(n)).detach()
    target = wb[:, None] * (x1 - x0) + (1 - wb[:, None]) * u_unc
    fm = ((wb[:, None] * F(x_r, r, r, yb, beta) - target) ** 2).mean(1) / wb**2
    ref = (terminal + fm).mean()
    torch.testing.assert_close(ours.loss, ref, rtol=1e-6, atol=1e-9)
    for a, b in zip(torch.autograd.grad(ours.loss, list(F.parameters())),
                    torch.autograd.grad(ref, list(F.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _official_wrapper_loss(F, T, x0, x1, t, s, s_prime, y, beta, null, do_scale_param):
    """The official TVMWrapper.forward (lumalabs/tvm training/wrapper.py), restated in float64 with ∂_s F by central
    differences: out = 1/β if do_scale_param else 1; f = x_t + (s − t)·F·out, df/ds = out·(F + (s − t)·∂_s F);
    teacher velocities T(f, s, s, c, β) and T(x_{s′}, s′, s′, ∅, 1), the student's F(x_{s′}, s′, s′, c, β), both
    conditional ones times 1/β when do_scale_param; terminal = mean(((df/ds − T_c)·β)²) (0 where s = t),
    v_target = v/β + (1 − 1/β)·T_∅, fm = mean(((F_{s′} − v_target)·β)²); the loss is their batch mean."""
    w = 1 / beta
    out = w[:, None] if do_scale_param else 1.0
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    x_sp = (1 - s_prime)[:, None] * x0 + s_prime[:, None] * x1
    h = 1e-6
    F_ts = F(x_t, t, s, y, beta)
    dF_ds = (F(x_t, t, s + h, y, beta) - F(x_t, t, s - h, y, beta)) / (2 * h)
    f_ts = x_t + (s - t)[:, None] * F_ts * out
    df_ds = out * (F_ts + (s - t)[:, None] * dF_ds)
    with torch.no_grad():
        T_cond = T(f_ts, s, s, y, beta)
        T_uncond = T(x_sp, s_prime, s_prime, torch.full_like(y, null), torch.ones_like(beta))
    F_ss = F(x_sp, s_prime, s_prime, y, beta)
    if do_scale_param:
        T_cond, F_ss = w[:, None] * T_cond, w[:, None] * F_ss
    terminal = ((df_ds - T_cond) * beta[:, None]).pow(2).mean(1)
    terminal = torch.where(torch.isclose(s, t), 0 * terminal, terminal)
    v_target = w[:, None] * (x1 - x0) + (1 - w[:, None]) * T_uncond
    fm = ((F_ss - v_target) * beta[:, None]).pow(2).mean(1)
    return (terminal + fm).mean(), terminal, fm


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), w=st.floats(1.0, 3.0), p_drop=st.sampled_from([0.0, 0.3]),
       do_scale_param=st.booleans())
def test_loss_matches_the_official_wrapper_with_and_without_do_scale_param(seed, w, p_drop, do_scale_param):
    """CFGConfig(scaled=do_scale_param) gives the official code's loss and gradients, recomputed by hand."""
    torch.manual_seed(seed)
    n, dim, null = 8, 2, 3
    F, T = Conditional(dim), Conditional(dim)
    x0, x1, y = torch.randn(n, dim), torch.randn(n, dim), torch.randint(0, 3, (n,))
    ts = GapSampler()(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cfg = CFGConfig(null_class=null, weight=w, label_dropout=p_drop, scaled=do_scale_param)
    batch = prepare_batch(x0, ts, x1=x1, y=y, cfg=cfg, generator=torch.Generator().manual_seed(seed + 1))
    assert batch.scaled == do_scale_param
    ours = tvm_loss(batch, student_forward(F, batch), T, null_class=null)
    ref, terminal, fm = _official_wrapper_loss(F, T, x0, x1, ts.t, ts.s, ts.s_fm, batch.y, 1 / batch.w, null,
                                               do_scale_param)
    torch.testing.assert_close(ours.terminal_per_example, terminal.detach(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ours.fm_per_example, fm.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.loss, ref, rtol=1e-6, atol=1e-9)
    for a, b in zip(torch.autograd.grad(ours.loss, list(F.parameters())),
                    torch.autograd.grad(ref, list(F.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_label_dropout_rate_and_random_guidance_range():
    n = 20_000
    x0, y = torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)
    ts = GapSampler()(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cfg = CFGConfig(null_class=9, weight_range=(1.5, 4.0), label_dropout=0.1)
    batch = prepare_batch(x0, ts, y=y, cfg=cfg, generator=torch.Generator().manual_seed(1))
    dropped = batch.y == 9
    frac = float(dropped.double().mean())
    assert abs(frac - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n)
    beta = 1 / batch.w[~dropped]
    assert float(beta.min()) >= 1 / 4.0 - 1e-12 and float(beta.max()) <= 1 / 1.5 + 1e-12
    assert float(beta.max() - beta.min()) > 0.3  # actually random, spread over the range


def test_exact_objective_for_the_exact_gaussian_flow():
    """For the exact flow of p0 = N(μ, σ0²) the terminal term is 0 and E‖u(x_s, s) − v‖² = σ²(s) (docs/THEORY.md §7)."""
    mu, sig0 = 0.7, 1.8

    class ExactFlow:
        @staticmethod
        def sd(s):
            return torch.sqrt((1 - s) ** 2 * sig0**2 + s**2)

        def displacement(self, x, t, s):
            return (1 - s)[:, None] * mu + (self.sd(s) / self.sd(t))[:, None] * (x - (1 - t)[:, None] * mu) - x

        def displacement_and_ds(self, x, t, s):
            return torch.func.jvp(lambda s_: self.displacement(x, t, s_), (s,), (torch.ones_like(s),))

        def velocity(self, x, s):
            kappa = (s - (1 - s) * sig0**2) / self.sd(s) ** 2
            return -mu + kappa[:, None] * (x - (1 - s)[:, None] * mu)

    n = 200_000
    gen = torch.Generator().manual_seed(0)
    x0 = mu + sig0 * torch.randn(n, 1, generator=gen)
    x1 = torch.randn(n, 1, generator=gen)
    t, s = torch.full((n,), 0.9), torch.full((n,), 0.35)
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    x_s = (1 - s)[:, None] * x0 + s[:, None] * x1
    terminal, fm = exact_objective_terms(ExactFlow(), x_t, t, s, x_s, x1 - x0)
    assert float(terminal.max()) < 1e-20
    c, var = 0.35 - 0.65 * sig0**2, 0.65**2 * sig0**2 + 0.35**2
    sigma2 = 1 + sig0**2 - c**2 / var
    assert abs(float(fm.mean()) - sigma2) < 4 * float(fm.std()) / math.sqrt(n)


@pytest.mark.parametrize("kwargs, match", [
    (dict(times=TimeSample(t=torch.full((3,), 0.2), s=torch.full((3,), 0.5), s_fm=torch.rand(3))), "s ≤ t"),
    (dict(y=torch.zeros(3, dtype=torch.long)), "cfg is None"),
    (dict(cfg=CFGConfig(null_class=1)), "y: expected labels"),
    (dict(x1=torch.zeros(3, 3)), "x0 and x1: expected equal shapes"),
])
def test_prepare_batch_rejects_bad_input(kwargs, match):
    args = dict(times=TimeSample(t=torch.full((3,), 0.5), s=torch.full((3,), 0.2), s_fm=torch.rand(3))) | kwargs
    with pytest.raises(ValueError, match=match):
        prepare_batch(torch.zeros(3, 2), **args)


def test_cfg_config_validates():
    with pytest.raises(ValueError, match="weight: expected a guidance weight"):
        CFGConfig(null_class=0, weight=0.5)
    with pytest.raises(ValueError, match="label_dropout"):
        CFGConfig(null_class=0, label_dropout=1.5)


@pytest.mark.parametrize("bad, match", [
    (dict(x0_nan=True), "x0: expected finite values"),
    (dict(t=1.5), r"times: expected t, s, s_fm in \[0, 1\]"),
    (dict(s=0.9, t=0.5), "s ≤ t for every example"),
    (dict(short=True), r"times.t: expected shape \(4,\)"),
])
def test_prepare_batch_validates_the_batch_once_with_clear_errors(bad, match):
    x0 = torch.zeros(4, 3)
    if bad.get("x0_nan"):
        x0[1, 2] = float("nan")
    t = torch.full((3 if bad.get("short") else 4,), bad.get("t", 0.8))
    times = TimeSample(t=t, s=torch.full((4,), bad.get("s", 0.2)), s_fm=torch.full((4,), 0.3))
    with pytest.raises(ValueError, match=match):
        prepare_batch(x0, times)
