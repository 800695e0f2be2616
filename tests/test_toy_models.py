"""Toy models (docs/THEORY.md §2, §7): the SiLU constant, the Lipschitz-controlled MLP, the Gaussian-preserving affine
model and its exact Lipschitz constant, each against an independent computation."""
import math

import mpmath as mp
import pytest
import torch

from toy.models import SILU_LIPSCHITZ, MLP, AffineModel, sinusoidal_embedding
from tvm_theory.analysis.lipschitz import certified_mlp_lipschitz
from tvm_theory.loss import tvm_step_loss
from tvm_theory.param import displacement
from tvm_theory.time_samplers import UniformSampler


def test_silu_lipschitz_constant():
    # reference: the maximizer of σ'(x) is the root of the second derivative (mpmath, 30 digits)
    mp.mp.dps = 30
    silu = lambda y: y / (1 + mp.exp(-y))  # noqa: E731
    x_star = mp.findroot(lambda y: mp.diff(silu, y, 2), 2.4)
    sup = mp.diff(silu, x_star)
    assert SILU_LIPSCHITZ >= sup  # a certificate's constant must not be below the sup
    assert SILU_LIPSCHITZ - sup < 1e-9
    x = torch.linspace(-20, 20, 400_001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(torch.nn.functional.silu(x).sum(), x)
    assert float(d.abs().max()) <= SILU_LIPSCHITZ  # the derivative's minimum (≈ −0.0998) is smaller in size


def test_embedding_frequencies_and_errors():
    t = torch.tensor([0.0, 0.3], dtype=torch.float64)
    e = sinusoidal_embedding(t, 8, max_freq=27.0)
    freqs = torch.tensor([1.0, 3.0, 9.0, 27.0], dtype=torch.float64)
    torch.testing.assert_close(e[1], torch.cat([torch.cos(0.3 * freqs), torch.sin(0.3 * freqs)]))
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_embedding(t, 6 + 1)
    with pytest.raises(ValueError, match="max_freq"):
        sinusoidal_embedding(t, 8, max_freq=0.5)


def test_spectral_normalization_keeps_the_certificate_near_its_cap():
    torch.manual_seed(0)
    cap, depth = 3.0, 2
    model = MLP(2, 32, depth, emb_dim=8, lipschitz_cap=cap)
    target = MLP(2, 32, depth, emb_dim=8, lipschitz_cap=cap).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):  # large steps: without normalization the norms would grow freely
        x0 = 3 * torch.randn(64, 2, generator=g)
        loss = tvm_step_loss(model, target, x0, UniformSampler()(64, generator=g), generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # let the power iteration (one step per training forward) catch up with the last update
        for _ in range(10):
            model(x0, torch.ones(64), torch.zeros(64))
    model.eval()
    cert = certified_mlp_lipschitz(model.linears, model.act_lipschitz, 2)
    # each layer is normalized to cap^(1/(depth+1)) by power iteration, so the product is cap·ℓ^depth up to the
    # power iteration's slack; the first layer counts only its x-columns (≤ the full norm)
    assert cert.value <= 1.02 * cap * SILU_LIPSCHITZ**depth
    full = [float(torch.linalg.matrix_norm(l.weight.detach(), ord=2)) for l in model.linears]
    assert max(full) == pytest.approx(cap ** (1 / (depth + 1)), rel=0.02)
    log10, exact = model.lipschitz_certificate(torch.tensor([0.0, 1.0]))
    assert not exact and torch.allclose(log10, torch.full((2,), cert.log10_value, dtype=torch.float64))


def test_affine_model_pushes_gaussians_exactly_and_has_the_exact_constant():
    torch.manual_seed(1)
    model = AffineModel(2, hidden=16).double()
    with torch.no_grad():
        model.head.weight.normal_()
        model.head.bias.normal_()
    mean = torch.tensor([0.5, -1.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    m, c = model.push_gaussian(mean, cov, 0.9, 0.2)
    # Monte Carlo reference: push samples through the jump x + f_θ(x, t, s)
    g = torch.Generator().manual_seed(0)
    x = mean + torch.randn(200_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    with torch.no_grad():
        y = x + displacement(model, x, 0.9, 0.2)
    torch.testing.assert_close(y.mean(0), m, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(y.T), c, atol=0.03, rtol=0.02)
    # exact Lipschitz constant of u_θ(·, s) = A(s, s)x + b: ‖A(s, s)‖₂, attained along the top singular vector
    s = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    log10, exact = model.lipschitz_certificate(s)
    a, _ = model.coefficients(s, s)
    assert exact
    torch.testing.assert_close(10**log10, torch.linalg.svdvals(a.detach())[:, 0])


def test_models_reject_bad_sizes():
    with pytest.raises(ValueError, match="positive int sizes"):
        MLP(2, 0, 2)
    with pytest.raises(ValueError, match="lipschitz_cap"):
        MLP(2, 8, 2, lipschitz_cap=-1.0)
    with pytest.raises(ValueError, match="positive int sizes"):
        AffineModel(0)
    assert math.isfinite(SILU_LIPSCHITZ)
