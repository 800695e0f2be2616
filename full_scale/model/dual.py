"""Forward-mode derivatives of the DiT's layers written out by hand (docs/THEORY.md §2, §9).

The DiT's ∂_s F (``DiT.forward_and_ds``) is built from these instead of ``torch.func.jvp``; the primal values come
from the plain forward's own calls, these functions add the tangents. The tangent is a plain
tensor, so the pass is ordinary autograd code: no functorch wrapper per operator, no zero-filled weight tangent
(a linear layer's tangent is ẋWᵀ, one matmul, where the generic linear rule also multiplies by Ẇ = 0), and
``torch.compile`` can fuse primal and tangent elementwise work into one kernel. Each tangent is checked against
``torch.func.jvp`` in float64 (tests/test_fs_dual.py). Tangents are computed in at least float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def linear(layer: nn.Linear, x: Tensor, xd: Tensor) -> tuple[Tensor, Tensor]:
    """y = x Wᵀ + b, ẏ = ẋ Wᵀ (the weights carry no tangent). W is read once (a parametrization runs once)."""
    weight = layer.weight
    return Fn.linear(x, weight, layer.bias), Fn.linear(xd, weight)


def silu_tangent(x: Tensor, xd: Tensor) -> Tensor:
    """Tangent of y = x σ(x): ẏ = ẋ σ(x) (1 + x (1 − σ(x)))."""
    xf = x.to(_compute_dtype(x))
    sig = torch.sigmoid(xf)
    return (xd * sig * (1 + xf * (1 - sig))).to(x.dtype)


def gelu_tanh_tangent(x: Tensor, xd: Tensor) -> Tensor:
    """Tangent of y = ½x(1 + tanh u), u = k(x + c x³), k = √(2/π), c = 0.044715:
    ẏ = ẋ [½(1 + tanh u) + ½x (1 − tanh² u) k (1 + 3c x²)]."""
    xf = x.to(_compute_dtype(x))
    th = torch.tanh(_GELU_K * (xf + _GELU_C * xf ** 3))
    slope = 0.5 * (1 + th) + 0.5 * xf * (1 - th * th) * _GELU_K * (1 + 3 * _GELU_C * xf * xf)
    return (xd * slope).to(x.dtype)


def rms_tangent(x: Tensor, xd: Tensor, eps: float) -> Tensor:
    """Tangent of n = x ρ, ρ = (mean(x²) + ε)^(−½) over the last dim: ṅ = ρ (ẋ − n · mean(n ẋ))."""
    xf, xdf = x.to(_compute_dtype(x)), xd.to(_compute_dtype(x))
    rho = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    n = xf * rho
    return rho * (xdf - n * (n * xdf).mean(-1, keepdim=True))


def layer_norm_tangent(x: Tensor, xd: Tensor, eps: float) -> Tensor:
    """Tangent of n = (x − μ)/σ, σ = (var(x) + ε)^½ over the last dim (no affine):
    ṅ = (ẋ − mean(ẋ) − n · mean(n ẋ)) / σ."""
    xf, xdf = x.to(_compute_dtype(x)), xd.to(_compute_dtype(x))
    var, mean = torch.var_mean(xf, dim=-1, keepdim=True, correction=0)
    inv = torch.rsqrt(var + eps)
    n = (xf - mean) * inv
    return inv * (xdf - xdf.mean(-1, keepdim=True) - n * (n * xdf).mean(-1, keepdim=True))


def rms_norm_module(norm: nn.Module, x: Tensor, xd: Tensor) -> tuple[Tensor, Tensor]:
    """``nn.RMSNorm`` (y = rms(x) · g, ẏ = ṙms(x) · g) or ``nn.Identity``."""
    if isinstance(norm, nn.Identity):
        return x, xd
    if not isinstance(norm, nn.RMSNorm) or norm.eps is None:
        raise TypeError(f"rms_norm_module: expected nn.RMSNorm with an explicit eps or nn.Identity, got {norm}")
    y = norm(x)
    yd = rms_tangent(x, xd, norm.eps)
    if norm.weight is not None:
        yd = yd * norm.weight
    return y, yd.to(y.dtype)


def modulate_tangent(x: Tensor, xd: Tensor, scale: Tensor, shift_d: Tensor, scale_d: Tensor) -> Tensor:
    """Tangent of y = x(1 + scale) + shift, (B, hidden) scale and shift broadcast over the tokens of x:
    ẏ = ẋ(1 + scale) + x · scȧle + shiḟt."""
    return xd * (1 + scale[:, None]) + x * scale_d[:, None] + shift_d[:, None]


def gated_residual(h: Tensor, hd: Tensor, gate: Tensor, gate_d: Tensor, a: Tensor, ad: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """h + g a and its tangent ḣ + ġ a + g ȧ, with a (B, hidden) gate broadcast over tokens."""
    y = h + gate[:, None] * a
    return y, (hd + gate_d[:, None] * a + gate[:, None] * ad).to(y.dtype)
