"""The low-rank Gaussian-mixture test bed against a dense float64 implementation at small D (issue 18, part 5):
velocities (marginal, class, guided), their tangents, flows, σ², samples and moments, and its argument errors."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.integrate import solve_ivp

from tvm_theory.analysis.testbeds import ConditionedLowRank, LowRankGaussianMixture

F64 = torch.float64


def params(seed, k, d, r, tau, mean_scale=1.5):
    g = torch.Generator().manual_seed(seed)
    pi = torch.rand(k, generator=g, dtype=F64) + 0.1
    return (pi / pi.sum(), mean_scale * torch.randn(k, d, generator=g, dtype=F64),
            torch.randn(k, d, r, generator=g, dtype=F64), tau)


class Dense:
    """The same law with explicit D × D covariances, inverses and log-determinants (docs/THEORY.md §7)."""

    def __init__(self, pi, means, factors, tau):
        d = means.shape[1]
        self.pi, self.m = pi, means
        self.cov = factors @ factors.transpose(1, 2) + tau**2 * torch.eye(d, dtype=F64)
        self.eye = torch.eye(d, dtype=F64)

    def parts(self, x, t):
        a = 1 - t
        C = a**2 * self.cov + t**2 * self.eye
        z = x[:, None, :] - a * self.m[None]
        y = torch.linalg.solve(C[None], z[..., None])[..., 0]  # C_k⁻¹ z_k, (B, K, D)
        u_k = torch.einsum("kij,bkj->bki", t * self.eye - a * self.cov, y) - self.m[None]
        d = x.shape[1]
        log_lik = -0.5 * ((z * y).sum(-1) + torch.logdet(C)[None] + d * math.log(2 * math.pi))
        post = torch.softmax(log_lik + self.pi.log(), dim=1)
        return post, u_k

    def velocity(self, x, t, labels=None, w=1.0):
        post, u_k = self.parts(x, t)
        u = (post[..., None] * u_k).sum(1)
        if labels is None:
            return u
        u_c = u_k[torch.arange(len(x)), labels]
        return w * u_c + (1 - w) * u

    def cond_variance_class(self, t):
        a = 1 - t
        C = a**2 * self.cov + t**2 * self.eye
        G = t * self.eye - a * self.cov
        return torch.stack([torch.trace(self.cov[k] + self.eye - G[k] @ torch.linalg.solve(C[k], G[k]))
                            for k in range(len(self.pi))])

    def per_sample_variance(self, x, t):
        """Σ_k w_k [σ²(t | k) + ‖u_k − u‖²] at each x (the integrand of σ²(t))."""
        post, u_k = self.parts(x, t)
        u = (post[..., None] * u_k).sum(1, keepdim=True)
        return (post * (self.cond_variance_class(t)[None] + ((u_k - u) ** 2).sum(-1))).sum(1)


shapes = st.tuples(st.integers(1, 4), st.integers(2, 6), st.integers(1, 3)).filter(lambda s: s[2] <= s[1])


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), tau=st.floats(0.05, 1.0), t=st.floats(0.0, 1.0),
       w=st.floats(1.0, 4.0), b=st.integers(1, 5))
def test_velocities_match_dense(shape, seed, tau, t, w, b):
    k, d, r = shape
    p = params(seed, k, d, r, tau)
    bed, dense = LowRankGaussianMixture(*p), Dense(*p)
    g = torch.Generator().manual_seed(seed + 1)
    x = 2 * torch.randn(b, d, generator=g, dtype=F64)
    labels = torch.randint(k, (b,), generator=g)
    for lab, ww in ((None, 1.0), (labels, 1.0), (labels, w)):
        got, want = bed.velocity(x, t, lab, ww), dense.velocity(x, t, lab, ww)
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-9), (lab, ww, (got - want).abs().max())


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), t=st.floats(0.0, 1.0), w=st.floats(1.0, 4.0))
def test_closed_form_tangent_matches_autodiff(shape, seed, t, w):
    k, d, r = shape
    bed = LowRankGaussianMixture(*params(seed, k, d, r, 0.2))
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(4, d, generator=g, dtype=F64), torch.randn(4, d, generator=g, dtype=F64)
    labels = torch.randint(k, (4,), generator=g)
    for lab, ww in ((None, 1.0), (labels, 1.0), (labels, w)):
        u, jv = bed.velocity_jvp(x, t, v, lab, ww)
        u2, jv2 = torch.func.jvp(lambda z: bed.velocity(z, t, lab, ww), (x,), (v,))
        assert torch.allclose(u, u2, rtol=1e-12, atol=1e-12)
        assert torch.allclose(jv, jv2, rtol=1e-8, atol=1e-9), (jv - jv2).abs().max()


def test_per_row_times_and_endpoints():
    p = params(3, 3, 5, 2, 0.3)
    bed, dense = LowRankGaussianMixture(*p), Dense(*p)
    x = torch.randn(4, 5, dtype=F64)
    t = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=F64)
    got = bed.velocity(x, t)
    for i in range(4):
        assert torch.allclose(got[i], dense.velocity(x[i:i + 1], float(t[i]))[0], atol=1e-10)
    assert torch.allclose(bed.velocity(x, 0.0), -x, atol=1e-12)  # u(x, 0) = E[x1] − x
    assert torch.allclose(bed.velocity(x, 1.0), x - bed.weights @ bed.means, atol=1e-12)  # u(x, 1) = x − E[x0]


def test_flows_against_scipy_and_closed_form():
    p = params(7, 3, 4, 2, 0.25)
    bed, dense = LowRankGaussianMixture(*p), Dense(*p)
    x1 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    labels = torch.tensor([0, 2, 1])
    for lab, w in ((None, 1.0), (labels, 2.0)):
        sol = bed.flow_with_error(x1, 1.0, 0.0, lab, w)
        li = None if lab is None else lab
        ref = solve_ivp(lambda r, z: dense.velocity(torch.as_tensor(z).view(3, 4), r, li, w).reshape(-1).numpy(),
                        (1.0, 0.0), x1.reshape(-1).numpy(), rtol=1e-10, atol=1e-10, method="DOP853").y[:, -1]
        assert np.allclose(sol.x.reshape(-1).numpy(), ref, atol=1e-6)
        assert sol.err_max < 1e-6
    # class flow with w = 1 is the Gaussian's exact map ψ(x1, 1, 0 | k) = m_k + Σ_k^{1/2} x1 (docs/THEORY.md §7)
    z = bed.flow(x1, 1.0, 0.0, labels)
    for i, k in enumerate(labels.tolist()):
        ev, evec = torch.linalg.eigh(dense.cov[k])
        want = dense.m[k] + (evec * ev.sqrt()) @ evec.T @ x1[i]
        assert torch.allclose(z[i], want, atol=1e-6)


def test_cond_variance_exact_and_monte_carlo():
    p = params(11, 3, 5, 2, 0.4)
    bed, dense = LowRankGaussianMixture(*p), Dense(*p)
    for t in (0.0, 0.3, 0.8, 1.0):
        assert torch.allclose(bed.class_cond_variance(t), dense.cond_variance_class(t), rtol=1e-10)
    lab = torch.tensor([0, 2])
    assert bed.cond_variance(0.5, labels=lab).value == pytest.approx(float(dense.cond_variance_class(0.5)[lab].mean()))
    assert bed.cond_variance(0.0, labels=1).value == pytest.approx(5.0)  # σ²(0 | k) = D
    est = bed.cond_variance(0.6, n=4000, generator=torch.Generator().manual_seed(3))
    x_t = bed.sample_path(4000, 0.6, torch.Generator().manual_seed(3)).x_t  # the same draws
    assert est.value == pytest.approx(float(dense.per_sample_variance(x_t, 0.6).mean()), rel=1e-9)
    # independent: the flow-matching residual E‖v − u(x_t)‖² by plain Monte Carlo
    path = bed.sample_path(20_000, 0.6, torch.Generator().manual_seed(4))
    resid = ((path.v - bed.velocity(path.x_t, 0.6)) ** 2).sum(1)
    assert abs(est.value - float(resid.mean())) < 4 * math.hypot(est.se, float(resid.std()) / math.sqrt(20_000))


def test_samples_and_moments():
    p = params(5, 2, 4, 2, 0.3)
    bed, dense = LowRankGaussianMixture(*p), Dense(*p)
    n = 40_000
    lab = torch.arange(n) % 2
    x = bed.sample(n, torch.Generator().manual_seed(0), lab)
    for k in range(2):
        xk = x[lab == k]
        assert torch.allclose(xk.mean(0), dense.m[k], atol=5 * float(dense.cov[k].diagonal().max().sqrt()) / math.sqrt(n / 2))
        assert torch.allclose(torch.cov(xk.T), dense.cov[k], atol=0.1 * float(dense.cov[k].abs().max()))
    mean, w = bed.moments()
    mix_mean = dense.pi @ dense.m
    mix_cov = (dense.pi[:, None, None] * (dense.cov + torch.einsum("ki,kj->kij", dense.m, dense.m))).sum(0) \
        - torch.outer(mix_mean, mix_mean)
    assert torch.allclose(mean, mix_mean, atol=1e-12)
    assert torch.allclose(w @ w.T + 0.09 * torch.eye(4, dtype=F64), mix_cov, atol=1e-10)
    x1 = torch.randn(3, 4, dtype=F64)
    ev, evec = torch.linalg.eigh(mix_cov)
    assert torch.allclose(bed.gaussian_fit_flow(x1), mix_mean + x1 @ ((evec * ev.sqrt()) @ evec.T), atol=1e-10)
    assert torch.allclose(bed.class_means(torch.tensor([1, 0])), dense.m[[1, 0]])


def test_guided_samples_come_from_the_ode():
    bed = LowRankGaussianMixture(*params(2, 3, 3, 1, 0.3))
    lab = torch.tensor([0, 1, 2, 0])
    got = bed.sample(4, torch.Generator().manual_seed(9), lab, guidance=2.0)
    x1 = torch.randn(4, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    assert torch.allclose(got, bed.flow(x1, 1.0, 0.0, lab, 2.0))


def test_conditioned_view_tiles_labels():
    bed = LowRankGaussianMixture(*params(4, 3, 4, 2, 0.3))
    lab = torch.tensor([2, 0])
    view = ConditionedLowRank(bed, lab, 1.5)
    x = torch.randn(6, 4, dtype=F64)
    assert torch.allclose(view.velocity(x, 0.4), bed.velocity(x, 0.4, lab.repeat(3), 1.5))
    assert torch.allclose(view.velocity_jvp(x, 0.4, x)[1], bed.velocity_jvp(x, 0.4, x, lab.repeat(3), 1.5)[1])
    with pytest.raises(ValueError, match="multiple of 2"):
        view.velocity(x[:3], 0.4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(weights=[0.5, 0.6]), "weights: expected a probability vector"),
    (dict(weights=[1.5, -0.5]), "weights"),
    (dict(noise_std=0.0), "noise_std"),
    (dict(noise_std=float("nan")), "noise_std"),
    (dict(means=torch.zeros(3, 4, dtype=F64)), "means"),
    (dict(factors=torch.zeros(2, 4, 5, dtype=F64)), "factors"),
    (dict(factors=torch.zeros(2, 3, 1, dtype=F64)), "factors"),
])
def test_constructor_errors_name_the_argument(kwargs, match):
    base = dict(weights=[0.5, 0.5], means=torch.zeros(2, 4, dtype=F64), factors=torch.ones(2, 4, 1, dtype=F64),
                noise_std=0.1)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LowRankGaussianMixture(base.pop("weights"), base.pop("means"), base.pop("factors"), base.pop("noise_std"))


def test_call_errors_name_the_argument():
    bed = LowRankGaussianMixture(*params(0, 2, 3, 1, 0.2))
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="labels: expected classes in"):
        bed.velocity(x, 0.5, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels: expected shape"):
        bed.velocity(x, 0.5, torch.tensor([0]))
    with pytest.raises(ValueError, match="labels: expected integer"):
        bed.velocity(x, 0.5, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="guidance: .* needs labels"):
        bed.velocity(x, 0.5, None, 2.0)
    with pytest.raises(ValueError, match="guidance"):
        bed.sample(2, labels=torch.tensor([0, 1]), guidance=0.5)
    with pytest.raises(ValueError, match="x: expected shape"):
        bed.velocity(torch.zeros(2, 4, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="t: expected"):
        bed.flow(x, 1.5, 0.0)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), tau=st.floats(0.05, 1.0), t=st.floats(0.0, 1.0))
def test_class_variance_matches_dense(shape, seed, tau, t):
    k, d, r = shape
    p = params(seed, k, d, r, tau)
    got, want = LowRankGaussianMixture(*p).class_cond_variance(t), Dense(*p).cond_variance_class(t)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)
