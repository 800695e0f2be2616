"""2-D toy shapes built as Gaussian mixtures, so every toy has an exact velocity (docs/THEORY.md §6, §7)."""
from __future__ import annotations

import math

import torch

from .mixture import GaussianMixture


def _isotropic(means: torch.Tensor, std: float, **kw) -> GaussianMixture:
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"std: expected a finite positive component std, got {std!r}")
    k = means.shape[0]
    covs = std**2 * torch.eye(2, dtype=torch.float64).expand(k, 2, 2)
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), means, covs, **kw)


def _positive_int(name: str, v) -> int:
    if not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


def ring(n_modes: int = 8, radius: float = 2.0, std: float = 0.3, **kw) -> GaussianMixture:
    """n_modes equal-weight Gaussians N(μ_k, std² I), μ_k = radius·(cos 2πk/n, sin 2πk/n)."""
    _positive_int("n_modes", n_modes)
    ang = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
    return _isotropic(radius * torch.stack([ang.cos(), ang.sin()], 1), std, **kw)


def moons(n_per_moon: int = 24, std: float = 0.1, scale: float = 1.0, **kw) -> GaussianMixture:
    """Two interleaved half circles (scikit-learn's ``make_moons`` geometry, centred at the origin), each
    approximated by n_per_moon equal-weight isotropic Gaussians of std ``std`` spread evenly along the arc."""
    _positive_int("n_per_moon", n_per_moon)
    th = torch.linspace(0.0, math.pi, n_per_moon, dtype=torch.float64)
    outer = torch.stack([th.cos(), th.sin()], 1)
    inner = torch.stack([1 - th.cos(), 0.5 - th.sin()], 1)
    centre = torch.tensor([0.5, 0.25], dtype=torch.float64)
    return _isotropic(scale * (torch.cat([outer, inner]) - centre), scale * std, **kw)


def checkerboard(n_squares: int = 4, side: float = 1.0, per_side: int = 4, **kw) -> GaussianMixture:
    """The n_squares × n_squares board centred at the origin with the squares (i + j even) filled; each filled
    square (uniform) is approximated by a per_side × per_side grid of isotropic Gaussians whose std
    side/(per_side·√12) matches the uniform's variance per coordinate."""
    _positive_int("n_squares", n_squares)
    _positive_int("per_side", per_side)
    offsets = (torch.arange(per_side, dtype=torch.float64) + 0.5) / per_side * side
    cells = torch.cartesian_prod(offsets, offsets)  # (per_side², 2) inside one square
    corners = [torch.tensor([i * side, j * side], dtype=torch.float64)
               for i in range(n_squares) for j in range(n_squares) if (i + j) % 2 == 0]
    means = torch.cat([c + cells for c in corners]) - n_squares * side / 2
    return _isotropic(means, side / (per_side * math.sqrt(12)), **kw)
