"""The two quadrature rules of the bound calculators (docs/THEORY.md §5–§6.1): the trapezoid rule on a grid, with its
cumulative form, and an adaptive composite-Simpson rule.

API
---
* ``make_grid(t, n)``, ``check_grid(s, t)`` — the odd-length grids 0 = s_0 < … < s_m = t of ``bounds``.
* ``trapezoid_weights(s)``, ``cumulative_trapezoid(y, s)`` — ∫_0^t y ≈ Σ_i w_i y(s_i) and s_i ↦ ∫_0^{s_i} y.
* ``adaptive_simpson(f, upper, *, n_panels, rtol, max_rounds, error) -> SimpsonResult`` — ∫_0^T of a tuple of
  tensor-valued integrands, panels split where the Richardson estimate of their error is too large (``sensitivity``).

Trapezoid rule on s_0 < … < s_m: ∫_{s_0}^{s_m} y ≈ Σ_i (s_{i+1} − s_i)(y_i + y_{i+1})/2, error O(h²) for smooth y.
Its error is estimated by the callers as |value on s − value on s[::2]|: to leading order the every-other-point rule
has four times the fine rule's error, so the difference is three times it, a conservative estimate. Hence odd grids.

Simpson's rule on a panel [a, b] with midpoint m, S(a, b) = (b − a)/6 · (y(a) + 4 y(m) + y(b)), is exact for cubics;
S − ∫_a^b y = (b − a)⁵ y⁽⁴⁾(ξ)/2880, so the composite rule S₂ = S(a, m) + S(m, b) has about 1/16 of S's error and
S₂ − ∫_a^b y ≈ (S₂ − S)/15 (Richardson; exact for quartics), the estimate that drives the splitting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .testbeds.base import scalar_time


# ---- the trapezoid rule on a grid ------------------------------------------------------------------------------------
def make_grid(t: float, n: int = 129) -> np.ndarray:
    """n (odd, ≥ 3) equally spaced points from 0 to t."""
    if not isinstance(n, int) or n < 3 or n % 2 == 0:
        raise ValueError(f"n: expected an odd int ≥ 3 (the error estimate drops every other point), got {n!r}")
    return np.linspace(0.0, scalar_time("t", t), n)


def check_grid(s, t: float) -> np.ndarray:
    """s as a float64 copy whose last point is exactly t, or a ValueError naming ``s_grid``.

    Expected: 1-D, odd length ≥ 3 (so that s[::2] keeps both ends), finite, strictly increasing, from 0 to t (the
    last point within 1e-12 of t).
    """
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] < 3 or s.shape[0] % 2 == 0:
        raise ValueError(f"s_grid: expected a 1-D grid of odd length ≥ 3, got shape {s.shape}")
    if not np.isfinite(s).all() or not (np.diff(s) > 0).all():
        raise ValueError("s_grid: expected finite, strictly increasing points")
    if s[0] != 0.0 or abs(s[-1] - t) > 1e-12:
        raise ValueError(f"s_grid: expected to run from 0 to t = {t}, got [{s[0]}, {s[-1]}]")
    s = s.copy()
    s[-1] = t
    return s


def trapezoid_weights(s: np.ndarray) -> np.ndarray:
    """w with Σ w_i y_i = the trapezoid rule on the (possibly non-uniform) grid s: w_i = (s_{i+1} − s_{i−1})/2 inside,
    half the neighbouring interval at either end."""
    h = np.diff(s)
    w = np.zeros_like(s)
    w[:-1] += h / 2
    w[1:] += h / 2
    return w


def cumulative_trapezoid(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """∫_{s_0}^{s_i} y by the trapezoid rule along the last axis, starting at 0 (same shape as y)."""
    inc = 0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(s)
    return np.concatenate([np.zeros(y.shape[:-1] + (1,)), np.cumsum(inc, axis=-1)], axis=-1)


# ---- adaptive composite Simpson on [0, T] ----------------------------------------------------------------------------
Integrand = Callable[[list[float]], Sequence[Tensor]]


def mean_abs_error(diff: tuple[Tensor, ...]) -> float:
    """The default size of S₂ − S on a panel: the mean absolute value of the first integrand's entries."""
    return float(diff[0].abs().mean())


