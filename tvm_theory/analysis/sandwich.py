"""W2 sandwiched between sample-based bounds, for model samples paired with exact-flow samples on the same noise
(docs/THEORY.md §5, §6, §7). Shared by ``python -m full_scale.verify`` and any report whose samples are paired.

Setting: y_i = the model's sample from noise x1_i, z_i = ψ(x1_i, 1, 0) the exact flow's sample from the same noise
(with a per-sample ODE error estimate), i = 1…n, in R^D with D up to thousands.

* **Upper bound** — the paired RMSE D = (E‖y − z‖²)^{1/2}. The pairing is a coupling, so W2(law y, law z) ≤ D
  (docs/THEORY.md §5). The estimate carries a bootstrap standard error and a 95% percentile interval, and the ODE
  error ``ode`` = RMS of z's error estimates (by Minkowski it moves D̂ by at most that much), added to the interval.
* **Lower bounds** — (i) the mean gap ‖E y − E z‖ ≤ W2 (Jensen), estimated without bias from the paired differences
  d_i = y_i − z_i: ‖d̄‖² − tr Ĉov(d)/n is unbiased for ‖E d‖²; (ii) Gelbrich's bound W2 ≥ W2(N(m_y, S_y),
  N(m_z, S_z)), the Gaussian W2 of docs/THEORY.md §7 between the two laws' means and covariances, evaluated at the
  empirical moments. With n ≤ D the plug-in is biased upward (two independent sample sets of the same law give a
  positive value), so it is reported beside that finite-sample floor; both come with a bootstrap standard error
  and the normal interval ± 1.96 se. It is a
  lower bound on W2 only to the extent the moments are estimated well: an estimate, not a certificate.
* **Sliced W2 and exact W2** — ``transport.sliced_w2`` on all n, and ``transport.w2`` (exact OT, POT) on the first
  ``n_pot``, each beside its floor (the same distance between two independent exact sample sets).

Gelbrich without D × D matrices: with A = (y − ȳ)/√n and B = (z − z̄)/√n (n × D), S_y = AᵀA and S_z = BᵀB, and
tr (S_z^{1/2} S_y S_z^{1/2})^{1/2} = Σ σ_i(A Bᵀ) (the nonzero eigenvalues of S_z S_y are those of (ABᵀ)ᵀ(ABᵀ)), so
one n × n Gram matrix and one symmetric eigenvalue problem suffice when n < D (``w2_gaussian`` is used when n ≥ D).

API
---
* ``paired_rmse(y, z, z_err=None, *, n_boot=200, seed=0) -> Interval``
* ``mean_gap(y, z, *, n_boot=200, seed=0) -> Interval``
* ``gelbrich(x, y) -> float``; ``gelbrich_interval(x, y, *, n_boot=50, seed=0, paired=True) -> Interval``
* ``sandwich(y, z, *, z_err=None, n_pot=1000, n_projections=256, n_boot=200, gelbrich_boot=50, seed=0) -> dict``
  — every number above, JSON-ready; ``floors(z, z_indep, ...) -> dict`` — their finite-sample floors, once per target.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from ..checks import check_finite
from .estimate import Estimate
from .transport import sliced_w2, w2, w2_gaussian


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap standard error, its 95% percentile interval [lo, hi] (widened by the
    deterministic error ``det``, e.g. ODE) and that deterministic error."""

    value: float
    se: float
    lo: float
    hi: float
    det: float = 0.0

    def estimate(self) -> Estimate:
        return Estimate(self.value, self.se, 0.0, self.det)

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}


def _pair(y, z, names=("y", "z")) -> tuple[Tensor, Tensor]:
    y, z = (torch.as_tensor(v).detach().to(torch.float64) for v in (y, z))
    for name, v in zip(names, (y, z)):
        if v.ndim != 2 or v.shape[0] < 2:
            raise ValueError(f"{name}: expected a point cloud of shape (n, D) with n ≥ 2, got {tuple(v.shape)}")
        check_finite(name, v)
    if y.shape[1] != z.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]}: expected the same dimension, got {y.shape[1]} and {z.shape[1]}")
    return y, z.to(y.device)


