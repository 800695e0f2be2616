"""The W2 bounds of docs/THEORY.md §4–6, each with its numerical error, and the verdict rule.

API
---
* ``bound_report(model, testbed, t, *, x_t=None, n=4096, s_grid=None, L, ...) -> BoundReport`` — the Monte Carlo
  ladder for any :class:`~tvm_theory.param.JumpModel` on a test bed: A_t(s), B(s) (direct form; optionally also the
  flow-matching form), λ, Λ_t, D_t, optionally W2_emp, bounds (a), (b), (c) and the paper's explicit form, with
  bootstrap standard errors, quadrature errors (grid vs. every-other-point grid) and ODE errors of ψ.
* ``exact_affine_report(model, bed, t, *, s_grid=None, L=None) -> BoundReport`` — the same with exact A, B, D_t and
  W2 for an affine model (``tvm_theory.analysis.testbeds.AffineJump``) on a ``Gaussian``; only quadrature error remains.
* ``evaluate_bounds(t, s, A, B, L, A_reps=None, B_reps=None) -> (dict[str, Estimate], dict[str, Estimate])`` — the
  bounds from per-s profiles (linear values and log10 values), the piece both reports share.
* ``verdict(lhs, rhs, k=3.0) -> "holds" | "violated" | "inconclusive"`` for the claim lhs ≤ rhs.
* ``log_bounds(t, s, A, B, L)``; the grids (``make_grid(t, n)``) and the trapezoid rule come from
  :mod:`tvm_theory.analysis.quadrature`.

Definitions (docs/THEORY.md §5), on an s-grid 0 = s_0 < … < s_m = t:
  A_t(s) = E‖∂_s f_θ(x_t, t, s) − u_θ(x_t + f_θ(x_t, t, s), s)‖²,  B(s) = E_{p_s}‖u_θ(x, s) − u(x, s)‖²,
  λ(s) = exp(∫_0^s L), Λ_t = ∫_0^t λ, D_t = (E‖x_t + f_θ(x_t, t, 0) − ψ(x_t, t, 0)‖²)^{1/2};
  (a) = ∫ λ(√A + √B) = core × amplification with core = ∫(√A + √B) (§6.1);
  (b) = 2 Λ_t ∫ λ(A + B);  (c) = 3t ∫ exp(3 ∫_0^r L(u)²(t − u) du)(A + B)(r) dr;  paper (§4) = ∫ λ(A + B).
Everything is computed in log space (λ can reach e^1000 for certified constants of MLPs), so log10 values are always
finite; linear values overflow to inf. The chain checked is W2 ≤ D_t ≤ (a) and D_t² ≤ (b), (c); the paper's form
is compared with W2² where W2 is exact and with D_t² always (D_t² > paper does not by itself refute the paper's
claim about W2², since W2 ≤ D_t; it does refute the paper's proof, which bounds D_t²).

Errors (docs/THEORY.md §6): ``se`` is a bootstrap standard error over the samples (the same resampling for A and D_t,
which share x_t; an independent one for B); ``quad`` = |value on the grid − value on the grid's every other point|,
a conservative estimate for the trapezoid rule; ``ode`` = the L²(samples) size of ψ's error estimate (which bounds
its effect on D_t and W2_emp by Minkowski's inequality).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .estimate import Estimate
from .logspace import abs_change, exp_inf, log0, logsumexp
from .ode import OdeSolution
from .quadrature import check_grid, cumulative_trapezoid, make_grid, trapezoid_weights
from .testbeds import AffineJump, Gaussian, TestBed
from .testbeds.base import scalar_time
from .transport import w2

LN10 = math.log(10.0)
ROUNDING = 1e-12  # relative allowance for floating-point rounding in verdicts of exact quantities
BOUND_NAMES = ("core", "amplification", "lambda_t", "Lambda", "bound_a", "bound_b", "bound_c", "paper")


def log_bounds(t: float, s: np.ndarray, A: np.ndarray, B: np.ndarray, L: np.ndarray) -> dict[str, np.ndarray]:
    """Natural logs of the quantities in ``BOUND_NAMES`` by the trapezoid rule on s; A, B of shape (..., len(s)).

    amplification = (a)/core (a λ-weighted mean of λ, in [1, λ(t)]); lambda_t = λ(t) = exp(∫_0^t L).
    """
    w = trapezoid_weights(s)
    A, B = np.maximum(A, 0.0), np.maximum(B, 0.0)
    with np.errstate(over="ignore"):  # a huge certified L: its square overflows to inf, and so does (c)
        return _log_bounds(t, s, w, A, B, L)


def _log_bounds(t, s, w, A, B, L):
    log_lam = cumulative_trapezoid(L, s)
    g, h = np.sqrt(A) + np.sqrt(B), A + B
    out = {"core": log0((w * g).sum(-1)), "bound_a": logsumexp(log_lam + log0(w * g)),
           "Lambda": logsumexp(log_lam + log0(w)), "paper": logsumexp(log_lam + log0(w * h))}
    with np.errstate(invalid="ignore"):
        out["amplification"] = out["bound_a"] - out["core"]
    out["lambda_t"] = log_lam[-1] + np.zeros_like(out["core"])
    out["bound_b"] = math.log(2.0) + out["Lambda"] + out["paper"]
    inner = cumulative_trapezoid(np.where(s < t, L, 0.0) ** 2 * (t - s), s)  # no inf·0 at s = t
    out["bound_c"] = math.log(3.0 * t) + logsumexp(3.0 * inner + log0(w * h))
    return out


def evaluate_bounds(t: float, s: np.ndarray, A: np.ndarray, B: np.ndarray, L: np.ndarray,
                    A_reps: np.ndarray | None = None, B_reps: np.ndarray | None = None
                    ) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """The bounds of ``BOUND_NAMES`` as (linear Estimates, log10 Estimates).

    quad: |grid value − value on s[::2]|; se: standard deviation over bootstrap replicates of the profiles
    (A_reps, B_reps of shape (R, len(s)); either may be None).
    """
    fine = log_bounds(t, s, A, B, L)
    coarse = log_bounds(t, s[::2], A[::2], B[::2], L[::2])
    reps = None
    if A_reps is not None or B_reps is not None:
        reps = log_bounds(t, s, A if A_reps is None else A_reps, B if B_reps is None else B_reps, L)
    lin, log10 = {}, {}
    for name in BOUND_NAMES:
        f, c = float(fine[name]), float(coarse[name])
        if math.isnan(f):  # amplification with core = 0: undefined
            lin[name] = log10[name] = Estimate(math.nan)
            continue
        se_log = se_lin = 0.0
        if reps is not None:
            r = reps[name][np.isfinite(reps[name])]
            se_log = float(r.std(ddof=1)) if r.size > 1 else 0.0
            se_lin = float(exp_inf(r).std(ddof=1)) if r.size > 1 else 0.0
            se_lin = se_lin if math.isfinite(se_lin) else math.inf
        lin[name] = Estimate(float(exp_inf(f)), se_lin, abs_change(float(exp_inf(f)), float(exp_inf(c))))
        log10[name] = Estimate(f / LN10, se_log / LN10, abs_change(f, c) / LN10)
    return lin, log10


# ---- verdicts ------------------------------------------------------------------------------------------------------
def verdict(lhs: Estimate, rhs: Estimate, k: float = 3.0) -> str:
    """Verdict on the claim lhs ≤ rhs, never stronger than the errors allow.

    tol = k·sqrt(se_l² + se_r²) + (deterministic errors of both) + 1e-12·max(|lhs|, |rhs|) (rounding).
    "violated" if lhs − rhs > tol, "holds" if rhs − lhs ≥ tol, else "inconclusive" (also for NaN). Infinite
    values follow the same rule (an infinite rhs with a finite lhs holds; any infinite error is inconclusive
    unless the gap is infinite too).
    """
    a, b = lhs.value, rhs.value
    finite = [abs(v) for v in (a, b) if math.isfinite(v)]
    tol = k * math.hypot(lhs.se, rhs.se) + lhs.det + rhs.det + ROUNDING * max(finite, default=0.0)
    gap = a - b  # ±inf when one side is infinite; the rule below then still applies
    if math.isnan(gap) or math.isnan(tol):
        return "inconclusive"
    if gap > tol:
        return "violated"
    if -gap >= tol:
        return "holds"
    return "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """The claim ``lhs_name ≤ rhs_name`` with both sides, the scale compared on and the verdict."""

    lhs_name: str
    rhs_name: str
    lhs: Estimate
    rhs: Estimate
    scale: str
    verdict: str

    def to_dict(self) -> dict:
        return {"claim": f"{self.lhs_name} <= {self.rhs_name}", "lhs": self.lhs.to_dict(), "rhs": self.rhs.to_dict(),
                "scale": self.scale, "verdict": self.verdict}


def compare(lhs_name: str, lhs: Estimate, rhs_name: str, rhs: Estimate, rhs_log10: Estimate | None = None,
            k: float = 3.0) -> Comparison:
    """Compare on the linear scale, or in log10 units when a side overflowed (``rhs_log10`` then required)."""
    if math.isfinite(lhs.value) and math.isfinite(rhs.value) or rhs_log10 is None:
        return Comparison(lhs_name, rhs_name, lhs, rhs, "linear", verdict(lhs, rhs, k))
    lhs_l = lhs.log10(k)
    rhs_l = Estimate(rhs_log10.value, 0.0, k * rhs_log10.se + rhs_log10.det)
    return Comparison(lhs_name, rhs_name, lhs_l, rhs_l, "log10", verdict(lhs_l, rhs_l, k))


# ---- reports -------------------------------------------------------------------------------------------------------
@dataclass
class BoundReport:
    """Everything of the verification ladder at one t (docs/THEORY.md §6); ``to_dict()`` gives JSON-ready data.

    ``w2`` is the exact W2 (``w2_kind == "exact"``), the empirical W2 between the model's and ψ's samples
    (``"empirical"``) or None; with the empirical one, ``w2_floor`` is the finite-sample floor: the empirical W2
    between ψ's samples (exact samples of p0 up to the ODE error) and as many fresh samples of p0 (docs/THEORY.md §6). ``bounds`` / ``bounds_log10`` hold the quantities of ``BOUND_NAMES``;
    ``comparisons`` the ladder's claims with verdicts. Profiles A, B (and B_fm) are per grid point, with
    bootstrap standard errors ``A_se``, ``B_se`` (None where exact).
    """

    t: float
    n_samples: int | None
    s: np.ndarray
    A: np.ndarray
    B: np.ndarray
    L: np.ndarray
    D: Estimate
    bounds: dict[str, Estimate]
    bounds_log10: dict[str, Estimate]
    w2: Estimate | None = None
    w2_kind: str = "none"
    w2_floor: Estimate | None = None
    A_se: np.ndarray | None = None
    B_se: np.ndarray | None = None
    B_fm: np.ndarray | None = None
    B_fm_se: np.ndarray | None = None
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    @property
    def log_lambda(self) -> np.ndarray:
        """log λ(s) = ∫_0^s L on the grid."""
        return cumulative_trapezoid(self.L, self.s)

    def to_dict(self) -> dict:
        def arr(v):
            return None if v is None else [float(x) for x in v]
        return {
            "t": self.t, "n_samples": self.n_samples, "w2_kind": self.w2_kind,
            "w2": None if self.w2 is None else self.w2.to_dict(),
            "w2_floor": None if self.w2_floor is None else self.w2_floor.to_dict(), "D_t": self.D.to_dict(),
            "bounds": {k: v.to_dict() for k, v in self.bounds.items()},
            "bounds_log10": {k: v.to_dict() for k, v in self.bounds_log10.items()},
            "comparisons": {k: v.to_dict() for k, v in self.comparisons.items()},
            "profiles": {"s": arr(self.s), "A": arr(self.A), "A_se": arr(self.A_se), "B": arr(self.B),
                         "B_se": arr(self.B_se), "B_fm": arr(self.B_fm), "B_fm_se": arr(self.B_fm_se),
                         "L": arr(self.L), "log_lambda": arr(self.log_lambda)},
        }

    def _compare_all(self, k: float) -> None:
        b, bl, D = self.bounds, self.bounds_log10, self.D
        c = {}
        if self.w2 is not None:
            # For empirical measures the identity pairing is a coupling, so W2_emp ≤ D_t holds exactly on these
            # samples: compare with D_t's sample value (no standard error).
            d_here = D if self.w2_kind == "exact" else Estimate(D.value, 0.0, D.quad, D.ode)
            c["W2<=D_t"] = compare("W2", self.w2, "D_t", d_here, k=k)
        c["D_t<=(a)"] = compare("D_t", D, "(a)", b["bound_a"], bl["bound_a"], k)
        c["D_t^2<=(b)"] = compare("D_t^2", D.square(), "(b)", b["bound_b"], bl["bound_b"], k)
        c["D_t^2<=(c)"] = compare("D_t^2", D.square(), "(c)", b["bound_c"], bl["bound_c"], k)
        c["D_t^2<=paper"] = compare("D_t^2", D.square(), "paper", b["paper"], bl["paper"], k)
        if self.w2 is not None and self.w2_kind == "exact":
            c["W2^2<=paper"] = compare("W2^2", self.w2.square(), "paper", b["paper"], bl["paper"], k)
        self.comparisons = c


def _profile_L(L, s: np.ndarray) -> np.ndarray:
    """L(s) on the grid from a callable (vectorized over a numpy array), an array of len(s) or a number."""
    if callable(L):
        L = L(s)
    if torch.is_tensor(L):
        L = L.detach().cpu().numpy()
    L = np.broadcast_to(np.asarray(L, dtype=np.float64), s.shape).copy() if np.ndim(L) == 0 else \
        np.asarray(L, dtype=np.float64)
    if L.shape != s.shape:
        raise ValueError(f"L: expected a number, a callable or an array of shape {s.shape}, got shape {L.shape}")
    if not np.isfinite(L).all() or (L < 0).any():
        raise ValueError("L: expected finite, non-negative Lipschitz constants (a certificate that overflows float64 "
                         "makes the bound vacuous)")
    return L


def _sq_norm(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).pow(2).sum(1)


def _bootstrap_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) / n


@torch.no_grad()
def bound_report(model, testbed: TestBed, t: float, *, L, x_t: Tensor | None = None, n: int = 4096,
                 s_grid=None, n_b: int | None = None, generator: torch.Generator | None = None, n_boot: int = 200,
                 seed: int = 0, b_fm: bool = False, sigma2_n: int = 20_000, compute_w2: bool = False,
                 psi: OdeSolution | None = None, k: float = 3.0) -> BoundReport:
    """The Monte Carlo verification ladder of docs/THEORY.md §6 for ``model`` (a JumpModel) on ``testbed`` at time t.

    Args:
        L: Lipschitz profile of x ↦ u_θ(x, s): a callable on a numpy array of s, an array over the grid, or a number.
        x_t: samples of p_t, shape (n, D) (drawn from the test bed when None, n of them).
        s_grid: odd-length increasing grid from 0 to t (default ``make_grid(t, 129)``).
        n_b: samples for B(s) (fresh path samples (x0, x1), shared across s); default len(x_t).
        generator: torch generator for all sampling; seed: of the bootstrap (n_boot replicates).
        b_fm: also estimate B by the flow-matching form E‖u_θ(x_s, s) − v‖² − σ²(s) (``B_fm``, and the paper's form
            computed with it as ``bounds["paper_fm"]``); costs one σ²(s) per grid point (Monte Carlo for mixtures).
        compute_w2: also the exact W2 between the model's samples x_t + f_θ(x_t, t, 0) and ψ(x_t, t, 0), and the
            finite-sample floor W2(ψ samples, fresh p0 samples) (POT; O(n²) memory).
        psi: ``testbed.flow_with_error(x_t, t, 0)`` computed before, to reuse (an ODE solve for mixtures).
    """
    t = scalar_time("t", t)
    if t == 0.0:
        raise ValueError("t: expected t in (0, 1]; at t = 0 every quantity of the bound vanishes")
    s = check_grid(make_grid(t) if s_grid is None else s_grid, t)
    Ls = _profile_L(L, s)
    if x_t is None:
        x_t = testbed.sample_path(n, t, generator).x_t
    testbed._check_x(x_t, "x_t")
    n = x_t.shape[0]
    n_b = n if n_b is None else n_b
    if not isinstance(n_b, int) or n_b < 2 or not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_b, n_boot: expected ints ≥ 2, got {n_b!r}, {n_boot!r}")
    full = lambda v, m: torch.full((m,), float(v), dtype=x_t.dtype, device=x_t.device)  # noqa: E731
    tt = full(t, n)

    a_mat = np.empty((n, len(s)))
    for j, sj in enumerate(s):
        f, dfds = model.displacement_and_ds(x_t, tt, full(sj, n))
        a_mat[:, j] = _sq_norm(dfds - model.velocity(x_t + f, full(sj, n))).cpu().numpy()

    path = testbed.sample_path(n_b, 0.0, generator)
    b_mat, fm_mat = np.empty((n_b, len(s))), np.empty((n_b, len(s)))
    for j, sj in enumerate(s):
        x_s = (1 - sj) * path.x0 + sj * path.x1
        u_model = model.velocity(x_s, full(sj, n_b))
        b_mat[:, j] = _sq_norm(u_model - testbed.velocity(x_s, full(sj, n_b))).cpu().numpy()
        fm_mat[:, j] = _sq_norm(u_model - path.v).cpu().numpy()

    y0 = x_t + model.displacement(x_t, tt, full(0.0, n))
    if psi is None:
        psi = testbed.flow_with_error(x_t, t, 0.0)
    elif psi.x.shape != x_t.shape or psi.err.shape != (n,):
        raise ValueError(f"psi: expected ψ(x_t, t, 0) of shape {tuple(x_t.shape)} with errors of shape ({n},)")
    d = _sq_norm(y0 - psi.x).cpu().numpy()
    ode = float(psi.err.pow(2).mean().sqrt())

    rng = np.random.default_rng(seed)
    wa, wb = _bootstrap_counts(rng, n, n_boot), _bootstrap_counts(rng, n_b, n_boot)
    A, B, A_reps, B_reps = a_mat.mean(0), b_mat.mean(0), wa @ a_mat, wb @ b_mat
    bounds, bounds_log10 = evaluate_bounds(t, s, A, B, Ls, A_reps, B_reps)
    D = Estimate(math.sqrt(d.mean()), float(np.sqrt(wa @ d).std(ddof=1)), 0.0, ode)

    B_fm = B_fm_se = None
    if b_fm:
        sig = [testbed.cond_variance(float(sj), n=sigma2_n, generator=generator) for sj in s]
        sig_val, sig_se = np.array([e.value for e in sig]), np.array([e.se for e in sig])
        B_fm, fm_reps = fm_mat.mean(0) - sig_val, wb @ fm_mat - sig_val
        B_fm_se = np.hypot(fm_reps.std(0, ddof=1), sig_se)
        fm_lin, _ = evaluate_bounds(t, s, A, B_fm, Ls, A_reps, fm_reps)
        # σ²(s)'s own Monte Carlo error enters the paper's form linearly, through ∫ λ σ²
        sig_term = float(exp_inf(logsumexp(cumulative_trapezoid(Ls, s) + log0(trapezoid_weights(s) * sig_se))))
        p = fm_lin["paper"]
        bounds["paper_fm"] = Estimate(p.value, math.hypot(p.se, sig_term), p.quad)

    report = BoundReport(t=t, n_samples=n, s=s, A=A, B=B, L=Ls, D=D, bounds=bounds, bounds_log10=bounds_log10,
                         A_se=A_reps.std(0, ddof=1), B_se=B_reps.std(0, ddof=1), B_fm=B_fm, B_fm_se=B_fm_se)
    if compute_w2:
        report.w2, report.w2_kind = Estimate(w2(y0, psi.x), 0.0, 0.0, ode), "empirical"
        report.w2_floor = Estimate(w2(psi.x, testbed.sample(n, generator)), 0.0, 0.0, ode)
    report._compare_all(k)
    return report


def _affine_sq_mean(P: Tensor, q: Tensor, mean: Tensor, var: float | Tensor, dim: int) -> Tensor:
    """E‖P x + q‖² for x ~ N(mean, var I) in D dims, P scalar per row: ‖P mean + q‖² + P² var D."""
    return ((P[:, None] * mean + q) ** 2).sum(-1) + P**2 * var * dim


def exact_affine_report(model: AffineJump, bed: Gaussian, t: float, *, s_grid=None, L=None,
                        k: float = 3.0) -> BoundReport:
    """The ladder with exact A_t(s), B(s), D_t and W2 for an affine jump model on a Gaussian (docs/THEORY.md §7).

    p_s = N((1 − s)μ, σ_s² I); every residual is affine in x, so each expectation is ‖P m + q‖² + P² v D. The jump's
    law at t is N(a m_t + b, a² σ_t² I), so W2² = ‖a m_t + b − μ‖² + D(|a|σ_t − σ0)². L defaults to the exact
    Lipschitz constant |k(s)| of u_θ. Only quadrature error (and rounding) remains.
    """
    if not isinstance(model, AffineJump):
        raise TypeError(f"model: expected an AffineJump, got {type(model).__name__}")
    if not isinstance(bed, Gaussian):
        raise TypeError(f"bed: expected a Gaussian test bed, got {type(bed).__name__}")
    if model.dim != bed.dim:
        raise ValueError(f"model and bed: expected the same dimension, got {model.dim} and {bed.dim}")
    t = scalar_time("t", t)
    if t == 0.0:
        raise ValueError("t: expected t in (0, 1]; at t = 0 every quantity of the bound vanishes")
    s = check_grid(make_grid(t, 2049) if s_grid is None else s_grid, t)
    st = torch.as_tensor(s, dtype=torch.float64)
    tt = torch.full_like(st, t)
    mu, dim = bed.mean.to(torch.float64), bed.dim
    m_t, v_t = (1 - t) * mu, bed.sigma(t) ** 2

    a, b, da, db = model.jump_coefficients(tt, st)
    kk, mm = model.velocity_coefficients(st)
    A = _affine_sq_mean(da - kk * a, db - kk[:, None] * b - mm, m_t, v_t, dim)
    kap = bed.kappa(st)
    m_s = (1 - st)[:, None] * mu
    B = ((((kk - kap)[:, None] * m_s) + mm + mu + kap[:, None] * m_s) ** 2).sum(-1) + (kk - kap) ** 2 * \
        bed.sigma(st) ** 2 * dim
    Ls = _profile_L(model.lipschitz(st) if L is None else L, s)
    bounds, bounds_log10 = evaluate_bounds(t, s, A.numpy(), B.numpy(), Ls)

    a0, b0, _, _ = model.jump_coefficients(torch.tensor([t], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    ratio = bed.std / bed.sigma(t)
    D2 = _affine_sq_mean(a0 - ratio, b0 - mu + ratio * m_t, m_t, v_t, dim)
    W2sq = ((a0[:, None] * m_t + b0 - mu) ** 2).sum(-1) + dim * (a0.abs() * bed.sigma(t) - bed.std) ** 2
    report = BoundReport(t=t, n_samples=None, s=s, A=A.numpy(), B=B.numpy(), L=Ls,
                         D=Estimate(math.sqrt(float(D2))), bounds=bounds, bounds_log10=bounds_log10,
                         w2=Estimate(math.sqrt(float(W2sq))), w2_kind="exact")
    report._compare_all(k)
    return report
