"""The guided (CFG) reference flow of a class-conditional Gaussian mixture (docs/THEORY.md §10; proofs/README.md §9.6).

Take a mixture p0 = Σ_k π_k N(μ_k, Σ_k) whose class c is its component c, so p0(· | c) = N(μ_c, Σ_c). Both the
unconditional velocity u(x, t) and the class velocity u(x, t | c) are exact (``GaussianMixture.velocity``). With
guidance weight w the field that TVM's guided target converges to is

    u^w(x, t | c) = u(x, t) + w (u(x, t | c) − u(x, t)) = w u(x, t | c) + (1 − w) u(x, t).

Its flow ψ^w (an adaptive ODE solve with a per-sample error estimate) pushes N(0, I) to the laws
p^w_t = ψ^w(·, 1, t)#N(0, I). For w = 1 these are the interpolant's conditional marginals p_t(· | c) and p^1_0 =
p0(· | c). For w ≠ 1, u^w is in general not the marginal velocity of any interpolant, p^w_t is known only through ψ^w,
and p^w_0 is not p0(· | c) (nor the tilted p0(x | c)^w p0(x)^{1−w} in general). ``sample_path`` therefore draws
the interpolant of the CLASS data p0(· | c) — the law the training loss sees — which is not p^w_t when w ≠ 1; the
few-step report evaluates B on the flow's own samples (``b_from="flow"``) for that reason.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..estimate import Estimate
from ..ode import OdeSolution, odeint, odeint_with_error
from .base import TestBed, scalar_time
from .mixture import GaussianMixture


class GuidedMixture(TestBed):
    """The guided field u^w(· | c) of ``mixture`` for class ``cls`` (component ``cls``) and weight ``w`` ≥ 1."""

    def __init__(self, mixture: GaussianMixture, cls: int, w: float, *, rtol: float = 1e-8, atol: float = 1e-8):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture: expected a GaussianMixture, got {type(mixture).__name__}")
        if not (isinstance(cls, int) and 0 <= cls < mixture.n_components):
            raise ValueError(f"cls: expected a component index in [0, {mixture.n_components}), got {cls!r}")
        if not w >= 1.0:
            raise ValueError(f"w: expected a guidance weight ≥ 1, got {w!r}")
        self.mixture, self.cls, self.w = mixture, cls, float(w)
        self.conditional = GaussianMixture(torch.ones(1, dtype=mixture.dtype), mixture.means[cls:cls + 1],
                                           mixture.covs[cls:cls + 1], dtype=mixture.dtype, rtol=rtol, atol=atol)
        self.dtype, self.device = mixture.dtype, mixture.device
        self.rtol, self.atol = rtol, atol

    def __repr__(self) -> str:
        return f"GuidedMixture(class={self.cls}, w={self.w}, K={self.mixture.n_components})"

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def velocity(self, x: Tensor, t) -> Tensor:
        """u^w(x, t | c) = u(x, t) + w (u(x, t | c) − u(x, t)) (exact)."""
        u = self.mixture.velocity(x, t)
        return u + self.w * (self.conditional.velocity(x, t) - u)

    def _field(self, z: Tensor, r: float) -> Tensor:
        return self.velocity(z, min(max(r, 0.0), 1.0))

    def flow_with_error(self, x: Tensor, t, s) -> OdeSolution:
        """ψ^w(x, t, s) by adaptive Dormand–Prince, error = distance to a 10× tighter solve."""
        self._check_x(x)
        return odeint_with_error(self._field, x, scalar_time("t", t), scalar_time("s", s), rtol=self.rtol,
                                 atol=self.atol)

    def flow(self, x: Tensor, t, s) -> Tensor:
        self._check_x(x)
        return odeint(self._field, x, scalar_time("t", t), scalar_time("s", s), rtol=self.rtol, atol=self.atol)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of p^w_0 = ψ^w(·, 1, 0)#N(0, I) (through the ODE)."""
        self._check_n(n)
        return self.flow(torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device), 1.0, 0.0)

    def sample_path(self, n: int, t, generator: torch.Generator | None = None):
        """The interpolant of the class data p0(· | c) — the training loss's law, equal to p^w_t only for w = 1."""
        return self.conditional.sample_path(n, t, generator)

    def cond_variance(self, t: float, **kwargs) -> Estimate:
        """σ²(t) of the class interpolant (the irreducible part of the w = 1 flow-matching loss)."""
        return self.conditional.cond_variance(t, **kwargs)