def _counts(n: int, n_boot: int, seed: int, device) -> Tensor:
    if not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot: expected an int ≥ 2, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n, dtype=torch.float64,
                           device=device)


def _interval(value: float, reps: Tensor, det: float = 0.0, normal: bool = False) -> Interval:
    """Percentile interval of the replicates, or value ± 1.96 se when ``normal`` (for statistics whose bootstrap
    replicates are biased: resampling with replacement duplicates rows, which inflates a plug-in covariance
    distance, so the percentiles would not even contain the value)."""
    reps = reps[torch.isfinite(reps)].cpu()
    se = float(reps.std())
    lo, hi = (value - 1.96 * se, value + 1.96 * se) if normal else \
        (float(torch.quantile(reps, q)) for q in (0.025, 0.975))
    return Interval(value, se, lo - det, hi + det, det)


def paired_rmse(y, z, z_err=None, *, n_boot: int = 200, seed: int = 0) -> Interval:
    """D̂ = (mean_i ‖y_i − z_i‖²)^{1/2} ≥ W2 of the two empirical measures, with its bootstrap interval; ``z_err``
    (n,) per-sample errors of z (ODE) enter as the deterministic error RMS(z_err)."""
    y, z = _pair(y, z)
    d = (y - z).pow(2).sum(1)
    det = 0.0
    if z_err is not None:
        z_err = torch.as_tensor(z_err, dtype=torch.float64)
        if z_err.shape != (y.shape[0],):
            raise ValueError(f"z_err: expected shape ({y.shape[0]},), got {tuple(z_err.shape)}")
        det = float(z_err.pow(2).mean().sqrt())
    reps = (_counts(len(d), n_boot, seed, d.device) @ d).sqrt()
    return _interval(float(d.mean().sqrt()), reps, det)


def mean_gap(y, z, *, n_boot: int = 200, seed: int = 0) -> Interval:
    """‖E y − E z‖ ≤ W2 from the paired differences: sqrt(max(‖d̄‖² − tr Ĉov(d)/n, 0)), unbiased inside the root.
    The interval is value ± 1.96 se: a resample's duplicated rows under-correct tr Ĉov(d)/n, so when that term
    dominates (D ≫ n, a small gap) the bootstrap percentiles lie above the value."""
    y, z = _pair(y, z)
    d = y - z
    n = d.shape[0]

    def stat(w: Tensor) -> Tensor:  # w (R, n) resampling weights summing to 1
        mean = w @ d
        second = w @ d.pow(2).sum(1)
        var_tr = (second - mean.pow(2).sum(1)) * n / (n - 1)
        return (mean.pow(2).sum(1) - var_tr / n).clamp_min(0).sqrt()

    value = float(stat(torch.full((1, n), 1.0 / n, dtype=d.dtype, device=d.device))[0])
    return _interval(value, stat(_counts(n, n_boot, seed, d.device)), normal=True)


def gelbrich(x, y) -> float:
    """W2 between the Gaussians with the empirical means and covariances (1/n normalization) of x and y (module
    docstring); never a D × D matrix when n < D."""
    x, y = _pair(x, y, ("x", "y"))
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    mx, my = x.mean(0), y.mean(0)
    a, b = (x - mx) / math.sqrt(n), (y - my) / math.sqrt(m)
    if min(n, m) >= d:
        return w2_gaussian(mx, a.T @ a, my, b.T @ b)
    cross = a @ b.T  # (n, m)
    gram = cross @ cross.T if n <= m else cross.T @ cross
    evals = torch.linalg.eigvalsh(0.5 * (gram + gram.T)).clamp_min(0)
    sq = float((mx - my).pow(2).sum() + a.pow(2).sum() + b.pow(2).sum() - 2 * evals.sqrt().sum())
    return math.sqrt(max(sq, 0.0))


