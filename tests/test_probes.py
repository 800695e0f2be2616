"""Probes of the Lipschitz ingredients (docs/THEORY.md §5, §6, §8), each checked against an independent reference: the
exact spectral norm of a linear map (SVD), the exact Jacobian of an MLP (float64 autograd + SVD) and its certified
constant, central finite differences for ∂_s F, and hand-computed RMS for the hooks."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from full_scale.model.dit import DiT, dit_config
from toy.models import MLP
from tvm_theory.analysis.lipschitz import certified_mlp_lipschitz
from tvm_theory.param import velocity
from tvm_theory.analysis.probes import (NormRecorder, ProbeSet, certified_vs_local, ds_norms, path_probes,
                               velocity_jacobian_norms)


class LinearInX(nn.Module):
    """F(x, t, s, y, β) = (1 + β) W(s) x + b[y] with W(s) = W0 + s W1 on x of shape (B, C, H, W) — affine in x, so
    u_θ(x, s) = w (1 + 1/w) W(s) x + … has the exact Jacobian norm (w + 1) σ_max(W(s)) (β = 1 when unguided)."""

    def __init__(self, shape, gen):
        super().__init__()
        d = math.prod(shape)
        self.shape = shape
        self.w0 = nn.Parameter(torch.randn(d, d, generator=gen, dtype=torch.float64))
        self.w1 = nn.Parameter(torch.randn(d, d, generator=gen, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(3, d, generator=gen, dtype=torch.float64))

    def weight(self, s: float) -> torch.Tensor:
        return self.w0 + s * self.w1

    def forward(self, x, t, s, y=None, beta=None):
        beta = torch.ones_like(t) if beta is None else beta
        W = self.w0[None] + s[:, None, None] * self.w1[None]  # (B, d, d)
        out = (1 + beta)[:, None] * torch.einsum("bij,bj->bi", W, x.flatten(1))
        if y is not None:
            out = out + self.b[y]
        return out.view(x.shape)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), side=st.integers(1, 3), guided=st.booleans())
def test_jacobian_norm_of_a_linear_map_is_exact(seed, side, guided):
    gen = torch.Generator().manual_seed(seed)
    shape = (1, side, side)
    net = LinearInX(shape, gen)
    s_grid = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    x0, noise = torch.randn(5, *shape, generator=gen, dtype=torch.float64), torch.randn(5, *shape, generator=gen,
                                                                                         dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=gen)
    w = 2.5 if guided else None
    jac = velocity_jacobian_norms(net, path_probes(x0, noise, s_grid), s_grid, w=w, n_iter=3000, tol=1e-15,
                                  generator=gen, y=y)
    factor = (2.5 + 1.0) if guided else 2.0
    for k, s in enumerate(s_grid.tolist()):
        exact = factor * float(torch.linalg.matrix_norm(net.weight(s).detach(), ord=2))
        assert torch.allclose(jac.per_point[k], torch.full((5,), exact, dtype=torch.float64), rtol=1e-6)
        assert float(jac.per_point[k].max()) <= exact * (1 + 1e-12)
    assert jac.per_point.shape == (3, 5) and jac.max == pytest.approx(float(jac.per_s_max.max()))


def _exact_jacobian_norms(model: MLP, x: torch.Tensor, s: float) -> torch.Tensor:
    """‖∂_x u_θ(x, s)‖₂ per row from the full float64 Jacobian (reverse-mode autograd) and an SVD."""
    jac = torch.func.vmap(torch.func.jacrev(lambda z: velocity(model, z[None], s)[0]))(x)
    return torch.linalg.matrix_norm(jac, ord=2)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(2, 4), depth=st.integers(1, 3), scale=st.floats(0.5, 3.0))
def test_mlp_estimate_matches_exact_jacobian_and_stays_below_certificate(seed, dim, depth, scale):
    torch.manual_seed(seed)
    model = MLP(dim, 16, depth, emb_dim=4).double()
    with torch.no_grad():
        for layer in model.linears:
            layer.weight.mul_(scale)
    s_grid = torch.tensor([0.1, 0.7], dtype=torch.float64)
    probes = path_probes(torch.randn(32, dim, dtype=torch.float64), 2 * torch.randn(32, dim, dtype=torch.float64),
                         s_grid)
    # up to 1000 power iterations (most points stop early at tol): 150 left a point whose top two singular values
    # are close 0.5% short of its norm (seed=101, dim=4, depth=3, scale=1.4375), which rtol=1e-3 rightly caught
    jac = velocity_jacobian_norms(model, probes, s_grid, n_iter=1000, tol=1e-10)
    cert = certified_mlp_lipschitz(model.linears, model.act_lipschitz, dim)
    for k, s in enumerate(s_grid.tolist()):
        exact = _exact_jacobian_norms(model, probes[k], s).detach()
        assert torch.all(jac.per_point[k] <= exact * (1 + 1e-10))
        assert torch.allclose(jac.per_point[k], exact, rtol=1e-3)
    assert jac.max <= cert.value
    both = certified_vs_local(model, model.linears, model.act_lipschitz, dim, probes, s_grid, n_iter=20)
    assert both.log10_ratio >= -1e-9
    assert both.log10_certified == pytest.approx(cert.log10_value)
    assert float(both.local_max.max()) <= jac.max * (1 + 1e-10)  # fewer iterations never overshoot


class GuidedToy(nn.Module):
    """A toy MLP that also reads β, so the guided ∂_s F̃ = w ∂_s F(…, β = 1/w) differs from the unguided one."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP(3, 16, 2, emb_dim=4).double()

    def forward(self, x, t, s, beta=None):
        out = self.mlp(x, t, s)
        return out if beta is None else out * (1 + beta[:, None] * s[:, None])


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), w=st.one_of(st.none(), st.floats(1.0, 4.0)))
def test_ds_norm_matches_central_finite_differences(seed, w):
    torch.manual_seed(seed)
    net = GuidedToy()
    x = torch.randn(7, 3, dtype=torch.float64)
    t = torch.rand(7, dtype=torch.float64) * 0.8 + 0.2
    s = t * torch.rand(7, dtype=torch.float64) * 0.9 + 0.01
    h = 1e-6

    def F(s_):
        cond = {} if w is None else {"beta": torch.full_like(s_, 1.0 / w)}
        return (1.0 if w is None else w) * net(x, t, s_, **cond)

    fd = ((F(s + h) - F(s - h)) / (2 * h)).detach().norm(dim=1)
    got = ds_norms(net, x, t, s, w=w)
    assert torch.allclose(got, fd, rtol=1e-6, atol=1e-9)


