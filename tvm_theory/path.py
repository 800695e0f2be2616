"""The linear (rectified-flow) path between data and noise (docs/THEORY.md §1).

x_t = (1 − t) x0 + t x1 with x0 ~ p0 (data) and x1 ~ N(0, I); t = 0 is data, t = 1 is noise.
The conditional velocity is v = dx_t/dt = x1 − x0.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .checks import as_batch_time, check_finite, check_same_shape, expand_like


@dataclass(frozen=True)
class PathSample:
    """A point on the path: ``x_t = (1 − t) x0 + t x1`` and its conditional velocity ``v = x1 − x0``."""

    x0: Tensor
    x1: Tensor
    t: Tensor  # (B,)
    x_t: Tensor
    v: Tensor


def interpolate(x0: Tensor, x1: Tensor, t: float | Tensor) -> Tensor:
    """x_t = (1 − t) x0 + t x1 for a batch (B, ...) and times of shape (B,) or a scalar."""
    t = as_batch_time("t", t, x0)
    te = expand_like(t, x0)
    return (1 - te) * x0 + te * x1


def sample_path(x0: Tensor, x1: Tensor, t: float | Tensor) -> PathSample:
    """Validated point on the path with its conditional velocity v = x1 − x0 (docs/THEORY.md §1)."""
    check_same_shape("x0", x0, "x1", x1)
    check_finite("x0", x0)
    check_finite("x1", x1)
    t = as_batch_time("t", t, x0)
    return PathSample(x0=x0, x1=x1, t=t, x_t=interpolate(x0, x1, t), v=x1 - x0)
