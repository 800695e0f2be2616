"""A batched adaptive ODE solver with per-sample error control, used for flow maps ψ (docs/THEORY.md §1, §6).

API: ``odeint(fn, x, t0, t1, rtol=1e-9, atol=1e-9) -> Tensor`` solves dz/dr = fn(z, r) from z(t0) = x to r = t1
(either direction) for a whole batch with one shared step sequence; ``odeint_with_error(...) -> OdeSolution`` adds an
error estimate per sample: the distance to a second solve at 10× tighter tolerances.

Why not ``scipy.integrate.solve_ivp`` on the flattened batch: its error norm is an RMS over all components, so one
hard sample among thousands is under-resolved (docs/THEORY.md §6.1, pitfalls). Here the local error of every sample and
coordinate must pass: the step is accepted when max_i |err_i| / (atol + rtol·|z_i|) ≤ 1 (Dormand–Prince 5(4),
the same pair as ``solve_ivp``'s RK45).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..checks import check_finite

# Dormand–Prince 5(4) tableau: nodes C, stages A, 5th-order weights B (= last row of A, FSAL) and
# E = B − B*, the difference to the embedded 4th-order weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

Field = Callable[[Tensor, float], Tensor]


@dataclass(frozen=True)
class OdeSolution:
    """The solution at the final time, its per-sample error estimate (Euclidean norm over the non-batch dims,
    shape (B,)) and the largest of those."""

    x: Tensor
    err: Tensor
    err_max: float


def odeint(fn: Field, x: Tensor, t0: float, t1: float, *, rtol: float = 1e-8, atol: float = 1e-8,
           max_steps: int = 100_000) -> Tensor:
    """z(t1) for dz/dr = fn(z, r), z(t0) = x, by adaptive Dormand–Prince 5(4) with a max-norm over the batch.

    ``fn`` receives the whole batch and a Python float time. Tolerances below 10 ulp of x's dtype are raised to it
    (float32: 1.2e-6). Raises ``RuntimeError`` after ``max_steps`` steps.
    """
    check_finite("x", x)
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol, atol: expected positive tolerances, got {rtol}, {atol}")
    floor = 10 * torch.finfo(x.dtype).eps
    rtol, atol = max(rtol, floor), max(atol, floor)
    t0, t1 = float(t0), float(t1)
    span = t1 - t0
    if span == 0.0:
        return x.clone()
    direction = 1.0 if span > 0 else -1.0
    z, r = x, t0
    k1 = fn(z, r)
    h = direction * min(abs(span), 1e-2 * abs(span) + 1e-3)
    for _ in range(max_steps):
        if (t1 - r) * direction <= 0:
            return z
        last = abs(h) >= abs(t1 - r)
        if last:
            h = t1 - r
        ks = [k1]
        for c, row in zip(_C[1:], _A[1:]):
            ks.append(fn(z + h * sum(a * k for a, k in zip(row, ks)), r + c * h))
        z_new = z + h * sum(b * k for b, k in zip(_B, ks))
        k7 = fn(z_new, r + h)
        err = h * sum(e * k for e, k in zip(_E, ks + [k7]))
        scale = atol + rtol * torch.maximum(z.abs(), z_new.abs())
        ratio = float((err.abs() / scale).max())
        if ratio <= 1.0:
            z, r, k1 = z_new, (t1 if last else r + h), k7
        h = h * min(5.0, max(0.2, 0.9 * (ratio + 1e-16) ** -0.2))
    raise RuntimeError(f"odeint: no convergence within max_steps={max_steps} (last time {r:.6g}, target {t1:.6g})")


def odeint_with_error(fn: Field, x: Tensor, t0: float, t1: float, *, rtol: float = 1e-8, atol: float = 1e-8,
                      max_steps: int = 100_000) -> OdeSolution:
    """Solve at (rtol, atol) and at 10× tighter tolerances; return the tighter solution and, per sample, the
    Euclidean distance between the two as its (conservative) error estimate. The looser tolerances are at least
    100 ulp of x's dtype, so the two solves differ in float32 too."""
    floor = 100 * torch.finfo(x.dtype).eps
    rtol, atol = max(rtol, floor), max(atol, floor)
    coarse = odeint(fn, x, t0, t1, rtol=rtol, atol=atol, max_steps=max_steps)
    fine = odeint(fn, x, t0, t1, rtol=rtol / 10, atol=atol / 10, max_steps=max_steps)
    err = (fine - coarse).reshape(x.shape[0], -1).norm(dim=1)
    return OdeSolution(x=fine, err=err, err_max=float(err.max()) if err.numel() else 0.0)
