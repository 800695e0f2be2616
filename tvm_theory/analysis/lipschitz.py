"""Lipschitz constants of x ↦ u_θ(x, s) for the bound's assumption (A3) (docs/THEORY.md §5, §6).

Two estimators, on opposite sides of the true constant L(s) = sup_x ‖∂_x u_θ(x, s)‖₂:

* :func:`certified_mlp_lipschitz` — an UPPER bound valid for every x and s: for an MLP
  F(x, t, s) = W_L σ(… σ(W_1 [x, e(t), e(t − s)] + b_1) …) + b_L whose activation σ is ℓ-Lipschitz,

      L ≤ ‖W_1[:, :D]‖₂ · ∏_{l ≥ 2} ‖W_l‖₂ · ℓ^(L − 1),

  because only the first D input columns see x (the time embeddings are constant in x). For a single linear layer
  (no activation) the bound is the exact constant of the affine map. Products of spectral norms overflow float64
  for unconstrained networks (docs/THEORY.md §6.1 saw 10^227 to 10^946), so the result is carried as log10.
* :func:`local_lipschitz` — a LOWER estimate: the largest ‖∂_x u(x)‖₂ found over probe points, each by batched
  power iteration on JᵀJ with one forward-mode JVP (J v) and one reverse-mode VJP (Jᵀ w) per iteration. Both the
  power iteration (a Rayleigh quotient never exceeds σ_max) and the maximum over finitely many probes can only
  under-estimate sup_x ‖J‖, so a bound built on it that looks violated is "inconclusive", never "violated" (§6).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_finite
from .stats import tail_quantiles

# Relative error allowance on a float64 spectral norm from an SVD (backward stable: |σ̂ − σ| ≲ c·n·ε·σ);
# each factor of the certificate is inflated by (1 + _SVD_REL · n) so that the product stays an upper bound.
_SVD_REL = 64 * torch.finfo(torch.float64).eps
_LOG10_MAX = math.log10(torch.finfo(torch.float64).max)


@dataclass(frozen=True)
class LipschitzCertificate:
    """An upper bound on the x-Lipschitz constant, in log10 and (where it fits in float64) as a value.

    log10_value: log10 of the certified constant.
    value: 10**log10_value, or ``inf`` where it overflows float64.
    layer_norms: the spectral norm of each factor (the first restricted to its x-columns), inflated for SVD error.
    n_activations: how many activation Lipschitz factors were multiplied in.
    exact: True when the certificate is the exact constant (a single affine layer).
    """

    log10_value: float
    value: float
    layer_norms: tuple[float, ...]
    n_activations: int
    exact: bool


def _spectral_norm(w: Tensor) -> float:
    """‖w‖₂ in float64 (largest singular value), inflated by the SVD's relative error so it is an upper bound."""
    w64 = w.detach().to(torch.float64)
    if w64.numel() == 0:
        return 0.0
    sigma = float(torch.linalg.matrix_norm(w64, ord=2))
    return sigma * (1.0 + _SVD_REL * max(w64.shape))


def certified_mlp_lipschitz(linears: Sequence[nn.Linear], act_lipschitz: float, x_dim: int) -> LipschitzCertificate:
    """Certified x-Lipschitz constant of an MLP F(x, t, s) (docs/THEORY.md §6: "certified L").

    Args:
        linears: the MLP's linear layers in order; an activation sits between consecutive layers.
        act_lipschitz: ℓ = sup |σ'| of the activation (SiLU: 1.0998…).
        x_dim: D, the number of leading input columns of the first layer that carry x; the others carry t and s.

    Returns:
        A :class:`LipschitzCertificate` with log10 of ‖W_1[:, :D]‖₂ · ∏_{l≥2} ‖W_l‖₂ · ℓ^(len(linears) − 1).
        The same constant bounds x ↦ u_θ(x, s) = F(x, s, s) for every s.
    """
    linears = list(linears)
    if not linears:
        raise ValueError("linears: expected at least one linear layer, got none")
    if not isinstance(x_dim, int) or not 1 <= x_dim <= linears[0].weight.shape[1]:
        raise ValueError(f"x_dim: expected an int in [1, {linears[0].weight.shape[1]}], got {x_dim!r}")
    if not (act_lipschitz > 0 and math.isfinite(act_lipschitz)):
        raise ValueError(f"act_lipschitz: expected a positive finite constant, got {act_lipschitz}")
    for i, (a, b) in enumerate(zip(linears[:-1], linears[1:])):
        if a.weight.shape[0] != b.weight.shape[1]:
            raise ValueError(f"linears: layer {i} outputs {a.weight.shape[0]} features but layer {i + 1} takes "
                             f"{b.weight.shape[1]}")
    norms = [_spectral_norm(linears[0].weight[:, :x_dim])] + [_spectral_norm(l.weight) for l in linears[1:]]
    n_act = len(linears) - 1
    if min(norms) == 0.0:
        log10 = -math.inf
    else:
        log10 = sum(math.log10(n) for n in norms) + n_act * math.log10(act_lipschitz)
    value = math.inf if log10 > _LOG10_MAX else 10.0 ** log10
    return LipschitzCertificate(log10_value=log10, value=value, layer_norms=tuple(norms), n_activations=n_act,
                                exact=n_act == 0)


