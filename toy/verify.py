"""`python -m toy verify`: train TVM on a test bed and check the W2 bounds against the true W2 during training.

At every verification step the evaluation-EMA model (cast to float64) is checked at each requested t on FIXED
samples (the same x_t at every step, drawn from ``--seed``): the ladder of docs/THEORY.md §6 —

    W2_emp(one-step samples, ψ samples) ≤ D_t (paired RMSE) ≤ (a) with local L ≤ (a) with certified L,

bounds (b), (c) and the paper's explicit form (``tvm_theory.analysis.bounds.bound_report``), the sensitivity bound of §6.1
(a diagnostic: it needs the true u and ∂_xψ, so it shows when the error is made but certifies nothing)
(``tvm_theory.analysis.sensitivity``) on a subset of the same samples, the finite-sample floor (W2 between ψ samples and an
independent sample of p0), and under ``few_step`` the N-step ladder for N = 1, 2, 4 (docs/THEORY.md §10,
:mod:`toy.fewstep_entry`): W2_emp ≤ D_N ≤ (a)_N with A under the law the sampler reaches, with certified and local L,
and the Alekseev–Gröbner diagnostic along the concatenated path. For the affine model on a Gaussian test bed the one-
and N-step laws are Gaussian, and their W2 to p0 is also given exactly (``w2_exact``).

Units: every ``bound_*``/``paper_bound`` field is a bound on W2 itself (distance units): (b), (c) and the paper's
form bound W2², so their square roots are reported; ``log10_*`` fields are always present and finite, the linear
field is null where it overflows float64. ``*_err`` = 3 standard errors + quadrature + ODE errors (``Estimate.err``).
The sensitivity bound is computed on the first ``--n-sens`` of the samples: there it bounds the paired error
exactly (verdict ``D_t<=sensitivity`` compares on that subset); as an estimate for the full set its
``bound_sensitivity_err`` includes 3 Monte Carlo standard errors.
Verdicts: "holds" / "violated" / "inconclusive" beyond the errors; a comparison with the LOCAL L, which is a lower
estimate of the true constant, is never called "violated" (reported "inconclusive (local L)").

Writes DIR/report.json (schema ``toy.verify/1``), DIR/train.jsonl, the checkpoint, and the figures of
:mod:`toy.plots`.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tvm_theory.io import atomic_write_text
from tvm_theory.analysis.bounds import bound_report, make_grid, verdict
from tvm_theory.analysis.estimate import Estimate
from tvm_theory.analysis.lipschitz import model_local_lipschitz
from tvm_theory.analysis.quadrature import trapezoid_weights
from tvm_theory.param import NetworkJump
from tvm_theory.sampling import sample_few_step
from tvm_theory.analysis.sensitivity import sensitivity_bound
from tvm_theory.analysis.testbeds import Gaussian, make_testbed
from tvm_theory.analysis.transport import w2, w2_gaussian

from .fewstep_entry import affine_exact_w2, few_step_entry
from .models import AffineModel
from .train import MODELS, TrainConfig, has_checkpoint, train

SCHEMA = "toy.verify/1"
K_SIGMA = 3.0  # standard errors in every error bar and verdict


def _log10_field(entry: dict, name: str, log10_est: Estimate, lin_est: Estimate, half: bool) -> None:
    """Store a bound on W2 as ``name`` (null on overflow), ``name_err`` and ``log10_name`` (+ ``_err``).

    ``half``: the estimate bounds W2² — report its square root (log10 halved, relative error halved)."""
    p = 0.5 if half else 1.0
    lg = p * log10_est.value
    entry["log10_" + name] = lg
    entry["log10_" + name + "_err"] = p * log10_est.err(K_SIGMA)
    if math.isfinite(lin_est.value) and lg < 300:
        v = lin_est.value ** p
        entry[name] = v
        # d√x = dx / (2√x)
        entry[name + "_err"] = lin_est.err(K_SIGMA) * (p / max(lin_est.value, 1e-300) * v if half else 1.0)
    else:
        entry[name], entry[name + "_err"] = None, None


class Verifier:
    """Holds the fixed verification samples and computes one report entry per call (see module docstring)."""

    def __init__(self, bed, seed: int, *, n: int = 1000, n_sens: int = 128, s_grid: int = 129,
                 t_values=(1.0,), n_probe: int = 64, lip_iters: int = 50, sens_ode_steps: int = 48,
                 sens_rtol: float = 2e-3, sens_rounds: int = 4, few_steps=(2, 4)):
        self.bed, self.seed, self.n, self.n_sens, self.n_probe = bed, seed, n, n_sens, n_probe
        self.lip_iters, self.sens_ode_steps, self.sens_rtol, self.sens_rounds = lip_iters, sens_ode_steps, \
            sens_rtol, sens_rounds
        self.few_steps = tuple(few_steps)
        self.few_step_bounds = (1, 2, 4)  # N of the few-step ladder (docs/THEORY.md §10)
        self.t_values = [float(t) for t in t_values]
        if not self.t_values or any(not 0 < t <= 1 for t in self.t_values):
            raise ValueError(f"t_values: expected times in (0, 1], got {t_values}")
        if n_sens > n:
            raise ValueError(f"n_sens: expected at most n = {n} sensitivity samples, got {n_sens}")
        g = torch.Generator().manual_seed(10_000 + seed)
        self.samples = {}
        for t in self.t_values:
            x_t = torch.randn(n, bed.dim, generator=g, dtype=torch.float64) if t == 1.0 else \
                bed.sample_path(n, t, g).x_t
            psi = bed.flow_with_error(x_t, t, 0.0)
            self.samples[t] = (x_t, psi.x, float(psi.err.pow(2).mean().sqrt()))
        self.x1 = self.samples[1.0][0] if 1.0 in self.samples else torch.randn(n, bed.dim, generator=g,
                                                                               dtype=torch.float64)
        self.z0_1 = self.samples[1.0][1] if 1.0 in self.samples else bed.flow(self.x1, 1.0, 0.0)
        self.z0_1_err = self.samples[1.0][2] if 1.0 in self.samples else 0.0
        self.data = bed.sample(n, g)  # independent p0 sample: the floor and the scatter plot
        self.w2_floor = w2(self.z0_1, self.data)
        self.s_grid = make_grid(1.0, s_grid)  # rescaled to [0, t] per t
        self.probe_path = bed.sample_path(n_probe, 0.0, g)  # (x0, x1) pairs: x_s = (1 − s)x0 + s x1

    # ---- Lipschitz profiles ---------------------------------------------------------------------------------
    def _local_L(self, jump: NetworkJump, s: np.ndarray, x_t: torch.Tensor, t: float) -> tuple[np.ndarray, dict]:
        """Local L(s) by power iteration on probes x_s ~ p_s and on the model's own path y(s) from x_t."""
        xp = x_t[: self.n_probe]
        probes = []
        for sk in s:
            x_s = (1 - sk) * self.probe_path.x0 + sk * self.probe_path.x1
            y = xp + jump.displacement(xp, torch.full((len(xp),), t, dtype=xp.dtype),
                                       torch.full((len(xp),), float(sk), dtype=xp.dtype))
            probes.append(torch.cat([x_s, y.detach()]))
        g = torch.Generator().manual_seed(20_000 + self.seed)
        res = model_local_lipschitz(jump.velocity, probes, torch.as_tensor(s), n_iter=self.lip_iters, tol=1e-5,
                                    generator=g)
        L = np.array([r.max for r in res])
        per_point = torch.cat([r.per_point for r in res])
        q = torch.quantile(per_point, torch.tensor([0.5, 0.9, 0.99], dtype=per_point.dtype))
        # the TRUE field's local constant on the same probes: the amplification a model as steep as the field pays
        true = model_local_lipschitz(self.bed.velocity, probes, torch.as_tensor(s), n_iter=self.lip_iters, tol=1e-5,
                                     generator=torch.Generator().manual_seed(20_000 + self.seed))
        L_true = np.array([r.max for r in true])
        info = {"max_over_s": float(L.max()), "mean_over_s": float(L.mean()), "integral": float(trapezoid_weights(s) @ L),
                "per_point_quantiles": {"q50": float(q[0]), "q90": float(q[1]), "q99": float(q[2]),
                                        "max": float(per_point.max())},
                "max_rel_change_last_iter": max(r.rel_change for r in res),
                "true_field_integral": float(trapezoid_weights(s) @ L_true), "true_field_max_over_s": float(L_true.max()),
                "L_true": [float(v) for v in L_true]}
        return L, info

    # ---- one entry ------------------------------------------------------------------------------------------
    def __call__(self, step: int, eval_model: torch.nn.Module) -> dict:
        t_start = time.perf_counter()
        net = copy.deepcopy(eval_model).to(torch.float64).eval()
        jump = NetworkJump(net)
        per_t = [self._at_t(net, jump, t) for t in self.t_values]
        entry = dict(per_t[0])
        entry["other_t"] = per_t[1:]  # the same fields at the further --t-values
        with torch.no_grad():
            for k in self.few_steps:
                xk = sample_few_step(jump, self.x1, k)
                entry[f"w2_{k}step"] = w2(xk, self.z0_1)
                entry[f"w2_{k}step_to_data"] = w2(xk, self.data)
        entry["w2_floor"] = self.w2_floor
        exact_n = affine_exact_w2(net, self.bed) if isinstance(net, AffineModel) and isinstance(self.bed, Gaussian) \
            else None
        entry["few_step"] = few_step_entry(
            self.bed, net, jump, self.x1, self.z0_1, self.z0_1_err, steps=self.few_step_bounds,
            s_grid=len(self.s_grid), n_sens=self.n_sens, seed=self.seed, local_L=getattr(self, "_local_profile", None),
            sens_ode_steps=self.sens_ode_steps, exact_gaussian=exact_n)
        if isinstance(net, AffineModel) and isinstance(self.bed, Gaussian):
            eye = torch.eye(self.bed.dim, dtype=torch.float64)
            m, c = net.push_gaussian(torch.zeros(self.bed.dim, dtype=torch.float64), eye, 1.0, 0.0)
            entry["w2_exact"] = w2_gaussian(m, c, self.bed.mean, self.bed.std**2 * eye)
        self.last_wall_s = time.perf_counter() - t_start
        return entry

    def _at_t(self, net, jump: NetworkJump, t: float) -> dict:
        x_t, z0, ode_err = self.samples[t]
        s = self.s_grid * t
        log10_L_cert, exact = net.lipschitz_certificate(torch.as_tensor(s))
        log10_L_cert = log10_L_cert.numpy()
        L_cert = np.where(np.isneginf(log10_L_cert), 0.0, 10.0 ** np.minimum(log10_L_cert, 300))
        L_loc, L_info = self._local_L(jump, s, x_t, t)
        if t == 1.0:
            self._local_profile = (s, L_loc)  # reused, interpolated, by the few-step bounds
        common = dict(x_t=x_t, s_grid=s, n_boot=200, seed=self.seed, k=K_SIGMA)
        rep_c = bound_report(jump, self.bed, t, L=L_cert, compute_w2=True,
                             generator=torch.Generator().manual_seed(30_000 + self.seed), **common)
        rep_l = bound_report(jump, self.bed, t, L=L_loc,
                             generator=torch.Generator().manual_seed(30_000 + self.seed), **common)
        sens = sensitivity_bound(jump, self.bed.velocity, x_t[: self.n_sens], t, z0[: self.n_sens],
                                 rtol=self.sens_rtol, max_rounds=self.sens_rounds, ode_steps=self.sens_ode_steps)
        D = rep_c.D
        e = {"t": t, "w2_emp": rep_c.w2.value, "w2_emp_err": rep_c.w2.err(K_SIGMA),
             "paired_rmse": D.value, "paired_rmse_err": D.err(K_SIGMA)}
        _log10_field(e, "bound_a_local", rep_l.bounds_log10["bound_a"], rep_l.bounds["bound_a"], False)
        _log10_field(e, "bound_a_certified", rep_c.bounds_log10["bound_a"], rep_c.bounds["bound_a"], False)
        _log10_field(e, "bound_b_certified", rep_c.bounds_log10["bound_b"], rep_c.bounds["bound_b"], True)
        _log10_field(e, "bound_c_certified", rep_c.bounds_log10["bound_c"], rep_c.bounds["bound_c"], True)
        _log10_field(e, "paper_bound", rep_c.bounds_log10["paper"], rep_c.bounds["paper"], True)
        _log10_field(e, "paper_bound_local", rep_l.bounds_log10["paper"], rep_l.bounds["paper"], True)
        sens_est = Estimate(sens.bound, sens.bound_se, sens.quad_err, sens.ode_err)
        e.update({"bound_sensitivity": sens.bound, "bound_sensitivity_err": sens_est.err(K_SIGMA),
                  "log10_bound_sensitivity": math.log10(sens.bound) if sens.bound > 0 else -math.inf,
                  # ∫‖∂_xψ ρ‖ instead of ∫‖∂_xψ‖‖ρ‖: also ≥ D_t (‖∫g‖ ≤ ∫‖g‖), tighter, same numerical errors
                  "bound_sensitivity_directional": sens.bound_directional,
                  "bound_sensitivity_directional_err": sens_est.err(K_SIGMA) * sens.bound_directional / sens.bound
                  if sens.bound > 0 else 0.0})
        e["core_a"] = rep_c.bounds["core"].value
        e["log10_amplification_certified"] = rep_c.bounds_log10["amplification"].value
        e["log10_amplification_local"] = rep_l.bounds_log10["amplification"].value
        e["lipschitz"] = {"log10_certified": float(log10_L_cert.max()), "certified_is_exact": bool(exact),
                          "local": L_info}
        d_sub = Estimate(sens.paired_rmse, 0.0, 0.0, 0.0)
        e["sensitivity"] = {"n": int(sens.per_sample.numel()), "paired_rmse_same_samples": sens.paired_rmse,
                            "ratio_to_paired_rmse": sens.bound / max(sens.paired_rmse, 1e-300),
                            "identity_rel_residual": sens.identity_rel,
                            "identity_residual_quantiles": _q(sens.identity_residual),
                            "core": sens.core, "amplification": sens.amplification,
                            "quad_err": sens.quad_err, "ode_err": sens.ode_err, "se": sens.bound_se,
                            "n_sigma_nodes": int(sens.sigma_nodes.numel()),
                            "per_sample_ratio_quantiles": _q(sens.per_sample / sens.error_direct.clamp_min(1e-300)),
                            "jac_norm_quantiles": sens.jac_norm_quantiles,
                            "residual_norm_quantiles": sens.residual_quantiles}
        e["ratios"] = {"bound_sensitivity/w2_emp": sens.bound / max(e["w2_emp"], 1e-300),
                       "bound_sensitivity_directional/w2_emp": sens.bound_directional / max(e["w2_emp"], 1e-300),
                       "paired_rmse/w2_emp": D.value / max(e["w2_emp"], 1e-300),
                       "log10 bound_a_certified/w2_emp": e["log10_bound_a_certified"] - math.log10(e["w2_emp"])
                       if e["w2_emp"] > 0 else None}
        e["verdicts"] = self._verdicts(rep_c, rep_l, sens, d_sub)
        e["profiles"] = {"s": [float(v) for v in s], "A": _fl(rep_c.A), "B": _fl(rep_c.B), "L_local": _fl(L_loc),
                         "L_true_local": L_info.pop("L_true"),
                         "log10_L_certified": _fl(log10_L_cert), "log_lambda_local": _fl(rep_l.log_lambda),
                         "log_lambda_certified": _fl(rep_c.log_lambda),
                         "sigma_nodes": _fl(sens.sigma_nodes.numpy())}
        e["errors"] = {"w2_emp": rep_c.w2.to_dict(), "paired_rmse": D.to_dict(), "psi_ode_rms": ode_err,
                       "bounds_certified": {k: v.to_dict() for k, v in rep_c.bounds.items()},
                       "bounds_log10_certified": {k: v.to_dict() for k, v in rep_c.bounds_log10.items()},
                       "bounds_log10_local": {k: v.to_dict() for k, v in rep_l.bounds_log10.items()}}
        return e

    @staticmethod
    def _verdicts(rep_c, rep_l, sens, d_sub) -> dict:
        v = {name: c.verdict for name, c in rep_c.comparisons.items()}
        v = {("W2_emp<=D_t" if k == "W2<=D_t" else k.replace("(a)", "(a)_certified")): x for k, x in v.items()}
        local = rep_l.comparisons["D_t<=(a)"].verdict
        v["D_t<=(a)_local"] = "inconclusive (local L)" if local == "violated" else local
        v["D_t^2<=paper_local"] = "inconclusive (local L)" if rep_l.comparisons["D_t^2<=paper"].verdict == \
            "violated" else rep_l.comparisons["D_t^2<=paper"].verdict
        sens_est = Estimate(sens.bound, 0.0, sens.quad_err, sens.ode_err)  # same samples: no sampling error
        v["D_t<=sensitivity"] = verdict(d_sub, sens_est, K_SIGMA)
        return v


