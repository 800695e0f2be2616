"""The isotropic Gaussian test bed p0 = N(μ, σ0² I), everything in closed form (docs/THEORY.md §7).

With σ_s² = (1 − s)²σ0² + s², c(s) = s − (1 − s)σ0², κ(s) = c(s)/σ_s² = d/ds log σ_s:

* p_s = N((1 − s)μ, σ_s² I);
* u(x, s) = −μ + κ(s)(x − (1 − s)μ);
* ψ(x, t, s) = (1 − s)μ + (σ_s/σ_t)(x − (1 − t)μ);
* σ²(s) = D(1 + σ0² − c(s)²/σ_s²).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...checks import check_finite, expand_like
from ..estimate import Estimate
from ..ode import OdeSolution
from .base import TestBed, scalar_time


class Gaussian(TestBed):
    """p0 = N(mean, std² I) in any dimension D = len(mean); ``std`` > 0 (a point mass has no flow at t = 0).

    Args:
        mean: the mean μ, a float (D = 1) or a sequence/tensor of shape (D,).
        std: σ0 > 0.
        dtype, device: of every tensor the bed returns (float64 by default).
    """

    def __init__(self, mean, std: float, *, dtype: torch.dtype = torch.float64, device=None):
        mu = torch.as_tensor(mean, dtype=dtype, device=device)
        if mu.ndim == 0:
            mu = mu.reshape(1)
        if mu.ndim != 1 or mu.numel() == 0:
            raise ValueError(f"mean: expected a float or shape (D,), got shape {tuple(mu.shape)}")
        check_finite("mean", mu)
        std = float(std)
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"std: expected a finite σ0 > 0, got {std!r}")
        self.mean, self.std = mu, std
        self.dtype, self.device = dtype, mu.device

    def __repr__(self) -> str:
        return f"Gaussian(mean={self.mean.tolist()}, std={self.std})"

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    # ---- scalar profiles (work on floats and tensors alike) ----------------------------------------------------
    def sigma(self, s):
        """σ_s = sqrt((1 − s)²σ0² + s²), the standard deviation of p_s per coordinate."""
        v = (1 - s) ** 2 * self.std**2 + s**2
        return torch.sqrt(v) if torch.is_tensor(v) else math.sqrt(v)

    def kappa(self, s):
        """κ(s) = (s − (1 − s)σ0²) / σ_s² = d/ds log σ_s; u is affine in x with slope κ(s) (L(s) = |κ(s)|)."""
        return (s - (1 - s) * self.std**2) / ((1 - s) ** 2 * self.std**2 + s**2)

    def marginal(self, s: float) -> tuple[Tensor, float]:
        """(mean, per-coordinate variance) of p_s = N((1 − s)μ, σ_s² I)."""
        s = scalar_time("s", s)
        return (1 - s) * self.mean, self.sigma(s) ** 2

    # ---- test-bed interface ------------------------------------------------------------------------------------
    def velocity(self, x: Tensor, t) -> Tensor:
        """u(x, t) = −μ + κ(t)(x − (1 − t)μ) (docs/THEORY.md §7)."""
        t = expand_like(self._times(x, t), x)
        return -self.mean + self.kappa(t) * (x - (1 - t) * self.mean)

    def flow_with_error(self, x: Tensor, t, s) -> OdeSolution:
        """ψ(x, t, s) = (1 − s)μ + (σ_s/σ_t)(x − (1 − t)μ), exact (error 0); t, s scalars or shape (B,)."""
        te = expand_like(self._times(x, t), x)
        se = expand_like(self._times(x, s, "s"), x)
        y = (1 - se) * self.mean + (self.sigma(se) / self.sigma(te)) * (x - (1 - te) * self.mean)
        return OdeSolution(x=y, err=torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), err_max=0.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        self._check_n(n)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device)
        return self.mean + self.std * eps

    def cond_variance(self, t: float, **_) -> Estimate:
        """σ²(t) = D(1 + σ0² − c(t)²/σ_t²), exact (docs/THEORY.md §7); the Monte Carlo keywords of the mixture
        (n, generator) are accepted and ignored, so both beds share one call."""
        t = scalar_time("t", t)
        c = t - (1 - t) * self.std**2
        return Estimate(self.dim * (1 + self.std**2 - c**2 / self.sigma(t) ** 2))
