"""The 2-Wasserstein distance: exact for empirical measures, sliced for large n, closed form for Gaussians (§6, §7).

API
---
* ``w2(x, y, a=None, b=None, num_itermax=10_000_000) -> float`` — W2 (not squared) between the empirical measures
  Σ a_i δ_{x_i} and Σ b_j δ_{y_j} (uniform weights by default) by exact optimal transport (POT's network simplex
  ``ot.emd2``, squared Euclidean cost); raises ``RuntimeError`` if the solver did not reach an optimum.
* ``sliced_w2(x, y, n_projections=256, generator=None) -> Estimate`` — the sliced 2-Wasserstein distance
  (E_θ W2²(θ·x, θ·y))^{1/2} over uniform directions θ, a Monte Carlo estimate with its standard error. It is a
  different metric (SW2 ≤ W2), cheap for large n.
* ``w2_gaussian(m1, C1, m2, C2) -> float`` — W2 (not squared) between N(m1, C1) and N(m2, C2) in closed form,
  W2² = ‖m1 − m2‖² + tr(C1 + C2 − 2 (C2^{1/2} C1 C2^{1/2})^{1/2}) (docs/THEORY.md §7); eigen-decompositions in float64
  on the inputs' device, fast up to D ≈ 2048. ``w2_gaussian(...)**2`` is the Fréchet distance of features.

Inputs are torch tensors or numpy arrays; point clouds have shape (n, D).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import torch
from torch import Tensor

from ..checks import check_finite
from .estimate import Estimate


def _points(name: str, x) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float64) if not torch.is_tensor(x) else x.detach().to(torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a point cloud of shape (n, D) with n ≥ 1, got {tuple(x.shape)}")
    check_finite(name, x)
    return x


def _weights(name: str, w, n: int) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(torch.as_tensor(w, dtype=torch.float64).cpu(), dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name}: expected weights of shape ({n},), got {w.shape}")
    if not np.isfinite(w).all() or w.min() < 0 or abs(w.sum() - 1.0) > 1e-9:
        raise ValueError(f"{name}: expected finite non-negative weights summing to 1 (sum {w.sum():.12g})")
    return w


def w2(x, y, a=None, b=None, *, num_itermax: int = 10_000_000) -> float:
    """Exact W2 between two weighted point clouds: sqrt(min_γ Σ γ_ij ‖x_i − y_j‖²) over couplings of a and b.

    Raises ``OverflowError`` when a squared distance overflows float64 (points of size ≳ 1e154: the cost matrix, not
    the solver, is the problem), and ``RuntimeError`` when POT's solver reports anything but an optimum (e.g. the
    iteration limit; docs/THEORY.md §6.1: n = 5000 needs ``num_itermax`` ≥ 1e7).
    """
    x, y = _points("x", x), _points("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y: expected the same dimension, got {x.shape[1]} and {y.shape[1]}")
    a, b = _weights("a", a, x.shape[0]), _weights("b", b, y.shape[0])
    xn, yn = x.cpu().numpy(), y.cpu().numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        cost = ot.dist(xn, yn, metric="sqeuclidean")
    if not np.isfinite(cost).all():
        biggest = max(float(np.abs(xn).max()), float(np.abs(yn).max()))
        raise OverflowError(f"w2: squared distances overflow float64 (largest coordinate {biggest:.3g}); the points "
                            "are not a distribution one can compare (a diverged model?)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the same condition is reported through the log below
        value, log = ot.emd2(a, b, cost, numItermax=int(num_itermax), log=True)
    if log.get("warning") is not None or log.get("result_code") != 1:
        raise RuntimeError(f"w2: the exact OT solver did not converge (result_code={log.get('result_code')}, "
                           f"{log.get('warning')}); raise num_itermax (now {num_itermax})")
    return math.sqrt(max(float(value), 0.0))


def _quantiles_sorted(v: Tensor, n: int) -> Tensor:
    """The empirical quantile function of each column of v (m, P) at the n mid-points (i + ½)/n, shape (n, P)."""
    v = v.sort(dim=0).values
    m = v.shape[0]
    if m == n:
        return v
    pos = ((torch.arange(n, dtype=v.dtype, device=v.device) + 0.5) / n * m - 0.5).clamp(0, m - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    frac = (pos - lo)[:, None]
    return v[lo] * (1 - frac) + v[hi] * frac


def sliced_w2(x, y, n_projections: int = 256, generator: torch.Generator | None = None) -> Estimate:
    """Sliced W2: (E_θ W2²(θ·x, θ·y))^{1/2}, θ uniform on the sphere, each 1-D W2² by sorting.

    Equal sizes give the exact 1-D distance per direction; unequal sizes compare linearly interpolated quantile
    functions on max(n, m) mid-points (an approximation). The standard error over directions is mapped to the
    square root by the delta method.
    """
    x, y = _points("x", x), _points("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y: expected the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if not isinstance(n_projections, int) or n_projections < 2:
        raise ValueError(f"n_projections: expected an int ≥ 2, got {n_projections!r}")
    y = y.to(x.device)
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    n = max(x.shape[0], y.shape[0])
    per_dir = ((_quantiles_sorted(x @ theta, n) - _quantiles_sorted(y @ theta, n)) ** 2).mean(0)  # (P,)
    sq, sq_se = float(per_dir.mean()), float(per_dir.std() / math.sqrt(n_projections))
    value = math.sqrt(max(sq, 0.0))
    return Estimate(value, sq_se / (2 * value) if value > 0 else math.sqrt(sq_se))


def _check_symmetric(name: str, c: Tensor) -> None:
    scale = max(float(c.abs().max()), 1e-300)
    asym = float((c - c.T).abs().max())
    if asym > 1e-8 * scale:
        raise ValueError(f"{name}: expected a symmetric covariance, max |C − Cᵀ| = {asym:.3g} (scale {scale:.3g})")


def _congruent_spectrum(name: str, c: Tensor, other: Tensor) -> Tensor | None:
    """Eigenvalues of Lᵀ c L where other = L Lᵀ (Cholesky), or None if ``other`` is not positive definite.

    They are the eigenvalues of c·other, hence of other^{1/2} c other^{1/2}; by Sylvester's law of inertia they
    have c's signs, so a negative one means c is not PSD.
    """
    chol, info = torch.linalg.cholesky_ex(other)
    if int(info) != 0:
        return None
    mid = chol.T @ c @ chol
    evals = torch.linalg.eigvalsh(0.5 * (mid + mid.T))
    if float(evals.min()) < -1e-9 * max(float(evals.abs().max()), 1e-300):
        raise ValueError(f"{name}: expected a positive semi-definite covariance, found a negative direction "
                         f"(eigenvalue {float(evals.min()):.3g} of the congruent matrix)")
    return evals


def _psd_sqrt(name: str, c: Tensor) -> Tensor:
    """Symmetric PSD square root by eigen-decomposition; clear error if c is not PSD (to rounding)."""
    evals, evecs = torch.linalg.eigh(0.5 * (c + c.T))
    if float(evals.min()) < -1e-9 * max(float(evals.abs().max()), 1e-300):
        raise ValueError(f"{name}: expected a positive semi-definite covariance, smallest eigenvalue "
                         f"{float(evals.min()):.3g}")
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def w2_gaussian(m1, C1, m2, C2) -> float:
    """W2 between N(m1, C1) and N(m2, C2): means of shape (D,), covariances (D, D) symmetric PSD (docs/THEORY.md §7).

    tr (C2^{1/2} C1 C2^{1/2})^{1/2} = Σ sqrt(eigenvalues of Lᵀ C1 L) with C2 = L Lᵀ (the same spectrum as C1·C2),
    so one Cholesky factorization and one symmetric eigenvalue problem in float64 suffice; if C2 is singular the
    roles are swapped, and if both are singular symmetric square roots by eigen-decomposition are used.
    """
    dev = m1.device if torch.is_tensor(m1) else None
    m1, m2 = (torch.as_tensor(v, dtype=torch.float64, device=dev) for v in (m1, m2))
    C1, C2 = (torch.as_tensor(v, dtype=torch.float64, device=dev) for v in (C1, C2))
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"m1 and m2: expected equal shapes (D,), got {tuple(m1.shape)} and {tuple(m2.shape)}")
    d = m1.shape[0]
    for name, c in (("C1", C1), ("C2", C2)):
        if c.shape != (d, d):
            raise ValueError(f"{name}: expected shape ({d}, {d}) to match the means, got {tuple(c.shape)}")
    for name, v in (("m1", m1), ("m2", m2), ("C1", C1), ("C2", C2)):
        check_finite(name, v)
    _check_symmetric("C1", C1)
    _check_symmetric("C2", C2)
    evals = _congruent_spectrum("C1", C1, C2)
    if evals is None:
        evals = _congruent_spectrum("C2", C2, C1)
    if evals is None:  # both singular (or not PSD): the slow, general route
        r2 = _psd_sqrt("C2", C2)
        _psd_sqrt("C1", C1)
        mid = r2 @ C1 @ r2
        evals = torch.linalg.eigvalsh(0.5 * (mid + mid.T))
    cross = evals.clamp_min(0).sqrt().sum()
    sq = float(((m1 - m2) ** 2).sum() + torch.trace(C1) + torch.trace(C2) - 2 * cross)
    return math.sqrt(max(sq, 0.0))