@dataclass(frozen=True)
class SimpsonPanel:
    """An accepted panel [a·T, b·T] (a, b exact fractions of T) with its Richardson error estimate ``err``."""

    a: Fraction
    b: Fraction
    err: float

    @property
    def nodes(self) -> tuple[Fraction, ...]:
        """The five nodes of the composite rule: a, (3a + b)/4, (a + b)/2, (a + 3b)/4, b."""
        a, b = self.a, self.b
        return a, (3 * a + b) / 4, (a + b) / 2, (a + 3 * b) / 4, b


@dataclass(frozen=True)
class SimpsonResult:
    """The accepted panels of :func:`adaptive_simpson` and the integrand at every node it evaluated.

    ``values[v]`` is the tuple of the integrands at σ = v·T; ``nodes`` lists the v in increasing order. ``panels``
    cover [0, 1] in order.
    """

    upper: float
    panels: tuple[SimpsonPanel, ...]
    values: dict[Fraction, tuple[Tensor, ...]]

    @property
    def nodes(self) -> list[Fraction]:
        return sorted(self.values)

    @property
    def points(self) -> Tensor:
        """The evaluated σ = v·T, increasing, float64."""
        return self.upper * torch.tensor([float(v) for v in self.nodes], dtype=torch.float64)

    @property
    def error(self) -> float:
        """Σ over panels of the Richardson estimate (the error measure of ``adaptive_simpson``'s ``error``)."""
        return sum(p.err for p in self.panels)

    def width(self, panel: SimpsonPanel) -> float:
        """The panel's length in σ, T·(b − a)."""
        return self.upper * float(panel.b - panel.a)

    def composite(self, panel: SimpsonPanel, k: int) -> Tensor:
        """The composite rule S₂ on one panel for integrand k."""
        return _composite(self.values, self.upper, panel.a, panel.b, k)

    def integral(self, k: int) -> Tensor:
        """∫_0^T of integrand k: the composite rule summed over the panels."""
        return sum(self.composite(p, k) for p in self.panels)

    def at_nodes(self, k: int) -> Tensor:
        """Integrand k at every node, stacked along a leading axis in the order of ``nodes``."""
        return torch.stack([self.values[v][k] for v in self.nodes])


def _simpson(y: dict[Fraction, tuple[Tensor, ...]], upper: float, a: Fraction, b: Fraction, k: int) -> Tensor:
    """Simpson's rule S(a, b) for integrand k from the node values y: T(b − a)/6 · (y(a) + 4 y((a + b)/2) + y(b))."""
    return upper * float(b - a) / 6 * (y[a][k] + 4 * y[(a + b) / 2][k] + y[b][k])


def _composite(y: dict[Fraction, tuple[Tensor, ...]], upper: float, a: Fraction, b: Fraction, k: int) -> Tensor:
    """The composite rule S₂(a, b) = S(a, m) + S(m, b), m = (a + b)/2, for integrand k."""
    m = (a + b) / 2
    return _simpson(y, upper, a, m, k) + _simpson(y, upper, m, b, k)


