"""Time samplers for the TVM objective (docs/THEORY.md §3).

Each sampler draws, per example, a jump start t, a jump end s ≤ t and an independent flow-matching time s′.
Convention: t = 0 is data, t = 1 is noise; the model jumps from t down to s.

* :class:`GapSampler` — the paper's "gap*" default: g = sigmoid(N(−0.8, 1)); s = sigmoid(N(−0.4, 1)) truncated to
  s ≤ 1 − g by inverse-CDF sampling; t = min(s + g, 1); s′ = sigmoid(N(−0.4, 1)). Medians g ≈ 0.31, s ≈ 0.33,
  t ≈ 0.71. With ``truncate=False`` s is drawn untruncated and t is clamped at 1 (the clamped variant).
* :class:`PairLogitNormalSampler` — two independent logit-normal draws, sorted so that s ≤ t.
* :class:`UniformSampler` — t ~ U(0, 1), s ~ U(0, t), s′ ~ U(0, 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TimeSample:
    """Per-example times, each of shape (B,): jump start ``t``, jump end ``s ≤ t``, flow-matching time ``s_fm``."""

    t: Tensor
    s: Tensor
    s_fm: Tensor


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")


def _logit_normal(n, mean, std, generator, device, dtype) -> Tensor:
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device, dtype=dtype))


@dataclass(frozen=True)
class GapSampler:
    """The paper's gap* sampler (default parameters) and its clamped variant (``truncate=False``)."""

    gap_mean: float = -0.8
    gap_std: float = 1.0
    s_mean: float = -0.4
    s_std: float = 1.0
    fm_mean: float = -0.4
    fm_std: float = 1.0
    truncate: bool = True

    def __post_init__(self):
        for name in ("gap_std", "s_std", "fm_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive standard deviation, got {getattr(self, name)}")

    def __call__(self, n: int, *, generator=None, device=None, dtype=torch.float32) -> TimeSample:
        _check_n(n)
        g = _logit_normal(n, self.gap_mean, self.gap_std, generator, device, dtype)
        if self.truncate:
            # logit(s) ~ N(m, σ²) truncated to logit(s) ≤ logit(1 − g): u ~ U(0, Φ(c)), z = m + σ Φ⁻¹(u).
            z64 = torch.float64
            c = (torch.logit(1 - g.to(z64)) - self.s_mean) / self.s_std
            u = torch.rand(n, generator=generator, device=device, dtype=z64) * torch.special.ndtr(c)
            u = u.clamp_min(torch.finfo(z64).tiny)
            s = torch.sigmoid(self.s_mean + self.s_std * torch.special.ndtri(u)).to(dtype)
            s = torch.minimum(s, 1 - g)
        else:
            s = _logit_normal(n, self.s_mean, self.s_std, generator, device, dtype)
        t = torch.clamp(s + g, max=1.0)
        s_fm = _logit_normal(n, self.fm_mean, self.fm_std, generator, device, dtype)
        return TimeSample(t=t, s=s, s_fm=s_fm)


@dataclass(frozen=True)
class PairLogitNormalSampler:
    """t, s from two independent sigmoid(N(mean, std)) draws, sorted so that s ≤ t; s′ drawn the same way."""

    mean: float = -0.4
    std: float = 1.0

    def __call__(self, n: int, *, generator=None, device=None, dtype=torch.float32) -> TimeSample:
        _check_n(n)
        a = _logit_normal(n, self.mean, self.std, generator, device, dtype)
        b = _logit_normal(n, self.mean, self.std, generator, device, dtype)
        s_fm = _logit_normal(n, self.mean, self.std, generator, device, dtype)
        return TimeSample(t=torch.maximum(a, b), s=torch.minimum(a, b), s_fm=s_fm)


@dataclass(frozen=True)
class UniformSampler:
    """t ~ U(0, 1), s = t · U(0, 1) (so s | t ~ U(0, t)), s′ ~ U(0, 1)."""

    def __call__(self, n: int, *, generator=None, device=None, dtype=torch.float32) -> TimeSample:
        _check_n(n)
        t = torch.rand(n, generator=generator, device=device, dtype=dtype)
        s = t * torch.rand(n, generator=generator, device=device, dtype=dtype)
        s_fm = torch.rand(n, generator=generator, device=device, dtype=dtype)
        return TimeSample(t=t, s=s, s_fm=s_fm)


SAMPLERS = {"gap": GapSampler, "gap-clamped": lambda: GapSampler(truncate=False),
            "pair-logit-normal": PairLogitNormalSampler, "uniform": UniformSampler}


def make_time_sampler(name: str):
    """Build a sampler by name: one of ``gap`` (default gap*), ``gap-clamped``, ``pair-logit-normal``, ``uniform``."""
    if name not in SAMPLERS:
        raise ValueError(f"time sampler: expected one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]()
