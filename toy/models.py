"""Toy networks F_θ(x, t, s) for low-dimensional flows (docs/THEORY.md §2).

* :class:`MLP` feeds the network x together with sinusoidal embeddings of t and of the gap t − s, as the reference
  DiT does, so ∂_s F flows only through the gap embedding. With ``lipschitz_cap`` every linear layer is spectrally
  normalized during training (power iteration, as ``torch.nn.utils.parametrizations.spectral_norm``) and rescaled
  to spectral norm cap^(1/n_layers), so the certified constant of x ↦ u_θ(x, s) stays near cap · ℓ^depth
  (ℓ = SiLU's Lipschitz constant) instead of growing without bound.
* :class:`AffineModel` is affine in x: F(x, t, s) = A(t, s) x + b(t, s) with A, b produced by an MLP of the time
  embeddings. Its jumps map Gaussians to Gaussians, so on a Gaussian test bed its W2 is exact with no sampling
  (docs/THEORY.md §7), and its Lipschitz constant L(s) = ‖A(s, s)‖₂ is exact.

Both expose ``lipschitz_certificate(s)`` → (log10 L(s) per s, exact flag), the certified constant the bounds use.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from tvm_theory.analysis.lipschitz import certified_mlp_lipschitz

# sup_x |d/dx (x · sigmoid(x))| = sup_x σ(x)(1 + x(1 − σ(x))) = 1.09983932012886691…, attained at x ≈ 2.39936
# (mpmath root of the second derivative); rounded UP so that certificates built on it stay upper bounds.
# Checked in tests/test_toy_models.py.
SILU_LIPSCHITZ = 1.0998393202


def sinusoidal_embedding(t: Tensor, dim: int, max_freq: float = 30.0) -> Tensor:
    """[cos(ω_k t), sin(ω_k t)] with ω_k = max_freq^(k/(dim/2 − 1)), k < dim/2 (ω from 1 to max_freq); (B, dim).

    The toy uses frequencies up to ``max_freq`` (30 by default), not the DiT's 1000·t convention: with t ∈ [0, 1]
    the lowest frequencies already separate all times, and high frequencies only make ∂_s F large at init.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"dim: expected an even embedding size ≥ 4, got {dim}")
    if not max_freq >= 1.0:
        raise ValueError(f"max_freq: expected a frequency ≥ 1, got {max_freq}")
    half = dim // 2
    freqs = torch.exp(math.log(max_freq) * torch.arange(half, dtype=t.dtype, device=t.device) / (half - 1))
    arg = t[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class _Scale(nn.Module):
    """Parametrization W ↦ c · W (applied after spectral normalization)."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, w: Tensor) -> Tensor:
        return self.c * w


def _check_sizes(**sizes) -> None:
    bad = {k: v for k, v in sizes.items() if not (isinstance(v, int) and v >= 1)}
    if bad:
        raise ValueError(f"expected positive int sizes, got {bad}")


class MLP(nn.Module):
    """F_θ(x, t, s) = W_L σ(… σ(W_1 [x, e(t), e(t − s)] + b_1) …) + b_L with σ = SiLU.

    Args:
        dim: data dimension D.
        hidden: width of each hidden layer.
        depth: number of hidden layers (≥ 1).
        emb_dim: size of each sinusoidal time embedding.
        max_freq: highest embedding frequency (see :func:`sinusoidal_embedding`).
        lipschitz_cap: if given, spectral normalization of every layer during training, each rescaled to
            spectral norm cap^(1/(depth + 1)); the certified constant is then ≈ cap · ℓ^depth.
    """

    act_lipschitz = SILU_LIPSCHITZ

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 16, max_freq: float = 30.0,
                 lipschitz_cap: float | None = None):
        super().__init__()
        _check_sizes(dim=dim, hidden=hidden, depth=depth, emb_dim=emb_dim)
        if lipschitz_cap is not None and not (lipschitz_cap > 0 and math.isfinite(lipschitz_cap)):
            raise ValueError(f"lipschitz_cap: expected a positive finite constant or None, got {lipschitz_cap}")
        self.x_dim, self.emb_dim, self.max_freq, self.lipschitz_cap = dim, emb_dim, max_freq, lipschitz_cap
        sizes = [dim + 2 * emb_dim] + [hidden] * depth + [dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        if lipschitz_cap is not None:
            c = lipschitz_cap ** (1.0 / len(self.layers))
            for layer in self.layers:
                spectral_norm(layer)
                parametrize.register_parametrization(layer, "weight", _Scale(c))

    @property
    def linears(self) -> list[nn.Linear]:
        return list(self.layers)

    def forward(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        e_t = sinusoidal_embedding(t, self.emb_dim, self.max_freq)
        e_gap = sinusoidal_embedding(t - s, self.emb_dim, self.max_freq)
        h = torch.cat([x, e_t, e_gap], dim=1)
        for layer in self.layers[:-1]:
            h = nn.functional.silu(layer(h))
        return self.layers[-1](h)

    def lipschitz_certificate(self, s: Tensor) -> tuple[Tensor, bool]:
        """log10 of the certified x-Lipschitz constant of u_θ(·, s), the same for every s (product of spectral
        norms, :func:`tvm_theory.analysis.lipschitz.certified_mlp_lipschitz`); never exact for a network with activations."""
        cert = certified_mlp_lipschitz(self.linears, self.act_lipschitz, self.x_dim)
        return torch.full(s.shape, cert.log10_value, dtype=torch.float64), cert.exact


class AffineModel(nn.Module):
    """F_θ(x, t, s) = A(t, s) x + b(t, s), A (D × D) and b (D) from an MLP of [e(t), e(t − s)].

    The one-step map x ↦ x + (s − t) F(x, t, s) is affine, so it maps N(m, S) to N(M m + c, M S Mᵀ) with
    M = I + (s − t) A and c = (s − t) b (:meth:`push_gaussian`); u_θ(x, s) = A(s, s) x + b(s, s) has the exact
    Lipschitz constant ‖A(s, s)‖₂.
    """

    def __init__(self, dim: int = 2, hidden: int = 64, depth: int = 2, emb_dim: int = 16, max_freq: float = 30.0):
        super().__init__()
        _check_sizes(dim=dim, hidden=hidden, depth=depth, emb_dim=emb_dim)
        self.x_dim, self.emb_dim, self.max_freq = dim, emb_dim, max_freq
        sizes = [2 * emb_dim] + [hidden] * depth
        self.trunk = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(hidden, dim * dim + dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def coefficients(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """A(t, s) of shape (B, D, D) and b(t, s) of shape (B, D)."""
        h = torch.cat([sinusoidal_embedding(t, self.emb_dim, self.max_freq),
                       sinusoidal_embedding(t - s, self.emb_dim, self.max_freq)], dim=1)
        for layer in self.trunk:
            h = nn.functional.silu(layer(h))
        out = self.head(h)
        d = self.x_dim
        return out[:, : d * d].reshape(-1, d, d), out[:, d * d:]

    def forward(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        a, b = self.coefficients(t, s)
        return torch.einsum("bij,bj->bi", a, x) + b

    def lipschitz_certificate(self, s: Tensor) -> tuple[Tensor, bool]:
        """log10 ‖A(s, s)‖₂ for each s: the exact x-Lipschitz constant of u_θ(·, s)."""
        with torch.no_grad():
            a, _ = self.coefficients(s, s)
            norms = torch.linalg.matrix_norm(a.to(torch.float64), ord=2)
        return torch.log10(norms), True

    @torch.no_grad()
    def push_gaussian(self, mean: Tensor, cov: Tensor, t: float, s: float) -> tuple[Tensor, Tensor]:
        """Law of x + f_θ(x, t, s) for x ~ N(mean, cov): (M mean + c, M cov Mᵀ), M = I + (s − t) A(t, s)."""
        tt = torch.full((1,), t, dtype=mean.dtype, device=mean.device)
        ss = torch.full((1,), s, dtype=mean.dtype, device=mean.device)
        a, b = self.coefficients(tt, ss)
        m = torch.eye(self.x_dim, dtype=mean.dtype, device=mean.device) + (s - t) * a[0]
        return m @ mean + (s - t) * b[0], m @ cov @ m.T