def adaptive_simpson(f: Integrand, upper: float = 1.0, *, n_panels: int = 8, rtol: float = 1e-3,
                     max_rounds: int = 5, error: Callable[[tuple[Tensor, ...]], float] = mean_abs_error
                     ) -> SimpsonResult:
    """∫_0^T y_k(σ) dσ for a tuple of integrands y_0, y_1, … by composite Simpson panels split where needed.

    Used for the σ-integral of the sensitivity bound (docs/THEORY.md §6.1), whose integrand concentrates where
    paths cross between modes. Panels are intervals [a, b] ⊂ [0, 1] of fractions of T (σ from a·T to b·T); start
    from ``n_panels`` equal ones. In each round, every open panel gets both rules, Simpson's S and the composite S₂
    (nodes a, (3a+b)/4, (a+b)/2, (a+3b)/4, b), and the Richardson estimate of S₂'s error, err = error(S₂ − S)/15
    (``error`` maps the tuple of differences, one tensor per integrand, to a number). The panel is accepted when

        err ≤ rtol · scale · (b − a),   scale = Σ_accepted mean(S₂ of y_0) + Σ_open mean(S₂ of y_0),

    i.e. when its error is at most its share, by length, of ``rtol`` times the current estimate of the mean of
    ∫ y_0 (scale is floored at 1e-300; y_0 should be non-negative, as the integrand of a bound is), else it is split
    in two. After ``max_rounds`` rounds every open panel is accepted as it is.

    Nodes are exact fractions (``Fraction``), so a node reached from two panels is the same key of the cache and
    the integrand is evaluated once per node; for n_panels a power of two they are dyadic, so every float below is
    the one plain floating-point bisection gives. The integrand is evaluated in batches: ``f(sigmas)`` gets a list of
    k σ's and returns a sequence of tensors, each with a leading axis of length k (one entry per σ).

    Args:
        f: the integrands, evaluated in batches of σ's as above.
        upper: T > 0, the upper limit.
        n_panels: initial number of equal panels (≥ 1).
        rtol: target error relative to the mean of ∫ y_0 (≥ 0; 0 splits until ``max_rounds``).
        max_rounds: splitting rounds (≥ 0).
        error: size of S₂ − S on a panel (default: mean |·| of the first integrand).
    Returns:
        A :class:`SimpsonResult`: the accepted panels (``.integral(k)`` sums the composite rule over them) and the
        integrands at every node.
    """
    upper = float(upper)
    if not (math.isfinite(upper) and upper > 0):
        raise ValueError(f"upper: expected a finite positive upper limit, got {upper!r}")
    if not isinstance(n_panels, int) or n_panels < 1:
        raise ValueError(f"n_panels: expected a positive int, got {n_panels!r}")
    if not isinstance(max_rounds, int) or max_rounds < 0:
        raise ValueError(f"max_rounds: expected a non-negative int, got {max_rounds!r}")
    if not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol >= 0):
        raise ValueError(f"rtol: expected a finite non-negative number, got {rtol!r}")
    values: dict[Fraction, tuple[Tensor, ...]] = {}

    def evaluate(points: list[Fraction]) -> None:
        new = sorted({v for v in points if v not in values})
        if new:
            batch = f([upper * float(v) for v in new])
            for i, v in enumerate(new):
                values[v] = tuple(y[i] for y in batch)

    edges = [Fraction(i, n_panels) for i in range(n_panels + 1)]
    panels = list(zip(edges[:-1], edges[1:]))  # the open panels (a, b)
    evaluate(edges + [(a + b) / 2 for a, b in panels])
    done: list[tuple[SimpsonPanel, float]] = []  # accepted panels with the mean of S₂ of y_0
    for rnd in range(max_rounds + 1):
        evaluate([q for a, b in panels for q in ((3 * a + b) / 4, (a + 3 * b) / 4)])
        n_out = len(values[edges[0]])
        coarse = [[_simpson(values, upper, a, b, k) for k in range(n_out)] for a, b in panels]
        fine = [[_composite(values, upper, a, b, k) for k in range(n_out)] for a, b in panels]
        scale = max(sum(m for _, m in done) + sum(float(s2[0].mean()) for s2 in fine), 1e-300)
        keep = []
        for (a, b), s1, s2 in zip(panels, coarse, fine):
            err = error(tuple(x2 - x1 for x2, x1 in zip(s2, s1))) / 15
            if err <= rtol * scale * float(b - a) or rnd == max_rounds:
                done.append((SimpsonPanel(a, b, err), float(s2[0].mean())))
            else:
                keep += [(a, (a + b) / 2), ((a + b) / 2, b)]
        panels = keep
        if not panels:
            break
    return SimpsonResult(upper, tuple(sorted((p for p, _ in done), key=lambda p: p.a)), values)
