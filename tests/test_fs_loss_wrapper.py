"""The trainer's loss wrapper (StudentStep) on a tiny DiT in float64: its JVP ∂_s f equals central finite
differences, and the gradient through the tangent equals a finite difference in parameter space."""
import pytest
import torch
from test_fs_models import randomize_

from full_scale.model.dit import DiT, dit_config
from full_scale.run import StudentStep
from tvm_theory.loss import CFGConfig, prepare_batch
from tvm_theory.param import displacement
from tvm_theory.time_samplers import GapSampler


def tiny_f64(**switches) -> DiT:
    torch.manual_seed(0)
    cfg = dit_config(input_size=4, in_channels=1, patch_size=2, hidden_size=16, depth=2, num_heads=2,
                     num_classes=3, freq_dim=8, time_scale=10.0, **switches)
    return randomize_(DiT(cfg).double(), std=0.2)


def make_batch(n: int = 4):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    times = GapSampler()(n, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return prepare_batch(x0, times, y=y, cfg=CFGConfig(null_class=3, weight=1.7, label_dropout=0.3), generator=g)


@pytest.mark.parametrize("switches", [{}, {"lipschitz": True}])
def test_jvp_matches_central_differences(switches):
    model, batch = tiny_f64(**switches), make_batch()
    f, dfds, u_fm = StudentStep(model)(batch)
    h = 1e-6
    cond = dict(y=batch.y)
    f_plus = displacement(model, batch.x_t, batch.t, (batch.s + h).clamp(max=1.0), batch.w, **cond)
    f_minus = displacement(model, batch.x_t, batch.t, batch.s - h, batch.w, **cond)
    fd = (f_plus - f_minus) / (2 * h)
    # Central differences in float64 with h = 1e-6: truncation O(h²) and rounding O(ε/h) are both ≈ 1e-10.
    assert float(dfds.detach().abs().max()) > 1e-2  # a non-trivial derivative
    torch.testing.assert_close(dfds, fd, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(f, displacement(model, batch.x_t, batch.t, batch.s, batch.w, **cond))


def test_gradient_through_the_tangent_matches_finite_differences():
    # L(θ) = ⟨G, ∂_s f_θ⟩: its autograd gradient (backward through the JVP) against (L(θ + εd) − L(θ − εd)) / 2ε.
    model, batch = tiny_f64(lipschitz=True), make_batch()
    step = StudentStep(model)
    G = torch.randn(batch.x_t.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss = (step(batch)[1] * G).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    d = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(params)]
    analytic = sum(float((g * di).sum()) for g, di in zip(grads, d))
    eps = 1e-6

    def shifted(sign: float) -> float:
        with torch.no_grad():
            for p, di in zip(params, d):
                p.add_(sign * eps * di)
        value = float((step(batch)[1] * G).sum())
        with torch.no_grad():
            for p, di in zip(params, d):
                p.sub_(sign * eps * di)
        return value

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    assert abs(analytic) > 1e-3
    assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-8)