@dataclass(frozen=True)
class LocalLipschitz:
    """Per-probe ‖∂_x u(x)‖₂ estimates from power iteration; a LOWER estimate of sup_x ‖∂_x u‖₂.

    per_point: (B,) Rayleigh-quotient estimates σ̂_i ≤ ‖J(x_i)‖₂.
    max: max_i σ̂_i — the local L (lower estimate of the true constant; depends on which points were probed).
    quantiles: {"q50", "q90", "q99", "max"} of per_point.
    iterations: power iterations run.
    rel_change: the largest relative change of σ̂_i among the rows still iterating at the end (0 if all stopped
        on ``tol``; a convergence indicator).
    """

    per_point: Tensor
    max: float
    quantiles: dict = field(default_factory=dict)
    iterations: int = 0
    rel_change: float = 0.0


def local_lipschitz(u: Callable[..., Tensor], x: Tensor, *, s: Tensor | None = None, n_iter: int = 100,
                    tol: float = 1e-7, generator: torch.Generator | None = None) -> LocalLipschitz:
    """Largest singular value of ∂_x u at each probe point by batched power iteration (docs/THEORY.md §6 "local L").

    ``u`` maps a batch (B, D) to (B, D) row by row (row i of the output depends only on row i of the input), so one
    JVP with tangents V gives the rows J_i v_i and one VJP with cotangents W gives J_iᵀ w_i for all i at once.
    With ``s`` (shape (B,)) ``u`` is called as u(x, s) and row i is probed at its own s_i. Iterates
    v ← JᵀJ v / ‖JᵀJ v‖ per row and returns σ̂_i = ‖J_i v_i‖ — a lower estimate of ‖J_i‖₂ (and the max over rows a
    lower estimate of the Lipschitz constant). A row stops once its σ̂_i changes by less than ``tol`` (relative);
    all stop after ``n_iter`` iterations.
    """
    check_finite("x", x)
    if x.ndim != 2:
        raise ValueError(f"x: expected probe points of shape (B, D), got {tuple(x.shape)}")
    if s is not None and s.shape != (x.shape[0],):
        raise ValueError(f"s: expected shape ({x.shape[0]},) to match the probes, got {tuple(s.shape)}")
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter: expected a positive int, got {n_iter!r}")

    def fn(idx: Tensor) -> Callable[[Tensor], Tensor]:
        return (lambda z: u(z)) if s is None else (lambda z: u(z, s[idx]))

    x = x.detach()
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    tiny = torch.finfo(v.dtype).tiny  # the smallest positive normal of this dtype (1e-300 rounds to 0 in float32)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(tiny)
    sigma = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)
    rel, it = 0.0, 0
    with torch.enable_grad():
        for it in range(1, n_iter + 1):
            f = fn(active)
            _, jv = torch.func.jvp(f, (x[active],), (v[active],))
            _, vjp_fn = torch.func.vjp(f, x[active])
            (jtjv,) = vjp_fn(jv)
            new_sigma = jv.norm(dim=1).detach()
            norm = jtjv.norm(dim=1, keepdim=True)
            v[active] = torch.where(norm > 0, jtjv / norm.clamp_min(tiny), v[active]).detach()
            change = (new_sigma - sigma[active]).abs() / new_sigma.clamp_min(tiny)
            sigma[active] = new_sigma
            rel = float(change.max())
            active = active[change >= tol]
            if active.numel() == 0:
                break
        # One last product with each final unit direction: σ̂ = ‖J v‖ never exceeds ‖J‖₂.
        _, jv = torch.func.jvp(fn(torch.arange(x.shape[0], device=x.device)), (x,), (v,))
    sigma = jv.norm(dim=1).detach()
    check_finite("local Lipschitz estimates", sigma)
    return LocalLipschitz(per_point=sigma, max=float(sigma.max()), quantiles=tail_quantiles(sigma), iterations=it,
                          rel_change=rel)


def model_local_lipschitz(velocity: Callable[[Tensor, Tensor], Tensor], probes: Sequence[Tensor], s_grid: Tensor,
                          **kwargs) -> list[LocalLipschitz]:
    """Local L(s) of x ↦ u_θ(x, s) on an s-grid: ``probes[k]`` (B_k, D) are the points probed at ``s_grid[k]``.

    ``velocity(x, s)`` is a model's u_θ with s of shape (B,) (e.g. ``JumpModel.velocity``). All probes run as one
    batch (row i at its own s), which is far cheaper than one call per s; the power iteration stops when every
    row has converged. Returns one :class:`LocalLipschitz` per grid point; its ``max`` is the lower estimate of
    L(s_k).
    """
    if len(probes) != s_grid.numel():
        raise ValueError(f"probes: expected one probe set per s in s_grid ({s_grid.numel()}), got {len(probes)}")
    x = torch.cat(list(probes))
    s = torch.cat([torch.full((p.shape[0],), float(sk), dtype=x.dtype, device=x.device)
                   for sk, p in zip(s_grid.tolist(), probes)])
    res = local_lipschitz(velocity, x, s=s, **kwargs)
    out = []
    for part in torch.split(res.per_point, [p.shape[0] for p in probes]):
        out.append(LocalLipschitz(per_point=part, max=float(part.max()), quantiles=tail_quantiles(part),
                                  iterations=res.iterations, rel_change=res.rel_change))
    return out