def _fl(a) -> list:
    return [float(x) for x in np.asarray(a)]


def _q(v: torch.Tensor) -> dict:
    v = v.detach().to(torch.float64).reshape(-1)
    q = torch.quantile(v, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    return {"q50": float(q[0]), "q90": float(q[1]), "q99": float(q[2]), "max": float(v.max())}


# ---- the command --------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser, *, defaults: dict | None = None) -> None:
    d = {"testbed": "ring8", "steps": 2000, "seed": 0, "out": "runs/verify", "verify_at": None,
         "verify_every": None, "n_samples": 1000, "n_sens": 128, "s_grid": 129, **(defaults or {})}
    p.add_argument("--testbed", default=d["testbed"], help="gaussian-1d, gaussian-2d, ring8, moons, checkerboard")
    p.add_argument("--steps", type=int, default=d["steps"], help="training steps")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--out", default=d["out"], help="run directory (report.json, figures, checkpoint)")
    p.add_argument("--model", choices=MODELS, default="mlp")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--max-freq", type=float, default=30.0, help="highest time-embedding frequency")
    p.add_argument("--lipschitz-cap", type=float, default=4.0, help="target certified constant of mlp-sn")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.99, help="target EMA rate (paper: 0.99)")
    p.add_argument("--eval-ema", type=float, default=0.999, help="EMA rate of the evaluated model")
    p.add_argument("--time-sampler", default="gap", help="gap (gap*), gap-clamped, pair-logit-normal, uniform")
    p.add_argument("--verify-at", default=d["verify_at"],
                   help="comma-separated steps to verify at (default: 0, then doubling up to --steps)")
    p.add_argument("--verify-every", type=int, default=d["verify_every"], help="verify every N steps instead")
    p.add_argument("--n-samples", type=int, default=d["n_samples"], help="samples for W2, D_t and the bounds")
    p.add_argument("--n-sens", type=int, default=d["n_sens"], help="samples for the sensitivity bound (subset)")
    p.add_argument("--s-grid", type=int, default=d["s_grid"], help="odd number of s-grid points for the bounds")
    p.add_argument("--t-values", default="1.0", help="comma-separated jump start times t (first is the headline)")
    p.add_argument("--sens-ode-steps", type=int, default=48, help="RK4 steps of each variational solve")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small ops are fastest on one)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if DIR holds a checkpoint")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this step (to test resuming)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def verify_steps(args) -> list[int]:
    if args.verify_at:
        steps = sorted({int(v) for v in str(args.verify_at).split(",") if v.strip()})
    elif args.verify_every:
        steps = list(range(0, args.steps + 1, args.verify_every))
    else:
        steps, k = [0], max(1, args.steps // 16)
        while k < args.steps:
            steps.append(k)
            k *= 2
    if args.steps not in steps:
        steps.append(args.steps)
    bad = [s for s in steps if not 0 <= s <= args.steps]
    if bad:
        raise SystemExit(f"--verify-at: steps must lie in [0, {args.steps}], got {bad}")
    return sorted(set(steps))


def config_from_args(args) -> TrainConfig:
    return TrainConfig(testbed=args.testbed, steps=args.steps, seed=args.seed, model=args.model, hidden=args.hidden,
                       depth=args.depth, max_freq=args.max_freq, lipschitz_cap=args.lipschitz_cap, batch=args.batch, lr=args.lr,
                       ema=args.ema, eval_ema=args.eval_ema, time_sampler=args.time_sampler)


def run_verification(args) -> tuple[dict, list[Path]]:
    """Train and verify as the arguments say; write report.json and the figures; return (report, figure paths).
    Runs with ``args.threads`` torch threads and restores the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_verification(args)
    finally:
        torch.set_num_threads(previous)


def _run_verification(args) -> tuple[dict, list[Path]]:
    out = Path(args.out)
    cfg = config_from_args(args)
    bed = make_testbed(args.testbed)
    steps = verify_steps(args)
    verifier = Verifier(bed, args.seed, n=args.n_samples, n_sens=min(args.n_sens, args.n_samples),
                        s_grid=args.s_grid, t_values=[float(v) for v in args.t_values.split(",")],
                        sens_ode_steps=args.sens_ode_steps)
    log = out / "verify.jsonl"  # timings only (the report itself is reproducible and carries none)
    out.mkdir(parents=True, exist_ok=True)
    if args.no_resume or not has_checkpoint(out):
        log.write_text("")

    def hook(step, eval_model, _student):
        entry = {"step": step, **verifier(step, eval_model)}
        with log.open("a") as f:
            f.write(json.dumps({"step": step, "verify_wall_s": round(verifier.last_wall_s, 2)}) + "\n")
        if not args.quiet:
            tqdm.write(format_row(entry))
        return entry

    if not args.quiet:
        tqdm.write(format_header())
    state = train(cfg, out, hook_steps=steps, hook=hook, resume=not args.no_resume, stop_after=args.stop_after,
                  progress=not args.quiet)
    report = {"schema": SCHEMA, "testbed": args.testbed, "config": {**cfg.__dict__, "betas": list(cfg.betas)},
              "verification": {"n_samples": args.n_samples, "n_sens": verifier.n_sens, "s_grid": args.s_grid,
                               "t_values": verifier.t_values, "steps": steps, "k_sigma": K_SIGMA,
                               "units": "all bound_* and paper_bound fields bound W2 (distance units); (b), (c) "
                                        "and the paper's form are square roots of bounds on W2^2"},
              "complete": state.step >= cfg.steps,
              "checkpoints": state.entries}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, allow_nan=True))
    figures = []
    if not args.no_figures and state.entries:
        from .plots import make_figures
        figures = make_figures(report, verifier, NetworkJump(copy.deepcopy(state.eval_model).double().eval()), out)
    return report, figures


def run(args) -> int:
    """`python -m toy verify`."""
    _, figures = run_verification(args)
    if not args.quiet:
        print(f"report: {Path(args.out) / 'report.json'}")
        for f in figures:
            print(f"figure: {f}")
    return 0


COLUMNS = (("step", "step", "{:>6d}"), ("W2_emp", "w2_emp", "{:>8.4f}"), ("D_t", "paired_rmse", "{:>8.4f}"),
           ("sens", "bound_sensitivity", "{:>8.4f}"), ("sens-dir", "bound_sensitivity_directional", "{:>8.4f}"),
           ("(a)loc", "log10_bound_a_local", "1e{:<+6.1f}"),
           ("(a)cert", "log10_bound_a_certified", "1e{:<+6.1f}"), ("(b)", "log10_bound_b_certified", "1e{:<+6.1f}"),
           ("(c)", "log10_bound_c_certified", "1e{:<+6.1f}"), ("paper", "log10_paper_bound", "1e{:<+6.1f}"))


def format_header() -> str:
    return " ".join(f"{h:>8}" for h, _, _ in COLUMNS) + "  verdicts"


def format_row(e: dict) -> str:
    cells = [fmt.format(e[key]) if e.get(key) is not None else "    null" for _, key, fmt in COLUMNS]
    v = e["verdicts"]
    short = {"holds": "ok", "violated": "VIOLATED", "inconclusive": "?", "inconclusive (local L)": "?(locL)"}
    keys = ("W2_emp<=D_t", "D_t<=sensitivity", "D_t<=(a)_local", "D_t<=(a)_certified", "D_t^2<=(b)", "D_t^2<=(c)",
            "D_t^2<=paper")
    return " ".join(f"{c:>8}" for c in cells) + "  " + " ".join(short.get(v.get(k), "-") for k in keys)


# ---- `make demo` ------------------------------------------------------------------------------------------------
DEMO = {"testbed": "ring8", "steps": 2000, "verify_at": "0,250,1000,2000", "n_samples": 1000, "n_sens": 96,
        "s_grid": 129, "out": "runs/demo"}


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The verify options with the demo's defaults: ring8, 2000 steps, verification at 0, 250, 1000, 2000."""
    add_arguments(p, defaults=DEMO)


def summary_table(report: dict) -> str:
    """The short table `make demo` prints: step, true W2, D_t, every bound (log10 where huge) and the verdicts."""
    lines = [format_header(), "-" * 110] + [format_row(e) for e in report["checkpoints"]]
    lines.append("verdict columns: W2<=D_t, D_t<=sens, D_t<=(a)local, D_t<=(a)cert, D_t²<=(b), D_t²<=(c), "
                 "D_t²<=paper  (ok = holds beyond 3σ + numerical errors, ? = inconclusive)")
    return "\n".join(lines)


def reading_guide(report: dict) -> str:
    """Plain sentences: how far each bound is from the true W2 at the last checkpoint, and why."""
    e = report["checkpoints"][-1]
    w = e["w2_emp"]
    r = lambda key: 10 ** (e["log10_" + key] - math.log10(w))  # noqa: E731
    loc = e["lipschitz"]["local"]["integral"]
    return "\n".join([
        f"At step {e['step']}: true W2 = {w:.4f} (finite-sample floor {e['w2_floor']:.4f}), paired RMSE D_t = "
        f"{e['paired_rmse']:.4f}.",
        f"  sensitivity bound (docs/THEORY.md §6.1) ∫‖∂_xψ‖‖ρ‖ = {e['bound_sensitivity']:.4f} = "
        f"{e['bound_sensitivity'] / w:.1f}× the true W2; with ∫‖∂_xψ ρ‖ (sens-dir) {e['bound_sensitivity_directional']:.4f}"
        f" = {e['bound_sensitivity_directional'] / w:.1f}×; exact identity checked to "
        f"{e['sensitivity']['identity_rel_residual']:.1e} (relative).",
        f"  (a) with the local L = {r('bound_a_local'):.3g}× W2: amplification exp(∫L) = 10^"
        f"{e['log10_amplification_local']:.1f} with ∫_0^1 L_local ≈ {loc:.1f}; the TRUE field has ∫_0^1 L ≈ "
        f"{e['lipschitz']['local']['true_field_integral']:.1f} on the same probes (it splits mass between modes); that "
        f"an accurate model must be as steep is a heuristic, not a theorem (L² accuracy does not bound the gradient).",
        f"  (a), (b), (c) with the certified L (product of spectral norms, 10^{e['lipschitz']['log10_certified']:.1f})"
        f" are 10^{e['log10_bound_a_certified'] - math.log10(w):.0f}, 10^{e['log10_bound_b_certified'] - math.log10(w):.0f}"
        f" and 10^{e['log10_bound_c_certified'] - math.log10(w):.0f} times W2: valid but vacuous.",
        "  The paper's explicit form is not a valid bound: it fails on the Gaussian counterexample of docs/THEORY.md §4 "
        "(`python -m toy theorem-check`).",
        *few_step_guide(e)])


def few_step_guide(e: dict) -> list[str]:
    """One line per N of the few-step ladder (docs/THEORY.md §10): true W2, D_N, the diagnostic and (a)_N."""
    lines = []
    for n, f in sorted(e.get("few_step", {}).items(), key=lambda kv: int(kv[0])):
        cert = f"10^{f['log10_bound_a_certified']:.1f}"
        if f.get("log10_bound_v_certified") is not None:
            cert += f", (v)_N certified 10^{f['log10_bound_v_certified']:.1f}"
        loc = f", (a)_N local-L {f['bound_a_local']:.3g}" if f.get("bound_a_local") is not None else ""
        lines.append(f"  {n}-step: W2 = {f['w2_emp']:.4f} ± {f['w2_emp_err']:.4f}, D_N = {f['paired_rmse']:.4f}, "
                     f"sensitivity diagnostic {f['bound_sensitivity']:.4f} ({f['bound_sensitivity'] / f['w2_emp']:.1f}×)"
                     f"{loc}, (a)_N certified {cert}; D_N ≤ (a)_N {f['verdicts']['D_N<=(a)_N_certified']}, D_N ≤ (v)_N "
                     f"{f['verdicts'].get('D_N<=(v)_N_certified', '-')}.")
    return lines


def run_demo(args) -> int:
    """`make demo`: the ring8 verification with the demo's defaults, then the summary table and the figures."""
    from .theorem_check import check_case

    t0 = time.perf_counter()
    print(f"Training TVM on {args.testbed} for {args.steps} steps and verifying the W2 bounds at steps "
          f"{verify_steps(args)} (about 5 minutes on 2 cores) ...", flush=True)
    report, figures = run_verification(args)
    print("\n" + "=" * 110)
    print(summary_table(report))
    print()
    print(reading_guide(report))
    case = check_case(1.0, 0.1)
    print(f"  §4 counterexample (σ0 = 1, bias 0.1): true W2² = {case['w2_sq_true']:.5f} > paper's right-hand side "
          f"{case['paper_rhs']:.5f} — verdict: {case['verdicts']['paper']}; (a), (b), (c): "
          f"{case['verdicts']['(a)']}, {case['verdicts']['(b)']}, {case['verdicts']['(c)']}.")
    print()
    print(f"report:  {Path(args.out) / 'report.json'}")
    for f in figures:
        print(f"figure:  {f}  {FIGURE_NOTES.get(f.name, '')}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


FIGURE_NOTES = {"bounds_vs_w2.png": "(every bound vs. the true W2 over training; the main figure)",
                "profiles.png": "(A_t(s), B(s), L(s), λ(s) against s)",
                "samples.png": "(data, exact flow, 1-, 2- and 4-step samples)"}
