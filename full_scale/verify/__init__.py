"""Verify an ``analytic`` run against its exact answer: W2 sandwiched per checkpoint and per number of jumps, and the
theorem's terms along the path (docs/THEORY.md §5, §6, §10).

    python -m full_scale.verify --run DIR [--steps-at S1,S2,..] --samples N --nfe 1,2,4 [--guidance W] --out DIR

The run's ``config.yaml`` rebuilds the exact law (:func:`full_scale.data.analytic.analytic_bed`, a
:class:`~tvm_theory.analysis.testbeds.LowRankGaussianMixture` in float64). Then, once for the run:

* N noise draws x1 ~ N(0, I) (``--seed``, through :func:`stream`) with balanced labels k_i = i mod K (conditional runs; none for
  ``guidance.mode: none``), and the exact (guided) flow z_i = ψ^w(x1_i, 1, 0) by the adaptive ODE with its per-sample
  error; an independent exact sample set of the same labels for the finite-sample floors;
* the trivial references on the same noise: the exact flow of the single Gaussian with p0's mean and covariance
  (``gaussian_fit``) and the class means m_{k_i} (``class_means``; p0's mean without labels).

Per checkpoint (the evaluation EMA, or ``--weights``) and per N in ``--nfe``, the model's N-step sampler (fp32, the run's attention
backend) from the same noise and labels with guidance w, and :func:`tvm_theory.analysis.sandwich.sandwich`:

* upper bound: the paired RMSE to the exact flow (bootstrap interval, widened by the ODE error);
* lower bounds: the mean gap (unbiased) and Gelbrich's (empirical moments, beside its floor);
* sliced W2 on all N and exact POT W2 on the first ``--pot-samples``, each beside its floor.

And on the first ``--theorem-samples`` of the same draws (subsampled: the terms cost JVPs of the network and ODE solves
of the exact field at D in the thousands), docs/THEORY.md §10 through the toy's own calculator
(:func:`tvm_theory.analysis.fewstep.few_step_report`): A_N(σ) under the sampler's law, B(σ) on exact samples of the
(guided) law (along the exact flow from fresh noise when w ≠ 1, as the guided few-step report does), D_N, and bound
(a)_N with the model's LOCAL L(σ) (power iteration at ``--lip-probes`` path points per σ; a lower estimate of the
true constant, so the bound is not a certificate); the true field's local L on the same probes; and the directional
sensitivity profile ‖∂_xψ ρ‖ along the path (:mod:`tvm_theory.analysis.directional`, on ``--sens-samples`` draws; a
diagnostic: it needs the true field). The profile rests on an exact identity, which its quadrature reproduces only
to ``identity_rel``; where that misses by more than ``SENS_IDENTITY_MAX`` the integral is marked unresolved
(``resolved: false``) and left out of the figures and the study's rows (:func:`resolved_sensitivity`). These use
the reference attention (reverse-mode products through functorch).

Writes OUT/verify.json (schema ``full_scale.verify/1``) and the figures of :mod:`full_scale.verify.plots`.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from tvm_theory.analysis.directional import directional_sensitivity
from tvm_theory.analysis.fewstep import few_step_report, piece_grids, sampler_states, uniform_grid
from tvm_theory.analysis.lipschitz import model_local_lipschitz
from tvm_theory.analysis.sandwich import floors, sandwich
from tvm_theory.analysis.testbeds import ConditionedLowRank
from tvm_theory.cli import DefaultsHelpFormatter
from tvm_theory.io import atomic_write_text
from tvm_theory.param import displacement, displacement_and_ds, velocity
from tvm_theory.sampling import sample_few_step

from .. import checkpoint
from ..config import Config
from ..data.analytic import analytic_bed
from ..sample import load_run
from .resolved import SENS_IDENTITY_MAX, resolved_sensitivity, sensitivity_resolved  # noqa: F401 (re-exported)

SCHEMA = "full_scale.verify/1"


class FlatJump:
    """A DiT seen as a :class:`~tvm_theory.param.JumpModel` on flat rows (n, D) of any float dtype: inputs are
    reshaped to the model's (C, H, W) and cast to its dtype, outputs come back flat in the input's dtype. Row i has
    class ``labels[i mod n]`` (so batches stacking several copies keep their classes) and guidance ``weight``."""

    def __init__(self, model, labels: torch.Tensor | None, weight: float | None):
        cfg = model.cfg
        self.model, self.labels, self.weight = model, labels, weight
        self.shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device

    def _cond(self, rows: int) -> dict:
        if self.labels is None:
            return {}
        n = len(self.labels)
        if rows % n:
            raise ValueError(f"x: expected a multiple of {n} rows (one label each), got {rows}")
        return {"y": self.labels.to(self.device).repeat(rows // n)}

    def _in(self, x, *times):
        return (x.reshape(x.shape[0], *self.shape).to(self.device, self.dtype),
                *(t.to(self.device, self.dtype) for t in times))

    def _out(self, v, like):
        return v.reshape(v.shape[0], -1).to(like.device, like.dtype)

    def displacement(self, x, t, s):
        return self._out(displacement(self.model, *self._in(x, t, s), self.weight, **self._cond(x.shape[0])), x)

    def displacement_and_ds(self, x, t, s):
        f, dfds = displacement_and_ds(self.model, *self._in(x, t, s), self.weight, **self._cond(x.shape[0]))
        return self._out(f, x), self._out(dfds, x)

    def velocity(self, x, s):
        return self._out(velocity(self.model, *self._in(x, s), self.weight, **self._cond(x.shape[0])), x)


def stream(seed: int, purpose: str, device="cpu") -> torch.Generator:
    """A generator for one purpose of a verification: seeded from (seed, purpose) through numpy's SeedSequence, so the
    noise, the independent exact set and the probes are independent of each other and of the mixture's parameters
    (which a plain manual_seed(seed) would repeat when seed equals data.analytic_seed)."""
    state = np.random.SeedSequence([seed, *purpose.encode()]).generate_state(1, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(state))


def _rms(v: torch.Tensor) -> float:
    return float(v.pow(2).mean().sqrt())


class Target:
    """The exact side of the comparison, computed once per verification (module docstring)."""

    def __init__(self, cfg: Config, *, n: int, guidance: float, seed: int, device, n_pot: int, n_projections: int,
                 gelbrich_boot: int, n_boot: int):
        self.bed = analytic_bed(cfg, device=device)
        conditional = cfg.guidance.mode != "none"
        if not conditional and guidance != 1.0:
            raise ValueError(f"--guidance: the run is unconditional (guidance.mode none), so w must be 1, got "
                             f"{guidance}")
        k = self.bed.n_components
        self.labels = (torch.arange(n, device=device) % k) if conditional else None
        self.guidance, self.n, self.seed = guidance, n, seed
        self.opts = dict(n_pot=n_pot, n_projections=n_projections, gelbrich_boot=gelbrich_boot)
        self.n_boot = n_boot
        self.x1 = torch.randn(n, self.bed.dim, generator=stream(seed, "noise"), dtype=torch.float64).to(device)
        sol = self.bed.flow_with_error(self.x1, 1.0, 0.0, self.labels, guidance)
        self.z0, self.z0_err = sol.x, sol.err
        z_indep = self.bed.sample(n, stream(seed, "independent"), self.labels, guidance)
        self.floors = floors(self.z0, z_indep, seed=seed, **self.opts)
        self.references = {
            "gaussian_fit": self.compare(self.bed.gaussian_fit_flow(self.x1)),
            "class_means": self.compare(self.bed.class_means(self.labels) if conditional else
                                        self.bed.moments()[0].expand(n, -1)),
        }

    def compare(self, y: torch.Tensor) -> dict:
        return sandwich(y, self.z0, z_err=self.z0_err, n_boot=self.n_boot, seed=self.seed, **self.opts)

    def describe(self) -> dict:
        bed = self.bed
        stds = bed.evals.sqrt()
        return {"K": bed.n_components, "D": bed.dim, "r": bed.rank, "noise_std": bed.noise_std,
                "cov_eigenvalues": {"max": float(bed.evals.max()), "min_factor": float(bed.evals.min()),
                                    "floor": bed.noise_std**2},
                "std_range": [float(stds.min()), float(stds.max())],
                "mean_pair_distance_median": float(torch.cdist(bed.means[:64], bed.means[:64]).median()),
                "guidance": self.guidance, "labels": "i mod K" if self.labels is not None else None,
                "exact_flow_ode_err": {"rms": _rms(self.z0_err), "max": float(self.z0_err.max()),
                                       "rtol": bed.rtol, "atol": bed.atol}}


def model_samples(model, target: Target, n_steps: int, weight: float | None, batch_size: int) -> torch.Tensor:
    """The model's ``n_steps``-jump samples from the target's noise and labels (fp32, flat float64 rows)."""
    out = []
    for i in range(0, target.n, batch_size):
        lab = None if target.labels is None else target.labels[i:i + batch_size]
        jump = FlatJump(model, lab, weight)
        out.append(sample_few_step(jump, target.x1[i:i + batch_size].float(), n_steps).to(torch.float64))
    return torch.cat(out)


def local_lipschitz_profile(jump: FlatJump, ref: ConditionedLowRank, x1: torch.Tensor, grid, s_values: np.ndarray,
                            *, n_iter: int, seed: int) -> dict:
    """Local L(σ) of u_θ(·, σ) and of the true field on the same probes: the model's own path points y(σ) from the
    sampler's states (``x1``'s rows) and interpolant points (1 − σ) x0 + σ x1' of the rows' class data; the power
    iteration runs every row for ``n_iter`` iterations (tol 0 keeps the rows aligned with their labels)."""
    n = x1.shape[0]
    xs = sampler_states(jump, x1, grid)
    path = ref.sample_path(n, 0.0, stream(seed, "lipschitz probes"))
    probes = []
    for s in s_values:
        k = next(i for i in range(len(grid) - 1) if grid[i + 1] <= s)  # jump k covers [t_{k+1}, t_k]
        full = lambda v: torch.full((n,), float(v), dtype=x1.dtype, device=x1.device)  # noqa: E731
        with torch.no_grad():
            y = xs[k] + jump.displacement(xs[k], full(grid[k]), full(s))
        probes.append(torch.cat([y, (1 - s) * path.x0 + s * path.x1]))
    s_t = torch.as_tensor(s_values, dtype=x1.dtype)
    res = model_local_lipschitz(jump.velocity, probes, s_t, n_iter=n_iter, tol=0.0,
                                generator=stream(seed, "power iteration", x1.device))
    true = model_local_lipschitz(ref.velocity, probes, s_t, n_iter=n_iter, tol=0.0,
                                 generator=stream(seed, "power iteration", x1.device))
    return {"s": [float(v) for v in s_values], "L_model": [r.max for r in res], "L_true": [r.max for r in true],
            "L_model_q50": [r.quantiles["q50"] for r in res], "L_true_q50": [r.quantiles["q50"] for r in true],
            "n_probes_per_s": 2 * n, "power_iterations": n_iter}


def theorem_terms(model, target: Target, n_steps: int, weight: float | None, *, n_th: int, points: int,
                  n_lip: int, lip_iters: int, n_sens: int, sens_nodes: int, sens_rtol: float, seed: int) -> dict:
    """docs/THEORY.md §10 on the first ``n_th`` draws: the few-step report with the local L, the true field's L, and
    the directional sensitivity profile on the first ``n_sens`` (module docstring)."""
    lab = target.labels
    sub = lambda m: None if lab is None else lab[:m]  # noqa: E731
    x1 = target.x1
    grid = uniform_grid(n_steps)
    s_lip = np.unique(np.concatenate([p[:: max(1, (points - 1) // 2)] for p in piece_grids(grid, points)]))
    w = target.guidance
    with model.attention_backend("reference"):
        lip = local_lipschitz_profile(FlatJump(model, sub(n_lip), weight), ConditionedLowRank(target.bed, sub(n_lip), w),
                                      x1[:n_lip], grid, s_lip, n_iter=lip_iters, seed=seed)
        L = lambda s: np.interp(s, lip["s"], lip["L_model"])  # noqa: E731
        rep = few_step_report(FlatJump(model, sub(n_th), weight), ConditionedLowRank(target.bed, sub(n_th), w),
                              n_steps, L=L, x1=x1[:n_th], z0=target.z0[:n_th], z0_err=_rms(target.z0_err[:n_th]),
                              points=points, b_from="path" if w == 1.0 else "flow",
                              generator=stream(seed, "B samples"), n_boot=100, seed=seed)
        ref_s = ConditionedLowRank(target.bed, sub(n_sens), w)
        sens = directional_sensitivity(FlatJump(model, sub(n_sens), weight), ref_s.velocity, x1[:n_sens], grid,
                                       target.z0[:n_sens], n_nodes=sens_nodes, rtol=sens_rtol,
                                       u_jvp=ref_s.velocity_jvp)
    out = rep.to_dict()
    out["profiles"] = {"s": [[float(v) for v in p] for p in rep.pieces], "A": [[float(v) for v in a] for a in rep.A],
                       "B": [[float(v) for v in b] for b in rep.B], "L_local": [[float(v) for v in l] for l in rep.L]}
    out.update({"n_samples": n_th, "lipschitz": lip,
                "sensitivity_directional": {**sens.to_dict(), "resolved": sensitivity_resolved(sens.identity_rel)},
                "note": "(a)_N uses the model's LOCAL L (a lower estimate of the true constant): not a certificate; "
                        "B and the sensitivity profile use the true field (diagnostics)."})
    return out


def checkpoints_at(run: Path, steps_at: list[int] | None) -> list[Path]:
    found = {int(checkpoint.read_meta(p)["step"]): p for p in checkpoint.list_checkpoints(run)}
    if not found:
        raise FileNotFoundError(f"--run: {run} has no checkpoints")
    if steps_at is None:
        return [found[s] for s in sorted(found)]
    missing = [s for s in steps_at if s not in found]
    if missing:
        raise ValueError(f"--steps-at: no checkpoint at steps {missing}; the run has {sorted(found)}")
    return [found[s] for s in steps_at]


def verify(run: str | Path, out: str | Path, *, steps_at: list[int] | None = None, samples: int = 1024,
           nfe=(1, 2, 4), guidance: float | None = None, seed: int = 0, device: str | None = None,
           batch_size: int = 256, pot_samples: int = 1000, n_projections: int = 256, gelbrich_boot: int = 20,
           n_boot: int = 200, theorem: str = "all", theorem_samples: int = 32, points: int = 5, lip_probes: int = 8,
           lip_iters: int = 10, sens_samples: int = 8, sens_nodes: int = 2, sens_rtol: float = 1e-3,
           weights: str = "eval_ema", figures: bool = True) -> dict:
    """Verify the checkpoints of an analytic run (module docstring); returns the report written to OUT/verify.json.

    ``weights``: which weights of each checkpoint are the model (``model``, ``target_ema`` or ``eval_ema``).
    ``theorem``: at which checkpoints the theorem's terms are computed — "all", "last" or "none". OUT/verify.json is
    rewritten after every (checkpoint, N) with ``complete: false`` until the end, so an interrupted run keeps its
    finished part."""
    run, out = Path(run), Path(out)
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = Config.from_dict(yaml.safe_load((run / "config.yaml").read_text())) if (run / "config.yaml").is_file() \
        else None
    if cfg is None:
        raise FileNotFoundError(f"--run: {run} has no config.yaml; is it a full_scale.train run directory?")
    if cfg.data.kind != "analytic":
        raise ValueError(f"--run: data.kind is {cfg.data.kind!r}; only analytic runs have an exact answer")
    nfe = [int(v) for v in nfe]
    if not nfe or min(nfe) < 1:
        raise ValueError(f"--nfe: expected jump counts ≥ 1, got {nfe}")
    if samples < 2 or theorem_samples > samples or sens_samples > samples or lip_probes > samples:
        raise ValueError("--samples: expected N ≥ 2 and at least --theorem-samples, --sens-samples and --lip-probes")
    if cfg.guidance.mode == "random" and guidance is None:
        raise ValueError("--guidance: the run trained with random w; pass the weight to verify")
    if guidance is None:
        guidance = cfg.guidance.weight if cfg.guidance.mode == "constant" else 1.0
    if not guidance >= 1.0:
        raise ValueError(f"--guidance: expected w ≥ 1, got {guidance}")
    if theorem not in ("all", "last", "none"):
        raise ValueError(f"--theorem: expected all, last or none, got {theorem!r}")
    paths = checkpoints_at(run, steps_at)
    weight = guidance if cfg.guidance.mode != "none" else None

    target = Target(cfg, n=samples, guidance=guidance, seed=seed, device=device, n_pot=pot_samples,
                    n_projections=n_projections, gelbrich_boot=gelbrich_boot, n_boot=n_boot)
    settings = {"pot_samples": target.floors["n_pot"], "n_projections": n_projections, "gelbrich_boot": gelbrich_boot,
                "n_boot": n_boot, "theorem_at": theorem, "theorem_samples": theorem_samples,
                "points_per_jump": points, "lip_probes": lip_probes, "lip_iters": lip_iters,
                "sens_samples": sens_samples, "sens_nodes": sens_nodes, "sens_rtol": sens_rtol,
                "sampler_precision": "fp32", "weights": weights}
    entries = []
    out.mkdir(parents=True, exist_ok=True)

    def write(complete: bool) -> dict:
        report = _report(run, cfg, device, target, samples, seed, nfe, settings, entries, started, complete)
        atomic_write_text(out / "verify.json", to_json(report))
        return report

    work = tqdm([(p, n) for p in paths for n in nfe], desc="verify (checkpoint, NFE)", dynamic_ncols=True)
    model, current = None, None
    for path, n_steps in work:
        if path != current:
            model, _, meta = load_run(run, weights, path, device)
            current = path
            entries.append({"step": int(meta["step"]), "checkpoint": str(path), "nfe": {}})
        work.set_postfix(step=entries[-1]["step"], nfe=n_steps)
        y = model_samples(model, target, n_steps, weight, batch_size)
        entry = {"sandwich": target.compare(y)}
        if theorem == "all" or (theorem == "last" and path == paths[-1]):
            entry["theorem"] = theorem_terms(model, target, n_steps, weight, n_th=theorem_samples, points=points,
                                             n_lip=lip_probes, lip_iters=lip_iters, n_sens=sens_samples,
                                             sens_nodes=sens_nodes, sens_rtol=sens_rtol, seed=seed)
        entries[-1]["nfe"][str(n_steps)] = entry
        write(complete=False)
    report = write(complete=True)
    if figures:
        from .plots import make_figures
        report["figures"] = [str(p) for p in make_figures(report, out)]
    return report


def _report(run, cfg, device, target, samples, seed, nfe, settings, entries, started, complete) -> dict:
    return {"schema": SCHEMA, "complete": complete, "run": str(run), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "config": {key: cfg.to_dict()[key] for key in ("model", "data", "guidance")},
            "bed": target.describe(), "samples": samples, "seed": seed, "nfe": nfe,
            "settings": settings, "floors": target.floors, "references": target.references,
            "checkpoints": entries, "wall_s": time.perf_counter() - started}


def to_json(obj) -> str:
    """JSON text with non-finite floats written as null."""
    import json

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=1)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m full_scale.verify", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="a full_scale.train run directory with data.kind analytic")
    p.add_argument("--out", required=True, help="output directory (verify.json and figures)")
    p.add_argument("--steps-at", type=_ints, default=None, help="checkpoint steps S1,S2,.. (default: all)")
    p.add_argument("--samples", type=int, default=1024, help="N noise draws (labels i mod K)")
    p.add_argument("--nfe", type=_ints, default=[1, 2, 4], help="numbers of jumps, comma-separated")
    p.add_argument("--guidance", type=float, default=None, help="w (default: the run's guidance.weight; 1 if none)")
    p.add_argument("--weights", default="eval_ema", choices=checkpoint.WEIGHTS, help="which weights to verify")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward of the sampler")
    p.add_argument("--pot-samples", type=int, default=1000, help="subsample for the exact POT W2")
    p.add_argument("--gelbrich-boot", type=int, default=20, help="bootstrap replicates of Gelbrich's bound")
    p.add_argument("--theorem", default="all", choices=("all", "last", "none"),
                   help="checkpoints at which A, B, L and the sensitivity profile are computed")
    p.add_argument("--theorem-samples", type=int, default=32, help="draws for A_N, B, D_N and (a)_N")
    p.add_argument("--points", type=int, default=5, help="σ nodes per jump (odd ≥ 3)")
    p.add_argument("--lip-probes", type=int, default=8, help="draws whose path points probe the local L")
    p.add_argument("--lip-iters", type=int, default=10, help="power iterations of the local L")
    p.add_argument("--sens-samples", type=int, default=8, help="draws for the directional sensitivity profile")
    p.add_argument("--sens-nodes", type=int, default=2, help="Gauss–Legendre nodes per jump (and twice as many)")
    p.add_argument("--sens-rtol", type=float, default=1e-3, help="tolerance of each adaptive tangent solve")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    return verify(a.run, a.out, weights=a.weights, steps_at=a.steps_at, samples=a.samples, nfe=a.nfe, guidance=a.guidance, seed=a.seed,
                  device=a.device, batch_size=a.batch_size, pot_samples=a.pot_samples, gelbrich_boot=a.gelbrich_boot,
                  theorem=a.theorem, theorem_samples=a.theorem_samples, points=a.points,
                  lip_probes=a.lip_probes, lip_iters=a.lip_iters, sens_samples=a.sens_samples,
                  sens_nodes=a.sens_nodes, sens_rtol=a.sens_rtol)
