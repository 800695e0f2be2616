"""Bounds in log space: the few numpy helpers that let a bound of size 10^93 (or an overflow to inf) be computed and
compared without warnings or NaN (docs/THEORY.md §6). Used by the one-step and the few-step calculators."""
from __future__ import annotations

import math

import numpy as np


def logsumexp(a: np.ndarray) -> np.ndarray:
    """log Σ exp(a) over the last axis, stable; −inf when every entry is −inf (an empty or all-zero integrand)."""
    m = a.max(axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.exp(a - m_safe).sum(axis=-1)) + m_safe[..., 0]
    return np.where(np.isneginf(m[..., 0]), -np.inf, out)


def log0(x: np.ndarray) -> np.ndarray:
    """log x with log 0 = −inf, silently (a zero weight or residual)."""
    with np.errstate(divide="ignore"):
        return np.log(x)


def exp_inf(x) -> np.ndarray:
    """exp x with overflow to inf, silently (a vacuous bound's linear value)."""
    with np.errstate(over="ignore"):
        return np.exp(x)


def abs_change(x: float, y: float) -> float:
    """|x − y| as an error estimate: 0 for equal values (both NaN included), inf where the difference is not finite."""
    if x == y or (math.isnan(x) and math.isnan(y)):
        return 0.0
    d = abs(x - y)
    return d if math.isfinite(d) else math.inf
