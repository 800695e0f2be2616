"""A number with its numerical errors, kept apart by kind (docs/THEORY.md §6: every comparison carries its error).

API: ``Estimate(value, se=0, quad=0, ode=0)`` — ``se`` a Monte Carlo standard error (statistical), ``quad`` a
quadrature error estimate and ``ode`` an ODE-tolerance error estimate (both deterministic, absolute, same units as
``value``). ``Estimate.err(k)`` = k·se + quad + ode; ``Estimate.log10()`` maps the interval to log10 units; ``Estimate.square()``;
``Estimate.to_dict()`` gives plain floats for JSON.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Estimate:
    """``value`` with its Monte Carlo standard error ``se`` and deterministic errors ``quad`` and ``ode``."""

    value: float
    se: float = 0.0
    quad: float = 0.0
    ode: float = 0.0

    def __post_init__(self):
        for name in ("se", "quad", "ode"):
            v = getattr(self, name)
            if math.isnan(v) or v < 0:
                raise ValueError(f"Estimate.{name}: expected a non-negative error, got {v!r}")

    @property
    def det(self) -> float:
        """The deterministic part of the error: quadrature + ODE."""
        return self.quad + self.ode

    def err(self, k: float = 3.0) -> float:
        """Half-width of the error interval: k standard errors plus the deterministic errors."""
        return k * self.se + self.det

    def log10(self, k: float = 3.0) -> "Estimate":
        """The same quantity in log10 units; the error interval [v − err, v + err] is mapped conservatively.

        The result carries the whole mapped half-width in ``quad`` (it is no longer split by kind) and ``se = 0``,
        so compare two such estimates with k applied already. A non-positive value has log10 −inf.
        """
        if not self.value > 0:
            return Estimate(-math.inf, 0.0, math.inf)
        if math.isinf(self.value):
            raise ValueError("Estimate.log10: the value overflowed; compute the log10 estimate in log space instead")
        e, c = self.err(k), math.log10(self.value)
        up = math.log10(self.value + e) - c
        down = c - math.log10(self.value - e) if self.value > e else math.inf
        return Estimate(c, 0.0, max(up, down))

    def square(self) -> "Estimate":
        """value² with first-order propagated errors (exact interval bound for the deterministic parts)."""
        v = abs(self.value)
        return Estimate(self.value**2, 2 * v * self.se, 2 * v * self.quad + self.quad**2,
                        2 * v * self.ode + self.ode**2)

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}
