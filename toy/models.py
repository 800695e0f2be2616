"""Toy networks F_θ(x, t, s) for low-dimensional flows (THEORY.md §2).

:class:`MLP` feeds the network x together with sinusoidal embeddings of t and of the gap t − s, as the reference DiT
does, so ∂_s F flows only through the gap embedding. Its x ↦ F(x, t, s) Lipschitz constant is certified by
``tvm_theory.lipschitz.certified_mlp_lipschitz(model.linears, model.act_lipschitz, model.x_dim)``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# sup_x |d/dx (x · sigmoid(x))| = sup_x σ(x)(1 + x(1 − σ(x))) = 1.0998393…, attained at x ≈ 2.3994;
# checked numerically in tests/test_toy_models.py.
SILU_LIPSCHITZ = 1.0998393194


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 1000.0) -> Tensor:
    """[cos(ω_k · 1000 t), sin(ω_k · 1000 t)] with ω_k = max_period^(−k/(dim/2)), k < dim/2; shape (B, dim)."""
    if dim % 2:
        raise ValueError(f"dim: expected an even embedding size, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    arg = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class MLP(nn.Module):
    """F_θ(x, t, s) = W_L σ(… σ(W_1 [x, e(t), e(t − s)] + b_1) …) + b_L with σ = SiLU.

    Args:
        dim: data dimension D.
        hidden: width of each hidden layer.
        depth: number of hidden layers (≥ 1).
        emb_dim: size of each sinusoidal time embedding.
    """

    act_lipschitz = SILU_LIPSCHITZ

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 16):
        super().__init__()
        if min(dim, hidden, depth, emb_dim) < 1:
            raise ValueError(f"MLP: expected positive sizes, got dim={dim} hidden={hidden} depth={depth} emb_dim={emb_dim}")
        self.x_dim, self.emb_dim = dim, emb_dim
        sizes = [dim + 2 * emb_dim] + [hidden] * depth + [dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    @property
    def linears(self) -> list[nn.Linear]:
        return list(self.layers)

    def forward(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        h = torch.cat([x, sinusoidal_embedding(t, self.emb_dim), sinusoidal_embedding(t - s, self.emb_dim)], dim=1)
        for layer in self.layers[:-1]:
            h = nn.functional.silu(layer(h))
        return self.layers[-1](h)