def _tiny_dit(**switches) -> DiT:
    cfg = dit_config(None, input_size=4, in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                     num_classes=3, freq_dim=16, **switches)
    torch.manual_seed(0)
    model = DiT(cfg)
    with torch.no_grad():  # leave adaLN-Zero: random modulation and output weights make every quantity non-trivial
        for mod in [b.modulation for b in model.blocks] + [model.final.modulation]:
            mod.linear.weight.normal_(0, 0.5)
            mod.linear.bias.normal_(0, 0.5)
        model.final.linear.weight.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("mod_norm", [True, False])
def test_recorder_hooks_the_matched_modules_and_sees_unit_rms_under_mod_norm(mod_norm):
    model = _tiny_dit(mod_norm=mod_norm, rms_norm=True, qk_norm=True)
    x, t, s, y = torch.randn(6, 1, 4, 4), torch.rand(6), torch.zeros(6), torch.randint(0, 3, (6,))
    patterns = [r"blocks\.\d+\.modulation", r"final\.modulation", r"blocks\.\d+"]
    with NormRecorder(model, patterns) as rec:
        model(x, t, s, y=y)
    expected = ({f"blocks.{b}.modulation[{i}]" for b in (0, 1) for i in range(6)}
                | {f"final.modulation[{i}]" for i in range(2)} | {"blocks.0", "blocks.1"})
    summary = rec.summary()
    assert set(summary) == expected
    assert {name for name, _ in rec.modules} == {"blocks.0.modulation", "blocks.1.modulation", "final.modulation",
                                                 "blocks.0", "blocks.1"}
    mod_rows = torch.cat([rec.rows(k) for k in expected if "modulation" in k])
    assert mod_rows.numel() == 6 * 14  # batch × (6 + 6 + 2) chunks
    if mod_norm:
        assert torch.allclose(mod_rows, torch.ones_like(mod_rows), atol=1e-4)
    else:
        assert float((mod_rows - 1).abs().max()) > 0.1
    assert summary["blocks.0"]["rows"] == 6 * 4  # batch × tokens
    with torch.no_grad():  # hooks are gone after the block
        model(x, t, s, y=y)
    assert rec.rows("blocks.0").numel() == 6 * 4


def test_recorder_rms_equals_hand_computation_and_rejects_unmatched_patterns():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(10, 5)
    with NormRecorder(net, [r"\d"]) as rec:
        net(x)
    with torch.no_grad():
        h0 = net[0](x)
    assert torch.allclose(rec.rows("0"), h0.pow(2).mean(-1).sqrt())
    assert torch.allclose(rec.rows("2"), net(x).pow(2).mean(-1).sqrt())
    assert rec.summary()["1"]["rms_max"] == pytest.approx(float(torch.tanh(h0).pow(2).mean(-1).sqrt().max()))
    with pytest.raises(ValueError, match="patterns"):
        NormRecorder(net, [r"blocks\.\d+"])
    with pytest.raises(ValueError, match="patterns"):
        NormRecorder(net, r"\d")


def test_probe_set_measures_a_dit_in_eval_mode_and_restores_its_mode():
    model = _tiny_dit(lipschitz=True, spectral_norm=True).train()
    gen = torch.Generator().manual_seed(0)
    probes = ProbeSet(x0=torch.randn(4, 1, 4, 4, generator=gen), noise=torch.randn(4, 1, 4, 4, generator=gen),
                      y=torch.tensor([0, 1, 2, 0]), s_grid=torch.tensor([0.2, 0.8]), t=torch.full((4,), 0.9),
                      s=torch.full((4,), 0.3), patterns=[r"blocks\.\d+\.modulation"])
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    out = probes.measure(model, w=1.5, n_iter=3)
    assert model.training
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())  # no spectral-norm update in eval
    assert {"lip_median", "lip_max", "lip_max_s0", "lip_max_s1", "ds_median", "ds_max"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    assert 0 < out["lip_median"] <= out["lip_max"] == max(out["lip_max_s0"], out["lip_max_s1"])
    assert out["rms_max/blocks.0.modulation[0]"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="s ≤ t"):
        ProbeSet(x0=probes.x0, noise=probes.noise, y=None, s_grid=probes.s_grid, t=torch.full((4,), 0.2),
                 s=torch.full((4,), 0.3))
