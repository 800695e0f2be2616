"""The Gaussian-mixture test bed p0 = Σ_k π_k N(μ_k, Σ_k): exact velocity, ψ by ODE (docs/THEORY.md §7).

Given component k, x_t ~ N(m_k, C_k) with m_k = (1 − t)μ_k, C_k = (1 − t)²Σ_k + t² I, and
u_k(x) = (t I − (1 − t)Σ_k) C_k⁻¹ (x − m_k) − μ_k; u(x, t) = Σ_k w_k(x) u_k(x) with posterior weights
w_k(x) ∝ π_k N(x; m_k, C_k), computed in log space. Everything is evaluated in the eigenbasis Σ_k = U_k diag(λ_k) U_kᵀ,
where C_k has eigenvalues (1 − t)²λ + t² and u_k the slopes (t − (1 − t)λ)/((1 − t)²λ + t²).
At t = 0, x_t = x0 carries no information about x1, so u(x, 0) = E[x1] − x = −x exactly; this case is handled
explicitly (with a singular Σ_k, C_k is singular there).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ...checks import check_finite
from ..estimate import Estimate
from ..ode import OdeSolution, odeint_with_error, odeint
from .base import TestBed, scalar_time


class GaussianMixture(TestBed):
    """p0 = Σ_k π_k N(μ_k, Σ_k) on R^D.

    Args:
        weights: π, shape (K,), non-negative, normalized here (must have a positive sum).
        means: μ, shape (K, D).
        covs: Σ, shape (K, D, D), symmetric positive semi-definite (singular allowed: point masses, segments).
        dtype, device: of every tensor the bed returns (float64 by default).
        rtol, atol: tolerances of the flow's ODE solve (ψ's error estimate compares with a 10× tighter solve).
    """

    def __init__(self, weights, means, covs, *, dtype: torch.dtype = torch.float64, device=None,
                 rtol: float = 1e-8, atol: float = 1e-8):
        pi, mu, cov = (torch.as_tensor(np.asarray(v) if isinstance(v, (list, tuple)) else v, dtype=dtype,
                                       device=device) for v in (weights, means, covs))
        if pi.ndim != 1 or pi.numel() == 0:
            raise ValueError(f"weights: expected shape (K,), got {tuple(pi.shape)}")
        k = pi.shape[0]
        if mu.ndim != 2 or mu.shape[0] != k:
            raise ValueError(f"means: expected shape ({k}, D) to match weights, got {tuple(mu.shape)}")
        d = mu.shape[1]
        if cov.shape != (k, d, d):
            raise ValueError(f"covs: expected shape ({k}, {d}, {d}), got {tuple(cov.shape)}")
        for name, v in (("weights", pi), ("means", mu), ("covs", cov)):
            check_finite(name, v)
        if float(pi.min()) < 0 or float(pi.sum()) <= 0:
            raise ValueError("weights: expected non-negative weights with a positive sum")
        asym = float((cov - cov.transpose(1, 2)).abs().max())
        scale = max(1.0, float(cov.abs().max()))
        if asym > 1e-10 * scale:
            raise ValueError(f"covs: expected symmetric matrices, max |Σ − Σᵀ| = {asym:.3g}")
        # Diagonal covariances (every built-in shape) are their own eigen-decomposition: keep coordinates as they are.
        self.diagonal = bool((cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))).abs().max() == 0)
        if self.diagonal:
            evals = torch.diagonal(cov, dim1=1, dim2=2).clone()
            evecs = torch.eye(d, dtype=dtype, device=mu.device).expand(k, d, d)
        else:
            evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
        if float(evals.min()) < -1e-10 * scale:
            bad = int(evals.min(dim=1).values.argmin())
            raise ValueError(f"covs: expected positive semi-definite matrices, component {bad} has eigenvalue "
                             f"{float(evals[bad].min()):.3g}")
        self.weights, self.means, self.covs = pi / pi.sum(), mu, cov
        self.evals, self.evecs = evals.clamp_min(0.0), evecs  # (K, D), (K, D, D)
        self.dtype, self.device = dtype, mu.device
        self.rtol, self.atol = rtol, atol

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _posterior(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log posterior weights (B, K), u_k(x) (B, K, D), per-component tr Cov(v | x_t, k) (B, K)) for t > 0."""
        te = t[:, None, None]  # (B, 1, 1)
        lam = self.evals[None]  # (1, K, D)
        var = ((1 - te) ** 2 * lam + te**2).clamp_min(torch.finfo(x.dtype).tiny)  # eigenvalues of C_k
        slope = (te - (1 - te) * lam) / var  # eigenvalues of (tI − (1 − t)Σ_k) C_k⁻¹
        z = x[:, None, :] - (1 - te) * self.means[None]  # x − m_k, (B, K, D)
        # coordinates in the eigenbasis of Σ_k, y = U_kᵀ z, and back, U_k (slope ⊙ y)
        y = z if self.diagonal else torch.einsum("kji,bkj->bki", self.evecs, z)
        back = slope * y if self.diagonal else torch.einsum("kij,bkj->bki", self.evecs, slope * y)
        u_k = back - self.means[None]
        log_lik = -0.5 * ((y**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        log_w = torch.log_softmax(log_lik + self.weights.log()[None], dim=1)
        tau = (lam + 1 - (te - (1 - te) * lam) ** 2 / var).sum(-1)  # tr[Σ + I − (tI−(1−t)Σ)C⁻¹(tI−(1−t)Σ)]
        return log_w, u_k, tau

    def velocity(self, x: Tensor, t) -> Tensor:
        """u(x, t) = Σ_k w_k(x) u_k(x), posterior weights in log space; u(x, 0) = −x exactly."""
        t = self._times(x, t)
        at_zero = t == 0
        if not bool(at_zero.any()):
            log_w, u_k, _ = self._posterior(x, t)
            return (log_w.exp()[..., None] * u_k).sum(1)
        u, keep = -x.clone(), ~at_zero
        if bool(keep.any()):
            log_w, u_k, _ = self._posterior(x[keep], t[keep])
            u[keep] = (log_w.exp()[..., None] * u_k).sum(1)
        return u

    def _field(self, z: Tensor, r: float) -> Tensor:
        return self.velocity(z, min(max(r, 0.0), 1.0))

    def flow_with_error(self, x: Tensor, t, s) -> OdeSolution:
        """ψ(x, t, s) by adaptive Dormand–Prince at (rtol, atol), per-sample error = distance to a 10× tighter
        solve (tvm_theory.analysis.ode). t, s: scalars in [0, 1]."""
        self._check_x(x)
        t, s = scalar_time("t", t), scalar_time("s", s)
        return odeint_with_error(self._field, x, t, s, rtol=self.rtol, atol=self.atol)

    def flow(self, x: Tensor, t, s) -> Tensor:
        """ψ(x, t, s) by one adaptive solve at (rtol, atol); use ``flow_with_error`` for its error estimate."""
        self._check_x(x)
        t, s = scalar_time("t", t), scalar_time("s", s)
        return odeint(self._field, x, t, s, rtol=self.rtol, atol=self.atol)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        self._check_n(n)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device)
        scaled = self.evals[k].sqrt() * eps
        return self.means[k] + (scaled if self.diagonal else torch.einsum("nij,nj->ni", self.evecs[k], scaled))

    def cond_variance(self, t: float, n: int = 20_000, generator: torch.Generator | None = None) -> Estimate:
        """σ²(t) by a Rao–Blackwellized Monte Carlo estimate with its standard error.

        σ²(t) = E_{x_t}[ tr Cov(v | x_t) ] and, given x_t, v is a mixture of Gaussians with weights w_k(x_t),
        means u_k(x_t) and covariances Cov(v | x_t, k) = Σ_k + I − (tI − (1 − t)Σ_k) C_k⁻¹ (tI − (1 − t)Σ_k), so
        tr Cov(v | x_t) = Σ_k w_k [tr Cov(v | x_t, k) + ‖u_k − u‖²] exactly; only the outer mean over n samples
        x_t ~ p_t is random. σ²(0) = D exactly (u(x, 0) = −x, v + x0 = x1).
        """
        t = scalar_time("t", t)
        if t == 0.0:
            return Estimate(float(self.dim))
        x_t = self.sample_path(n, t, generator).x_t
        log_w, u_k, tau = self._posterior(x_t, torch.full((n,), t, dtype=self.dtype, device=self.device))
        w = log_w.exp()
        u = (w[..., None] * u_k).sum(1, keepdim=True)
        per_sample = (w * (tau + ((u_k - u) ** 2).sum(-1))).sum(1)
        return Estimate(float(per_sample.mean()), float(per_sample.std() / math.sqrt(n)))
