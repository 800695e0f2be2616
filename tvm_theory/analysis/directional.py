"""The sensitivity diagnostic of docs/THEORY.md §6.1 and §10 in its directional form, for high dimensions.

Along the few-step sampler's concatenated path y(σ) = X_k + f_θ(X_k, t_k, σ), σ ∈ [t_{k+1}, t_k], with residual against
the TRUE field ρ(σ) = ∂_s f_θ(X_k, t_k, σ) − u(y(σ), σ), the Alekseev–Gröbner identity is

    X_N − ψ(x1, 1, 0) = −∫_0^1 ∂_xψ(y(σ), σ, 0) ρ(σ) dσ,   so   ‖X_N − ψ(x1, 1, 0)‖ ≤ ∫_0^1 ‖∂_xψ(y(σ), σ, 0) ρ(σ)‖ dσ.

:mod:`tvm_theory.analysis.sensitivity` and ``fewstep.few_step_sensitivity`` form the whole Jacobian ∂_xψ (D forward
tangents per sample), which is out of reach at D = 4096. Only the product ∂_xψ ρ enters the directional form, and it
is one forward tangent: the solution at r = 0 of dz/dr = u(z, r), dv/dr = ∂_x u(z, r) v from (y(σ), ρ(σ)) at r = σ
(adaptive Dormand–Prince on the pair, ∂_x u v in closed form or by ``torch.func.jvp``; error = distance to a 10×
tighter solve). The
σ-integral is Gauss–Legendre on each jump with m and 2m nodes (error = their difference).

What it is: a diagnostic, not a certificate (docs/THEORY.md §6.1): it needs the true u and ψ, with which the error
itself is known; it shows *when* along the path the error is made (‖ρ(σ)‖) and how much the true flow amplifies it
on the way to σ = 0 (‖∂_xψ ρ‖ / ‖ρ‖). The identity residual checks the numerics.

API: ``flow_jvp(u, y, sigma, v, *, rtol, atol, u_jvp=None) -> (ψ(y, σ, 0), ∂_xψ(y, σ, 0) v, its error per row)``;
``directional_sensitivity(model, u, x1, grid, z0, *, n_nodes=4, rtol=1e-4, u_jvp=None) -> DirectionalSensitivity``.
``u(x, s)`` and the model are always called on the n rows of x1 (s of shape (n,)), so per-row conditioning stays
aligned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from numpy.polynomial.legendre import leggauss
from torch import Tensor

from ..checks import check_finite
from ..param import JumpModel
from .fewstep import check_time_grid, sampler_states
from .ode import odeint_with_error

Field = Callable[[Tensor, Tensor], Tensor]


TangentField = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def flow_jvp(u: Field, y: Tensor, sigma: float, v: Tensor, *, rtol: float = 1e-4, atol: float = 1e-4,
             u_jvp: TangentField | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(ψ(y, σ, 0), ∂_xψ(y, σ, 0) v, per-sample error of the latter) from the augmented ODE
    d(z, v)/dr = (u(z, r), ∂_x u(z, r) v), solved from r = σ down to 0 by the adaptive Dormand–Prince of
    :mod:`tvm_theory.analysis.ode` (error control on every coordinate of z and v, so a steep field takes small steps
    instead of going unstable); the error is the distance of the pair (z, v) to a 10× tighter solve.

    ``u_jvp(x, s, v) -> (u(x, s), ∂_x u(x, s) v)`` if the field has one in closed form (faster than autodiff);
    otherwise ``torch.func.jvp`` of ``u``."""
    d = y.shape[1]

    def field(state: Tensor, r: float) -> Tensor:
        z, tan = state[:, :d], state[:, d:]
        rr = torch.full((z.shape[0],), min(max(r, 0.0), 1.0), dtype=z.dtype, device=z.device)
        out = u_jvp(z, rr, tan) if u_jvp is not None else torch.func.jvp(lambda zz: u(zz, rr), (z,), (tan,))
        return torch.cat(out, dim=1)

    sol = odeint_with_error(field, torch.cat([y, v], dim=1), float(sigma), 0.0, rtol=rtol, atol=atol)
    return sol.x[:, :d], sol.x[:, d:], sol.err  # the error of the pair bounds that of the tangent


