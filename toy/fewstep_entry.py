"""The few-step part of a `python -m toy verify` report entry (docs/THEORY.md §10; proofs/README.md §9).

For each N in ``steps`` (default 1, 2, 4), on the verifier's fixed noise x1 and exact-flow samples z0 = ψ(x1, 1, 0):

    W2_emp(N-step samples, z0) ≤ D_N (paired RMSE) ≤ (a)_N = ∫_0^1 λ(σ)[√A_N(σ) + √B(σ)] dσ,   D_N² ≤ (b)_N,
    D_N ≤ (v)_N (variant (v): the jumps' Lipschitz constants transport the error, A under p_{t_k}),

with A_N the terminal residual of jump k under the law q_k the sampler reaches at t_k
(:func:`tvm_theory.analysis.fewstep.few_step_report`), λ from the certified L (a bound, certified in L only: B needs the
true u) and from the local L of the one-step probes (an estimate, never called violated); and the Alekseev–Gröbner
diagnostic along the concatenated path (``few_step_sensitivity``: needs u and ∂_xψ, so it decomposes a known error —
it is not a certificate). Every ``*_err`` is 3 standard errors + quadrature + ODE errors; verdicts as in
``tvm_theory.analysis.bounds.verdict``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from tvm_theory.analysis.bounds import verdict
from tvm_theory.analysis.estimate import Estimate
from tvm_theory.analysis.fewstep import few_step_report, few_step_sensitivity, uniform_grid
from tvm_theory.analysis.transport import w2_gaussian

K_SIGMA = 3.0


def points_per_jump(s_grid: int, n: int) -> int:
    """Odd number of σ-nodes per jump so that N jumps use about as many nodes as the one-step s-grid."""
    p = max(3, (s_grid - 1) // n + 1)
    return p if p % 2 else p + 1


def _bound_fields(out: dict, name: str, lin: Estimate, log10: Estimate, half: bool) -> None:
    """``name``, ``name_err`` (null where it overflows) and ``log10_name``, ``log10_name_err``; ``half``: the
    estimate bounds W2², so its square root is reported."""
    p = 0.5 if half else 1.0
    out["log10_" + name] = p * log10.value
    out["log10_" + name + "_err"] = p * log10.err(K_SIGMA)
    if math.isfinite(lin.value) and p * log10.value < 300:
        v = lin.value**p
        out[name] = v
        out[name + "_err"] = lin.err(K_SIGMA) * (0.5 * v / max(lin.value, 1e-300) if half else 1.0)
    else:
        out[name] = out[name + "_err"] = None


def _local_verdict(v: str) -> str:
    return "inconclusive (local L)" if v == "violated" else v


def few_step_entry(bed, net, jump, x1: torch.Tensor, z0: torch.Tensor, z0_err: float, *, steps=(1, 2, 4),
                   s_grid: int = 129, n_sens: int = 128, seed: int = 0, local_L=None, sens_ode_steps: int = 48,
                   sens_nodes: int = 8, exact_gaussian=None) -> dict:
    """{str(N): fields} for every N (see the module docstring).

    Args:
        net: the float64 network (for ``lipschitz_certificate``); jump: its JumpModel.
        local_L: (s, L(s)) of the one-step local profile on [0, 1], interpolated in σ; None skips those fields.
        exact_gaussian: a callable N ↦ W2 of the exact N-step law (affine model on a Gaussian bed), or None.
    """
    def cert(s):
        lg, _ = net.lipschitz_certificate(torch.as_tensor(s, dtype=torch.float64))
        lg = lg.numpy()
        return np.where(np.isneginf(lg), 0.0, 10.0 ** np.minimum(lg, 300))

    def cert_jump(t, s):
        """A Lipschitz constant of the jump map x ↦ x + (s − t)F(x, t, s): exact for the affine network
        (‖I + (s − t)A(t, s)‖₂), 1 + (t − s)·(product of spectral norms) for an MLP."""
        if hasattr(net, "coefficients"):
            a, _ = net.coefficients(torch.tensor([t], dtype=torch.float64), torch.tensor([s], dtype=torch.float64))
            return float(torch.linalg.matrix_norm(torch.eye(a.shape[-1], dtype=torch.float64) + (s - t) * a[0], 2))
        return 1.0 + (t - s) * float(cert(np.array([s]))[0])

    out = {}
    for n in steps:
        grid = uniform_grid(n)
        pts = points_per_jump(s_grid, n)
        gen = lambda: torch.Generator().manual_seed(40_000 + seed + n)  # noqa: E731
        rep = few_step_report(jump, bed, grid=grid, L=cert, x1=x1, z0=z0, z0_err=z0_err, points=pts,
                              generator=gen(), n_boot=200, seed=seed, jump_lipschitz=cert_jump)
        e = {"n_steps": n, "grid": grid, "points_per_jump": pts,
             "w2_emp": rep.w2.value, "w2_emp_err": rep.w2.err(K_SIGMA),
             "paired_rmse": rep.D.value, "paired_rmse_err": rep.D.err(K_SIGMA),
             "E_k": rep.E,
             "log10_E_k_bound_certified": [v / math.log(10) for v in rep.log_E_bound]}
        _bound_fields(e, "bound_a_certified", rep.bounds["bound_a"], rep.bounds_log10["bound_a"], False)
        _bound_fields(e, "bound_b_certified", rep.bounds["bound_b"], rep.bounds_log10["bound_b"], True)
        _bound_fields(e, "bound_v_certified", rep.bounds["bound_v"], rep.bounds_log10["bound_v"], False)
        e["core"] = rep.bounds["core"].value
        e["log10_amplification_certified"] = rep.bounds_log10["amplification"].value
        verdicts = {"W2_emp<=D_N": rep.comparisons["W2<=D_N"].verdict,
                    "D_N<=(a)_N_certified": rep.comparisons["D_N<=(a)_N"].verdict,
                    "D_N^2<=(b)_N_certified": rep.comparisons["D_N^2<=(b)_N"].verdict,
                    "D_N<=(v)_N_certified": rep.comparisons["D_N<=(v)_N"].verdict}
        if local_L is not None:
            s_loc, L_loc = local_L
            rep_l = few_step_report(jump, bed, grid=grid, L=lambda s: np.interp(s, s_loc, L_loc), x1=x1, z0=z0,
                                    z0_err=z0_err, points=pts, generator=gen(), n_boot=200, seed=seed,
                                    compute_w2=False)
            _bound_fields(e, "bound_a_local", rep_l.bounds["bound_a"], rep_l.bounds_log10["bound_a"], False)
            e["log10_amplification_local"] = rep_l.bounds_log10["amplification"].value
            verdicts["D_N<=(a)_N_local"] = _local_verdict(rep_l.comparisons["D_N<=(a)_N"].verdict)
        m = min(n_sens, x1.shape[0])
        sens = few_step_sensitivity(jump, bed.velocity, x1[:m], grid, z0[:m], n_nodes=sens_nodes,
                                    nodes_per_unit=3 * sens_nodes, ode_steps=sens_ode_steps)
        s_est = Estimate(sens.bound, 0.0, sens.quad_err, sens.ode_err)
        e["bound_sensitivity"] = sens.bound
        e["bound_sensitivity_err"] = s_est.err(K_SIGMA)
        e["bound_sensitivity_directional"] = sens.bound_directional
        e["sensitivity"] = {"n": m, "paired_rmse_same_samples": sens.paired_rmse, "core": sens.core,
                            "per_jump": sens.per_jump, "identity_rel_residual": sens.identity_rel,
                            "quad_err": sens.quad_err, "ode_err": sens.ode_err,
                            "ratio_to_paired_rmse": sens.bound / max(sens.paired_rmse, 1e-300)}
        verdicts["D_N<=sensitivity"] = verdict(Estimate(sens.paired_rmse), s_est, K_SIGMA)
        e["verdicts"] = verdicts
        if exact_gaussian is not None:
            e["w2_exact"] = exact_gaussian(n)
        e["ratios"] = {"bound_sensitivity/w2_emp": sens.bound / max(rep.w2.value, 1e-300),
                       "log10 bound_a_certified/w2_emp": e["log10_bound_a_certified"] - math.log10(rep.w2.value)
                       if rep.w2.value > 0 else None}
        e["errors"] = {"w2_emp": rep.w2.to_dict(), "paired_rmse": rep.D.to_dict(),
                       "bounds_certified": {k: v.to_dict() for k, v in rep.bounds.items()},
                       "bounds_log10_certified": {k: v.to_dict() for k, v in rep.bounds_log10.items()}}
        out[str(n)] = e
    return out


def affine_exact_w2(net, bed):
    """N ↦ exact W2 of the N-step law of an affine network (``toy.models.AffineModel``) on a Gaussian bed."""
    def fn(n):
        grid = uniform_grid(n)
        d = bed.dim
        m, c = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
        for a, b in zip(grid[:-1], grid[1:]):
            m, c = net.push_gaussian(m, c, a, b)
        return w2_gaussian(m, c, bed.mean, bed.std**2 * torch.eye(d, dtype=torch.float64))
    return fn


__all__ = ["few_step_entry", "affine_exact_w2", "points_per_jump"]