def gelbrich_interval(x, y, *, n_boot: int = 50, seed: int = 0, paired: bool = True) -> Interval:
    """``gelbrich(x, y)`` with its bootstrap standard error and the normal interval value ± 1.96 se (see
    ``_interval``): rows resampled jointly when ``paired`` (x_i and y_i share their noise), independently otherwise."""
    x, y = _pair(x, y, ("x", "y"))
    if paired and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y: paired resampling needs equal sizes, got {x.shape[0]} and {y.shape[0]}")
    if not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot: expected an int ≥ 2, got {n_boot!r}")
    gen = torch.Generator().manual_seed(seed)
    reps = []
    for _ in range(n_boot):
        i = torch.randint(x.shape[0], (x.shape[0],), generator=gen).to(x.device)
        j = i if paired else torch.randint(y.shape[0], (y.shape[0],), generator=gen).to(y.device)
        reps.append(gelbrich(x[i], y[j]))
    return _interval(gelbrich(x, y), torch.tensor(reps, dtype=torch.float64), normal=True)


def floors(z, z_indep, *, n_pot: int = 1000, n_projections: int = 256, gelbrich_boot: int = 50,
           seed: int = 0) -> dict:
    """The finite-sample floors that ``sandwich`` reports beside its distances: each distance between two independent
    exact sample sets z and ``z_indep`` of the same size (they depend on the target alone, so compute them once)."""
    z, zi = _pair(z, z_indep, ("z", "z_indep"))
    if zi.shape != z.shape:
        raise ValueError(f"z_indep: expected shape {tuple(z.shape)} like z, got {tuple(zi.shape)}")
    k = _n_pot(n_pot, z.shape[0])
    return {"gelbrich_floor": gelbrich_interval(zi, z, n_boot=gelbrich_boot, seed=seed, paired=False).to_dict(),
            "sliced_floor": sliced_w2(zi, z, n_projections, torch.Generator().manual_seed(seed)).to_dict(),
            "pot_floor": w2(zi[:k], z[:k]), "n_pot": k, "n": int(z.shape[0])}


def _n_pot(n_pot: int, n: int) -> int:
    if not isinstance(n_pot, int) or n_pot < 2:
        raise ValueError(f"n_pot: expected an int ≥ 2, got {n_pot!r}")
    return min(n_pot, n)


def sandwich(y, z, *, z_err=None, n_pot: int = 1000, n_projections: int = 256, n_boot: int = 200,
             gelbrich_boot: int = 50, seed: int = 0) -> dict:
    """Every bound of the module docstring for model samples y paired with exact samples z (their floors come from
    :func:`floors`, with the same ``n_pot``, ``n_projections`` and ``seed``).

    Keys: ``upper`` (paired RMSE), ``lower_mean``, ``lower_gelbrich``, ``sliced``, ``pot`` on the first ``n_pot``
    pairs; ``upper_minus_pot`` = D̂ − W2_emp on those pairs (≥ 0 exactly: the identity pairing is a coupling of the two
    clouds).
    """
    y, z = _pair(y, z)
    k = _n_pot(n_pot, y.shape[0])
    pot = w2(y[:k], z[:k])
    return {
        "n": int(y.shape[0]), "dim": int(y.shape[1]),
        "upper": paired_rmse(y, z, z_err, n_boot=n_boot, seed=seed).to_dict(),
        "lower_mean": mean_gap(y, z, n_boot=n_boot, seed=seed).to_dict(),
        "lower_gelbrich": gelbrich_interval(y, z, n_boot=gelbrich_boot, seed=seed).to_dict(),
        "sliced": sliced_w2(y, z, n_projections, torch.Generator().manual_seed(seed)).to_dict(),
        "n_pot": k, "pot": pot, "upper_minus_pot": float((y[:k] - z[:k]).pow(2).sum(1).mean().sqrt()) - pot,
    }
