"""Input validation shared by every module: clear errors that name the argument and what was expected."""
from __future__ import annotations

import torch
from torch import Tensor


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or ±inf."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} non-finite entries")


def check_time(name: str, t: Tensor, lo: float = 0.0, hi: float = 1.0) -> None:
    """Times must be finite and lie in [lo, hi] (docs/THEORY.md §1: t ∈ [0, 1], 0 is data, 1 is noise)."""
    check_finite(name, t)
    if t.numel() and (float(t.min()) < lo or float(t.max()) > hi):
        raise ValueError(
            f"{name}: expected times in [{lo}, {hi}], got range [{float(t.min()):.6g}, {float(t.max()):.6g}]"
        )


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b}: expected equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")


def as_batch_time(name: str, t: float | Tensor, x: Tensor) -> Tensor:
    """Turn a float, a 0-d tensor or a (B,) tensor into a validated (B,) tensor on ``x``'s device and dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.repeat(x.shape[0])  # a real (B,) buffer: torch.func.jvp rejects stride-0 expanded primals
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: expected a scalar or shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}")
    check_time(name, t)
    return t


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """View a (B,) tensor as (B, 1, ..., 1) so it broadcasts against ``x`` of shape (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))
