"""The sensitivity (nonlinear variation-of-constants, Alekseev–Gröbner) bound on the one-step error (docs/THEORY.md §6.1).

Fix x_t. The model's jump path is y(σ) = x_t + f_θ(x_t, t, σ), σ ∈ [0, t], with y(t) = x_t; the true path is
z(σ) = ψ(x_t, t, σ). With the residual of the model path against the TRUE field

    ρ(σ) = ∂_σ y(σ) − u(y(σ), σ),

the function g(σ) = ψ(y(σ), σ, 0) has g(0) = y(0), g(t) = ψ(x_t, t, 0) = z(0) and, because
∂_σ ψ(x, σ, 0) = −∂_x ψ(x, σ, 0) u(x, σ), g′(σ) = ∂_x ψ(y(σ), σ, 0) ρ(σ). Hence the exact identity

    y(0) − z(0) = −∫_0^t ∂_x ψ(y(σ), σ, 0) ρ(σ) dσ,

and the pathwise bound ‖y(0) − z(0)‖ ≤ I := ∫_0^t ‖∂_x ψ(y(σ), σ, 0)‖₂ ‖ρ(σ)‖ dσ. By Minkowski in L²,
D_t ≤ (E I²)^{1/2}, and W2 ≤ D_t (docs/THEORY.md §5). Unlike bound (a) no Lipschitz constant enters: the flow's own
Jacobian replaces exp(∫L), which is why this bound stays within a small factor of the true error where exp(∫L)
is astronomically loose (multimodal targets, §6.1). It needs the true velocity u and the true flow's Jacobian ∂_x ψ;
where those are known D_t can be computed directly, so this is a diagnostic that splits the known error over the
times σ at which it is made, not a certificate of W2 (docs/THEORY.md §6.1).

Numerics. J(σ) = ∂_x ψ(y(σ), σ, 0) is the solution at r = 0 of the variational equation dz/dr = u(z, r),
dJ/dr = ∂_x u(z, r) J started at (y(σ), I) at r = σ; it is integrated with fixed-step RK4 (``ode_steps`` steps,
∂_x u J by forward-mode JVPs of u), its error estimated by Richardson against half the steps. The σ-integral uses
adaptive Simpson panels shared by all samples (:func:`tvm_theory.analysis.quadrature.adaptive_simpson`): a panel is
split while its Simpson-vs-composite-Simpson difference exceeds its share of ``rtol`` — multimodal targets
concentrate the integrand where paths cross between modes.
The identity is checked sample by sample; its residual measures the combined quadrature and ODE error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..checks import check_finite
from ..param import JumpModel
from .quadrature import adaptive_simpson
from .stats import tail_quantiles

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SensitivityResult:
    """The sensitivity bound on D_t and its diagnostics; per-sample tensors have shape (n,).

    bound: (mean_i I_i²)^{1/2} ≥ D_t on these samples, I_i = ∫_0^t ‖∂_x ψ‖ ‖ρ‖ dσ.
    bound_directional: the same with ‖∂_x ψ ρ‖ in place of ‖∂_x ψ‖ ‖ρ‖ — also rigorous (‖∫ g‖ ≤ ∫ ‖g‖) and tighter
        where ρ is not along ∂_x ψ's top singular direction; equal to ``bound`` when ∂_x ψ is a multiple of I.
    bound_err: absolute numerical error of ``bound`` (quadrature + ODE; the inequality is exact per sample).
    bound_se: Monte Carlo standard error of ``bound`` as an estimate of its population value (delta method).
    per_sample: I_i.
    error_direct: ‖y(0) − z(0)‖ per sample, with z(0) the reference ψ(x_t, t, 0).
    paired_rmse: (mean_i ‖y(0) − z(0)‖²)^{1/2} = D_t on these samples.
    identity_residual: ‖(y(0) − z(0)) + ∫ ∂_xψ ρ dσ‖ per sample.
    identity_rel: ‖residual‖_rms / ‖y(0) − z(0)‖_rms — the check of the exact identity.
    core: (mean_i (∫ ‖ρ‖ dσ)²)^{1/2}, the bound with ∂_x ψ replaced by the identity; amplification = bound/core.
    quad_err, ode_err: estimated absolute errors in ``bound`` from the σ-quadrature and the variational ODE.
    sigma_nodes: the σ-nodes the adaptive quadrature used.
    jac_norm_quantiles, residual_quantiles: {"q50", "q90", "q99", "max"} of ‖∂_x ψ‖ and ‖ρ‖ over samples and nodes.
    """

    bound: float
    bound_directional: float
    bound_err: float
    bound_se: float
    per_sample: Tensor
    error_direct: Tensor
    paired_rmse: float
    identity_residual: Tensor
    identity_rel: float
    core: float
    amplification: float
    quad_err: float
    ode_err: float
    sigma_nodes: Tensor
    jac_norm_quantiles: dict = field(default_factory=dict)
    residual_quantiles: dict = field(default_factory=dict)


def _drift(u: Field, z: Tensor, jac: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """(u(z, r), ∂_x u(z, r) J) for z (B, D), J (B, D, D), r (B,): one JVP per column, batched as D·B rows."""
    b, d = z.shape
    z_rep = z.repeat(d, 1)  # row j·B + i holds z_i
    tangents = jac.permute(2, 0, 1).reshape(d * b, d)  # column j of J_i
    r_rep = r.repeat(d)
    out, dout = torch.func.jvp(lambda zz: u(zz, r_rep), (z_rep,), (tangents,))
    return out[:b], dout.reshape(d, b, d).permute(1, 2, 0)


def flow_jacobian(u: Field, y: Tensor, sigma: Tensor, n_steps: int) -> tuple[Tensor, Tensor]:
    """(ψ(y, σ, 0), ∂_x ψ(y, σ, 0)) per row by RK4 on the variational equation from r = σ_i down to r = 0.

    Every row takes ``n_steps`` steps of size σ_i/n_steps (rows with different start times run together).
    Returns z of shape (B, D) and J of shape (B, D, D).
    """
    b, d = y.shape
    z = y.clone()
    jac = torch.eye(d, dtype=y.dtype, device=y.device).expand(b, d, d).clone()
    h = -sigma / n_steps  # (B,), negative: backwards in time
    he = h[:, None]
    hj = h[:, None, None]
    for k in range(n_steps):
        r = sigma * (1 - k / n_steps)
        k1z, k1j = _drift(u, z, jac, r)
        k2z, k2j = _drift(u, z + 0.5 * he * k1z, jac + 0.5 * hj * k1j, r + 0.5 * h)
        k3z, k3j = _drift(u, z + 0.5 * he * k2z, jac + 0.5 * hj * k2j, r + 0.5 * h)
        k4z, k4j = _drift(u, z + he * k3z, jac + hj * k3j, (r + h).clamp_min(0.0))
        z = z + he / 6 * (k1z + 2 * k2z + 2 * k3z + k4z)
        jac = jac + hj / 6 * (k1j + 2 * k2j + 2 * k3j + k4j)
    return z, jac


def _integrand(model: JumpModel, u: Field, x_t: Tensor, t: float, sigmas: list[float], n_steps: int,
               n_check: int):
    """For each σ in ``sigmas``: ‖J‖₂‖ρ‖ (n,), J ρ (n, D), ‖ρ‖ (n,), ‖J‖₂ (n,), stacked along a leading node axis;
    the largest ODE error of ‖J‖₂‖ρ‖ over the first ``n_check`` samples (Richardson against half the steps:
    |h(M) − h(M/2)|/15, RK4 being 4th order) — a float per node; and ‖J ρ‖ (n,)."""
    n, d = x_t.shape
    k = len(sigmas)
    sig = torch.tensor(sigmas, dtype=x_t.dtype, device=x_t.device).repeat_interleave(n)  # (k·n,)
    x_rep = x_t.repeat(k, 1)
    f, dfds = model.displacement_and_ds(x_rep, torch.full_like(sig, t), sig)
    y = x_rep + f
    rho = dfds - u(y, sig)
    _, jac = flow_jacobian(u, y, sig, n_steps)
    jn = torch.linalg.matrix_norm(jac, ord=2)
    rn = rho.norm(dim=1)
    h = jn * rn
    check = (torch.arange(k * n, device=x_t.device) % n) < n_check
    _, jac_half = flow_jacobian(u, y[check], sig[check], max(1, n_steps // 2))
    h_err = ((h[check] - torch.linalg.matrix_norm(jac_half, ord=2) * rn[check]).abs() / 15).reshape(k, -1)
    jr = torch.einsum("bij,bj->bi", jac, rho)
    return (h.reshape(k, n), jr.reshape(k, n, d), rn.reshape(k, n), jn.reshape(k, n),
            h_err.max(dim=1).values, jr.norm(dim=1).reshape(k, n))


def sensitivity_bound(model: JumpModel, u: Field, x_t: Tensor, t: float, z0: Tensor, *, n_panels: int = 8,
                      rtol: float = 1e-3, max_rounds: int = 5, ode_steps: int = 64,
                      n_ode_check: int = 32) -> SensitivityResult:
    """The sensitivity bound on D_t for the one-step jump t → 0 and the check of its exact identity (docs/THEORY.md §6.1).

    Args:
        model: the model, a :class:`~tvm_theory.param.JumpModel` (its jump path y(σ) and ∂_σ y by JVP).
        u: the TRUE marginal velocity u(x, s), x of shape (B, D), s of shape (B,); must support forward-mode AD
            in x (``TestBed.velocity`` does).
        x_t: (n, D) starting points at time t (x_t ~ p_t; for t = 1, noise).
        t: jump start time in (0, 1].
        z0: (n, D) reference ψ(x_t, t, 0) from an independent solve (closed form or tight adaptive ODE).
        n_panels: initial number of Simpson panels on [0, t].
        rtol: target relative quadrature error of the mean of I_i.
        max_rounds: maximum panel-splitting rounds.
        ode_steps: RK4 steps of each variational solve.
        n_ode_check: samples whose variational solves are repeated with half the steps for the ODE error estimate.
    """
    check_finite("x_t", x_t)
    check_finite("z0", z0)
    if x_t.ndim != 2 or z0.shape != x_t.shape:
        raise ValueError(f"x_t, z0: expected equal shapes (n, D), got {tuple(x_t.shape)}, {tuple(z0.shape)}")
    t = float(t)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t: expected a jump start in (0, 1], got {t}")
    if not isinstance(ode_steps, int) or ode_steps < 1:
        raise ValueError(f"ode_steps: expected a positive int, got {ode_steps!r}")

    def integrand(sigmas: list[float]) -> tuple[Tensor, ...]:
        return _integrand(model, u, x_t, t, sigmas, ode_steps, n_ode_check)

    def richardson_size(diff: tuple[Tensor, ...]) -> float:
        """Size of S₂ − S on a panel for the scalar integrand ‖J‖‖ρ‖ and the identity's vector integrand J ρ."""
        return max(float(diff[0].abs().mean()), float(diff[1].norm(dim=1).mean()))

    with torch.no_grad():
        quad = adaptive_simpson(integrand, t, n_panels=n_panels, rtol=rtol, max_rounds=max_rounds,
                                error=richardson_size)
        per_sample, vec, core, directional = (quad.integral(k) for k in (0, 1, 2, 5))
        # Σ over panels of width × the largest per-sample ODE error at its nodes
        ode_err = sum(quad.width(p) * max(float(quad.values[v][4]) for v in p.nodes) for p in quad.panels)
        y0 = x_t + model.displacement(x_t, torch.full((x_t.shape[0],), t, dtype=x_t.dtype),
                                      torch.zeros(x_t.shape[0], dtype=x_t.dtype))
        e0 = y0 - z0
        resid = (e0 + vec).norm(dim=1)
        err_direct = e0.norm(dim=1)
        rmse = float(err_direct.pow(2).mean().sqrt())
        bound = float(per_sample.pow(2).mean().sqrt())
        mean_i = float(per_sample.mean())
        # Quadrature error of the mean of I scaled to the RMS; ODE error per sample propagated the same way.
        quad_err = bound * quad.error / max(mean_i, 1e-300)
        sq = per_sample.pow(2)
        bound_se = float(sq.std() / math.sqrt(len(sq))) / (2 * bound) if bound > 0 else 0.0
        jn, rn = quad.at_nodes(3), quad.at_nodes(2)
        core_rms = float(core.pow(2).mean().sqrt())
    return SensitivityResult(
        bound=bound, bound_directional=float(directional.pow(2).mean().sqrt()), bound_err=quad_err + ode_err,
        bound_se=bound_se, per_sample=per_sample, error_direct=err_direct, paired_rmse=rmse, identity_residual=resid,
        identity_rel=float(resid.pow(2).mean().sqrt()) / max(rmse, 1e-300), core=core_rms,
        amplification=bound / core_rms if core_rms > 0 else math.inf, quad_err=quad_err, ode_err=ode_err,
        sigma_nodes=quad.points, jac_norm_quantiles=tail_quantiles(jn), residual_quantiles=tail_quantiles(rn))
