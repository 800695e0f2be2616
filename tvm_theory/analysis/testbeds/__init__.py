"""Analytic test beds: data laws p0 whose marginal velocity u, flow map ψ and σ² are known (docs/THEORY.md §1, §7).

API
---
* ``Gaussian(mean, std)`` — p0 = N(μ, σ0² I), any dimension; u, ψ, σ² in closed form; also ``sigma(s)``,
  ``kappa(s)``, ``marginal(s)``.
* ``GaussianMixture(weights, means, covs)`` — exact u (log-space posterior weights; u(x, 0) = −x), ψ by an adaptive
  ODE solve with a per-sample error estimate, σ² as a Rao–Blackwellized Monte Carlo estimate with standard error.
* Both are :class:`TestBed`: ``dim``, ``velocity(x, t)``, ``flow(x, t, s)``, ``flow_with_error(x, t, s) ->
  OdeSolution(x, err, err_max)``, ``sample(n, generator=)``, ``sample_path(n, t, generator=) -> PathSample``,
  ``cond_variance(t) -> Estimate``. x has shape (B, D); t, s are scalars in [0, 1] (``velocity`` also takes (B,)).
* ``LowRankGaussianMixture(weights, means, factors, noise_std)`` — Σ_k π_k N(m_k, F_k F_kᵀ + τ² I) at latent scale
  (D in the thousands): exact marginal, class and guided velocities by Woodbury (never a D × D matrix; GPU-capable),
  ``labels=None, guidance=1.0`` on ``velocity``, ``flow``, ``flow_with_error`` and ``sample``; exact σ²(t | k);
  ``ConditionedLowRank(bed, labels, guidance)`` fixes the labels and guidance as a plain (x, t) test bed.
* 2-D shapes: ``ring(n_modes=8, radius=2, std=0.3)``, ``moons(...)``, ``checkerboard(...)``;
  ``make_testbed(name, **overrides)`` with names in ``TESTBEDS``: gaussian-1d, gaussian-2d, ring8, moons,
  checkerboard.
* Closed-form jump models (:class:`tvm_theory.param.JumpModel`): ``BiasedFlowJump(gaussian, bias)`` — u_θ = u + r
  with f_θ its exact flow (docs/THEORY.md §4) — and ``PolynomialAffineJump`` (random affine models); both are
  ``AffineJump`` (coefficients for the exact bounds of ``tvm_theory.analysis.bounds.exact_affine_report``).
"""
from __future__ import annotations

from typing import Callable

from .base import TestBed
from .gaussian import Gaussian
from .jumps import AffineJump, BiasedFlowJump, PolynomialAffineJump
from .lowrank import ConditionedLowRank, LowRankGaussianMixture
from .mixture import GaussianMixture
from .shapes import checkerboard, moons, ring

TESTBEDS: dict[str, Callable[..., TestBed]] = {
    "gaussian-1d": lambda **kw: Gaussian([1.0], 0.5, **kw),
    "gaussian-2d": lambda **kw: Gaussian([1.0, -1.0], 0.5, **kw),
    "ring8": lambda **kw: ring(n_modes=8, **kw),
    "moons": moons,
    "checkerboard": checkerboard,
}


def make_testbed(name: str, **overrides) -> TestBed:
    """The registered test bed ``name``; keyword overrides go to its factory (e.g. ``radius=4`` for ring8,
    ``dtype=torch.float32``)."""
    if name not in TESTBEDS:
        raise ValueError(f"name: unknown test bed {name!r}; expected one of {sorted(TESTBEDS)}")
    return TESTBEDS[name](**overrides)


__all__ = ["TestBed", "Gaussian", "GaussianMixture", "LowRankGaussianMixture", "ConditionedLowRank",
           "ring", "moons", "checkerboard", "TESTBEDS", "make_testbed",
           "AffineJump", "BiasedFlowJump", "PolynomialAffineJump"]
