"""What every analytic test bed offers (docs/THEORY.md §1, §7); the concrete beds live in gaussian.py and mixture.py."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ...checks import as_batch_time, check_finite
from ..estimate import Estimate
from ..ode import OdeSolution
from ...path import PathSample, sample_path


class TestBed(ABC):
    """A data law p0 on R^D with its exact marginal velocity u(x, t), flow map ψ(x, t, s) and σ²(t).

    Times follow docs/THEORY.md §1: x_t = (1 − t) x0 + t x1, t = 0 is data, t = 1 is noise N(0, I).
    """

    __test__ = False  # not a pytest test class despite the name

    dtype: torch.dtype
    device: torch.device

    @property
    @abstractmethod
    def dim(self) -> int:
        """The data dimension D."""

    @abstractmethod
    def velocity(self, x: Tensor, t) -> Tensor:
        """u(x, t) = E[x1 − x0 | x_t = x] for x of shape (B, D) and t a scalar or shape (B,)."""

    @abstractmethod
    def flow_with_error(self, x: Tensor, t: float, s: float) -> OdeSolution:
        """ψ(x, t, s) with a per-sample error estimate (zero where ψ is in closed form)."""

    def flow(self, x: Tensor, t: float, s: float) -> Tensor:
        """ψ(x, t, s): the solution at time s of dz/dr = u(z, r) with z(t) = x; pushes p_t to p_s."""
        return self.flow_with_error(x, t, s).x

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of p0, shape (n, D)."""

    @abstractmethod
    def cond_variance(self, t: float, **kwargs) -> Estimate:
        """σ²(t) = E‖v − u(x_t, t)‖² (docs/THEORY.md §1), with its error."""

    def sample_path(self, n: int, t, generator: torch.Generator | None = None) -> PathSample:
        """n independent path points (x0 ~ p0, x1 ~ N(0, I), x_t, v = x1 − x0) at time(s) t."""
        x0 = self.sample(n, generator)
        x1 = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device)
        return sample_path(x0, x1, t)

    # ---- shared validation -------------------------------------------------------------------------------------
    def _check_x(self, x: Tensor, name: str = "x") -> None:
        check_finite(name, x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name}: expected shape (B, {self.dim}), got {tuple(x.shape)}")

    def _check_n(self, n: int) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")

    def _times(self, x: Tensor, t, name: str = "t") -> Tensor:
        self._check_x(x)
        return as_batch_time(name, t, x)


def scalar_time(name: str, t, lo: float = 0.0, hi: float = 1.0) -> float:
    """A Python float time in [lo, hi], or a clear error."""
    try:
        t = float(t)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name}: expected a scalar time, got {t!r}") from None
    if not lo <= t <= hi:  # also rejects NaN
        raise ValueError(f"{name}: expected a time in [{lo}, {hi}], got {t!r}")
    return t