@dataclass(frozen=True)
class DirectionalSensitivity:
    """The directional diagnostic along the N-step path; per-node profiles are RMS over the samples.

    bound: RMS over samples of ∫‖∂_xψ ρ‖ dσ (≥ the paired RMSE on these samples, up to the numerical errors);
    paired_rmse: RMS of ‖X_N − z0‖; identity_rel: ‖X_N − z0 + ∫∂_xψ ρ‖_rms / paired_rmse;
    core: RMS of ∫‖ρ‖ dσ (no amplification); per_jump: RMS of each jump's share of ``bound``;
    sigma, profile_jrho, profile_rho: the 2m-node σ's and the RMS of ‖∂_xψ ρ‖ and ‖ρ‖ there (the profile);
    quad_err: |2m-node − m-node| of ``bound``; ode_err: Σ_nodes weight × the largest tangent-solve error there.
    """

    bound: float
    paired_rmse: float
    identity_rel: float
    core: float
    per_jump: list[float]
    sigma: list[float]
    profile_jrho: list[float]
    profile_rho: list[float]
    quad_err: float
    ode_err: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _jump_nodes(model: JumpModel, u: Field, x: Tensor, tk: float, lo: float, hi: float, m: int, rtol: float,
                u_jvp: TangentField | None):
    """Per node σ_j of m-point Gauss–Legendre on [lo, hi]: weights, ∂_xψ ρ (n, D), ‖ρ‖ (n,), the largest ODE error
    of ∂_xψ ρ over the samples."""
    nodes, weights = leggauss(m)
    sig = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    wts = 0.5 * (hi - lo) * weights
    n = x.shape[0]
    out = []
    for sj, wj in zip(sig.tolist(), wts.tolist()):
        ss = torch.full((n,), sj, dtype=x.dtype, device=x.device)
        f, dfds = model.displacement_and_ds(x, torch.full_like(ss, tk), ss)
        y = (x + f).detach()
        rho = (dfds - u(y, ss)).detach()
        _, jr, err = flow_jvp(u, y, sj, rho, rtol=rtol, atol=rtol, u_jvp=u_jvp)
        out.append((sj, wj, jr.detach(), rho.norm(dim=1), float(err.max())))
    return out


def directional_sensitivity(model: JumpModel, u: Field, x1: Tensor, grid, z0: Tensor, *, n_nodes: int = 4,
                            rtol: float = 1e-4, u_jvp: TangentField | None = None) -> DirectionalSensitivity:
    """The directional Alekseev–Gröbner diagnostic for the sampler on ``grid`` (module docstring).

    Args:
        model: a :class:`~tvm_theory.param.JumpModel` on (n, D) tensors.
        u: the TRUE field u(x, s) (s of shape (n,)), differentiable by ``torch.func.jvp`` in x.
        x1: (n, D) noise; z0: (n, D) reference ψ(x1, 1, 0) from an independent tight solve.
        n_nodes: m, Gauss–Legendre nodes per jump (2m are used, m for the error).
        rtol: tolerance (relative and absolute) of each tangent solve (:func:`flow_jvp`).
        u_jvp: (u, ∂_x u v) of the true field in closed form, if it has one (see :func:`flow_jvp`).
    """
    check_finite("x1", x1)
    check_finite("z0", z0)
    if x1.ndim != 2 or z0.shape != x1.shape:
        raise ValueError(f"x1, z0: expected equal shapes (n, D), got {tuple(x1.shape)}, {tuple(z0.shape)}")
    if not isinstance(n_nodes, int) or n_nodes < 1:
        raise ValueError(f"n_nodes: expected a positive int, got {n_nodes!r}")
    grid = check_time_grid(grid)
    xs = sampler_states(model, x1, grid)
    rms = lambda v: float(v.pow(2).mean().sqrt())  # noqa: E731
    totals, per_jump, profile = {}, [], []
    vec = torch.zeros_like(x1)
    core = torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device)
    ode_err = 0.0
    for m in (n_nodes, 2 * n_nodes):
        total = torch.zeros_like(core)
        for k in range(len(grid) - 1):
            share = torch.zeros_like(core)
            for sj, wj, jr, rn, err in _jump_nodes(model, u, xs[k], grid[k], grid[k + 1], grid[k], m, rtol,
                                                          u_jvp):
                share += wj * jr.norm(dim=1)
                if m == 2 * n_nodes:
                    vec += wj * jr
                    core += wj * rn
                    ode_err += wj * err
                    profile.append((sj, rms(jr.norm(dim=1)), rms(rn)))
            total += share
            if m == 2 * n_nodes:
                per_jump.append(rms(share))
        totals[m] = total
    e0 = xs[-1] - z0
    paired = rms(e0.norm(dim=1))
    bound = rms(totals[2 * n_nodes])
    profile.sort()
    return DirectionalSensitivity(
        bound=bound, paired_rmse=paired, identity_rel=rms((e0 + vec).norm(dim=1)) / max(paired, 1e-300),
        core=rms(core), per_jump=per_jump, sigma=[p[0] for p in profile], profile_jrho=[p[1] for p in profile],
        profile_rho=[p[2] for p in profile], quad_err=abs(bound - rms(totals[n_nodes])), ode_err=ode_err)
