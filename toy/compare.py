"""`python -m toy compare`: TVM against MeanFlow and flow matching on the 2-D test beds (issue 9).

Every method trains the same network (``toy.train``: same architecture, steps, batch, optimizer, schedule, seeds;
only ``TrainConfig.objective`` and the target EMA differ) and is sampled from its evaluation EMA with
:func:`tvm_theory.sampling.sample_few_step` at 1, 2 and 4 steps (flow matching also at 100 Euler steps):

* tvm       — TVM, target EMA 0.99 (the paper's default);   tvm-sg — TVM, target EMA 0 (plain stop-gradient);
* meanflow  — MeanFlow as published (``tvm_theory.baselines.meanflow_step_loss``);
* fm        — conditional flow matching, sampled by Euler steps (``tvm_theory.baselines.EulerJump``).

Metrics, per test bed and training seed k (the community's protocol, docs/ANCHORS.md, last section): from a generator
seeded 10_000 + k, n = 1,000 held-out points of p0, a second independent n-point sample of p0 and n noise points x1.
* W2 = exact ``ot.emd2`` W2 (``tvm_theory.analysis.transport.w2``) between the n generated points and the n held-out points;
  the *floor* is the W2 between the two independent data samples (what a perfect sampler gets, on average), and
  "exact ψ" the W2 of the exact flow-map samples ψ(x1, 1, 0) (another perfect sampler, paired with the same noise).
* RMSE to ψ = (mean_i ‖x̂_i − ψ(x1_i, 1, 0)‖²)^{1/2} on the same noise (D_t of docs/THEORY.md §5–6 at t = 1), with ψ from
  the test bed's adaptive ODE solve; its solver error (max over points) is reported beside it.
* wall time of training (seconds per run) and of sampling n points.
Mean ± standard error over the seeds (``tvm_theory.analysis.stats``; "± —" for one seed). Verdicts compare TVM
with each baseline by the *paired* per-seed difference (same seed, same noise, same test points): "win"/"loss" when
the 95% Student-t interval of the mean difference excludes 0, "tie" otherwise.

Writes DIR/compare.json, DIR/compare.md, DIR/compare.png (metrics against steps) and DIR/samples.png (one-step
samples of the first seed); each run's checkpoint and metrics live in DIR/runs/<bed>/<method>/seed<k>/ and a rerun
with the same settings reuses finished runs.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tvm_theory.baselines import jump_model
from tvm_theory.sampling import sample_few_step
from tvm_theory.analysis.stats import mean_se, paired_t_interval
from tvm_theory.analysis.testbeds import GaussianMixture, make_testbed
from tvm_theory.analysis.transport import w2

from .train import TrainConfig, train

METHODS: dict[str, dict] = {
    "tvm": {"objective": "tvm", "ema": 0.99},
    "tvm-sg": {"objective": "tvm", "ema": 0.0},
    "meanflow": {"objective": "meanflow"},
    "fm": {"objective": "fm"},
}
LABELS = {"tvm": "TVM (EMA 0.99)", "tvm-sg": "TVM (EMA 0)", "meanflow": "MeanFlow", "fm": "FM (Euler)",
          "fm-100": "FM, 100 Euler steps"}
STEP_COUNTS = (1, 2, 4)
FM_EULER_STEPS = 100
TESTBEDS = ("gaussian-2d", "ring8", "moons", "checkerboard")


@dataclass(frozen=True)
class CompareConfig:
    """The comparison's settings; the training budget (steps, batch, width) is the same for every method."""

    testbeds: tuple[str, ...] = TESTBEDS
    methods: tuple[str, ...] = tuple(METHODS)
    seeds: int = 5
    steps: int = 750
    batch: int = 256
    hidden: int = 64
    n_eval: int = 1000
    ode_tol: float = 1e-6

    def __post_init__(self):
        bad = sorted(set(self.methods) - set(METHODS))
        if bad or not self.methods:
            raise ValueError(f"methods: expected a non-empty subset of {sorted(METHODS)}, got {list(self.methods)}")
        if not self.testbeds:
            raise ValueError("testbeds: expected at least one test bed")
        for name in ("seeds", "steps", "batch", "hidden", "n_eval"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if not self.ode_tol > 0:
            raise ValueError(f"ode_tol: expected a positive tolerance, got {self.ode_tol}")

    def train_config(self, testbed: str, method: str, seed: int) -> TrainConfig:
        return TrainConfig(testbed=testbed, steps=self.steps, seed=seed, batch=self.batch, hidden=self.hidden,
                           **METHODS[method])

    def step_counts(self, method: str) -> tuple[int, ...]:
        return STEP_COUNTS + ((FM_EULER_STEPS,) if METHODS[method]["objective"] == "fm" else ())


def summary(values: list[float]) -> dict:
    """The per-seed values with their mean ± standard error (:func:`tvm_theory.analysis.stats.mean_se`; NaN SE for
    one seed)."""
    return {"values": [float(x) for x in values], **mean_se(values)}


def paired_verdict(ours: list[float], theirs: list[float], level: float = 0.95) -> dict:
    """Mean ± SE of the per-seed difference ours − theirs (lower is better) and its verdict: "win" if the two-sided
    ``level`` Student-t interval (:func:`tvm_theory.analysis.stats.paired_t_interval`) lies below 0, "loss" if above,
    "tie" otherwise (always "tie" for one seed)."""
    d = paired_t_interval(ours, theirs, level)
    verdict = "win" if d["diff"] + d["half_width"] < 0 else "loss" if d["diff"] - d["half_width"] > 0 else "tie"
    return {**d, "verdict": verdict}


# ---- evaluation data ----------------------------------------------------------------------------------------------
def eval_data(bed, seed: int, n: int, cache: Path) -> dict:
    """Held-out points, a second data sample (for the floor), noise x1 and ψ(x1, 1, 0) with its ODE error; cached
    as safetensors in ``cache`` because ψ of a many-component mixture takes tens of seconds."""
    if cache.exists():
        d = load_file(str(cache))
        return {"x_test": d["x_test"], "x_other": d["x_other"], "x1": d["x1"], "psi": d["psi"],
                "psi_err_max": float(d["psi_err_max"])}
    gen = torch.Generator().manual_seed(10_000 + seed)
    x_test, x_other = bed.sample(n, gen), bed.sample(n, gen)
    x1 = torch.randn(n, bed.dim, generator=gen, dtype=torch.float64)
    sol = bed.flow_with_error(x1, 1.0, 0.0)
    d = {"x_test": x_test, "x_other": x_other, "x1": x1, "psi": sol.x,
         "psi_err_max": torch.tensor(float(sol.err_max), dtype=torch.float64)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in d.items()}, str(cache))
    return eval_data(bed, seed, n, cache)


def evaluate(model, objective: str, data: dict, step_counts) -> tuple[dict, dict]:
    """W2 to the held-out points, RMSE to ψ on the same noise and sampling wall time for each step count; and the
    generated points (float32, as sampled) by step count."""
    jump = jump_model(objective, model)
    x1 = data["x1"].to(torch.float32)
    metrics, samples = {}, {}
    for n in step_counts:
        t0 = time.perf_counter()
        x = sample_few_step(jump, x1, n)
        wall = time.perf_counter() - t0
        rmse = float((x.to(torch.float64) - data["psi"]).pow(2).sum(1).mean().sqrt())
        metrics[str(n)] = {"w2": w2(x, data["x_test"]), "rmse": rmse, "sample_wall_s": wall}
        samples[str(n)] = x
    return metrics, samples


def run_one(cc: CompareConfig, testbed: str, method: str, seed: int, data: dict, run_dir: Path) -> dict:
    """Train (or reuse a finished run with the same config) and evaluate one method on one test bed and seed."""
    cfg = cc.train_config(testbed, method, seed)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        done = json.loads(metrics_path.read_text())
        if done["config"] == json.loads(json.dumps(asdict(cfg))) and (done["n_eval"], done["ode_tol"]) == \
                (cc.n_eval, cc.ode_tol):
            return done
    t0 = time.perf_counter()
    state = train(cfg, run_dir, resume=False, progress=False)
    train_wall = time.perf_counter() - t0
    state.eval_model.eval()
    metrics, samples = evaluate(state.eval_model, cfg.objective, data, cc.step_counts(method))
    res = {"config": asdict(cfg), "n_eval": cc.n_eval, "ode_tol": cc.ode_tol, "train_wall_s": train_wall,
           "steps": metrics}
    save_file({"x": samples["1"].contiguous()}, str(run_dir / "samples_1step.safetensors"))
    metrics_path.write_text(json.dumps(res, indent=1))
    return res


# ---- the comparison -----------------------------------------------------------------------------------------------
def compare(cc: CompareConfig, out: Path, log=print) -> dict:
    """Run every (test bed, seed, method), then aggregate into the JSON written as DIR/compare.json."""
    beds: dict[str, dict] = {}
    for name in cc.testbeds:
        bed = make_testbed(name)
        if isinstance(bed, GaussianMixture):  # ψ by an adaptive ODE solve at the requested tolerance
            bed = make_testbed(name, rtol=cc.ode_tol, atol=cc.ode_tol)
        per_seed = {m: [] for m in cc.methods}
        floor, exact, ode_err = [], [], 0.0
        for seed in range(cc.seeds):
            data = eval_data(bed, seed, cc.n_eval, out / "eval" / f"{name}_seed{seed}_n{cc.n_eval}_tol{cc.ode_tol:g}"
                                                          ".safetensors")
            floor.append(w2(data["x_other"], data["x_test"]))
            exact.append(w2(data["psi"], data["x_test"]))
            ode_err = max(ode_err, data["psi_err_max"])
            for m in cc.methods:
                r = run_one(cc, name, m, seed, data, out / "runs" / name / m / f"seed{seed}")
                per_seed[m].append(r)
                log(f"{name:13s} seed {seed} {m:9s} train {r['train_wall_s']:6.1f}s  " + "  ".join(
                    f"{k}: W2 {v['w2']:.4f} RMSE {v['rmse']:.4f}" for k, v in r["steps"].items()))
        methods = {}
        for m, runs in per_seed.items():
            methods[m] = {"train_wall_s": summary([r["train_wall_s"] for r in runs]), "steps": {
                k: {q: summary([r["steps"][k][q] for r in runs]) for q in ("w2", "rmse", "sample_wall_s")}
                for k in runs[0]["steps"]}}
        beds[name] = {"floor_w2": summary(floor), "exact_flow_w2": summary(exact), "psi_ode_err_max": ode_err,
                      "methods": methods, "verdicts": _verdicts(methods)}
    return {"config": asdict(cc), "method_settings": METHODS, "testbeds": beds,
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "threads": torch.get_num_threads(), "machine": platform.machine()}}


def _verdicts(methods: dict) -> dict:
    """TVM (EMA 0.99) at k steps against each other method at the same k, and against flow matching at 100 Euler
    steps (key "fm-100"), per metric (paired over seeds)."""
    if "tvm" not in methods:
        return {}
    ours = methods["tvm"]["steps"]
    rivals = {other: (res["steps"], None) for other, res in methods.items() if other != "tvm"}
    if "fm" in methods:
        rivals["fm-100"] = (methods["fm"]["steps"], str(FM_EULER_STEPS))
    return {other: {k: {q: paired_verdict(ours[k][q]["values"], theirs[fixed or k][q]["values"])
                        for q in ("w2", "rmse")} for k in map(str, STEP_COUNTS)}
            for other, (theirs, fixed) in rivals.items()}


# ---- reporting ----------------------------------------------------------------------------------------------------
def _se(se: float, digits: int = 3) -> str:
    """A standard error, or a dash where there is none (one seed: NaN, see ``tvm_theory.analysis.stats``)."""
    return f"{se:.{digits}f}" if math.isfinite(se) else "—"


def _pm(s: dict, digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {_se(s['se'], digits)}"


def markdown(res: dict, command: str) -> str:
    """The Markdown tables of DIR/compare.md: per test bed, W2 and RMSE to ψ (mean ± SE over seeds) and verdicts."""
    cc = res["config"]
    ks = [str(k) for k in STEP_COUNTS] + [str(FM_EULER_STEPS)]
    lines = [f"Command: `{command}`", "",
             f"{cc['seeds']} seeds; each method {cc['steps']} training steps, batch {cc['batch']}, MLP width "
             f"{cc['hidden']} (same for all); {cc['n_eval']} held-out points vs {cc['n_eval']} generated, exact "
             "emd2; mean ± standard error over seeds. W2 floor = W2 between two independent data samples; "
             "exact ψ = W2 of the exact flow map's samples. RMSE = paired distance to ψ(x1, 1, 0) on the same noise."
             " `—`: not run (100 steps only for FM).", ""]
    for name, bed in res["testbeds"].items():
        lines += [f"### {name}", "",
                  f"W2 floor {_pm(bed['floor_w2'])}; exact ψ {_pm(bed['exact_flow_w2'])}; ODE error of ψ "
                  f"≤ {bed['psi_ode_err_max']:.1e}.", "",
                  "| method | " + " | ".join(f"W2 {k} step{'s' * (k != '1')}" for k in ks) + " | "
                  + " | ".join(f"RMSE {k}" for k in ks) + " | train s/run | sample ms, " + "/".join(ks) + " steps |",
                  "|---" * (2 * len(ks) + 3) + "|"]
        for m, r in bed["methods"].items():
            cells = [_pm(r["steps"][k][q]) if k in r["steps"] else "—" for q in ("w2", "rmse") for k in ks]
            ms = " / ".join(f"{1e3 * r['steps'][k]['sample_wall_s']['mean']:.0f}" if k in r["steps"] else "—"
                            for k in ks)
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {_pm(r['train_wall_s'], 1)} | {ms} |")
        if bed["verdicts"]:
            lines += ["", "TVM (EMA 0.99) at k steps minus the other method at k steps (last row: at 100 Euler "
                      "steps), paired over seeds (negative = TVM better); verdict from the 95% t-interval:", "",
                      "| vs | " + " | ".join(f"{q} {k}" for q in ("W2", "RMSE") for k in map(str, STEP_COUNTS))
                      + " |", "|---" * (1 + 2 * len(STEP_COUNTS)) + "|"]
            for other, v in bed["verdicts"].items():
                cells = [f"{v[k][q]['verdict']} {v[k][q]['diff']:+.3f} ± {_se(v[k][q]['se'])}"
                         for q in ("w2", "rmse") for k in map(str, STEP_COUNTS)]
                lines.append(f"| {LABELS[other]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figures(res: dict, out: Path) -> None:
    """DIR/compare.png (W2 and RMSE against steps, error bars = SE, grey band = W2 floor) and DIR/samples.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["testbeds"])
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 6.4), squeeze=False)
    for j, name in enumerate(names):
        bed = res["testbeds"][name]
        for i, q in enumerate(("w2", "rmse")):
            ax = axes[i, j]
            for m, r in bed["methods"].items():
                ks = [int(k) for k in r["steps"]]
                ax.errorbar(ks, [r["steps"][str(k)][q]["mean"] for k in ks],
                            yerr=[r["steps"][str(k)][q]["se"] for k in ks], marker="o", ms=3, capsize=2,
                            label=LABELS[m])
            if q == "w2":
                f = bed["floor_w2"]
                ax.axhspan(f["mean"] - f["se"], f["mean"] + f["se"], color="0.8", label="W2 floor")
                ax.set_title(name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sampling steps")
            ax.set_ylabel("W2 to held-out data" if q == "w2" else "RMSE to exact flow map ψ")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=120)
    plt.close(fig)

    methods = list(res["config"]["methods"])
    fig, axes = plt.subplots(len(names), 2 + len(methods), figsize=(2.4 * (2 + len(methods)), 2.4 * len(names)),
                             squeeze=False)
    tol = res["config"]["ode_tol"]
    for i, name in enumerate(names):
        d = load_file(str(out / "eval" / f"{name}_seed0_n{res['config']['n_eval']}_tol{tol:g}.safetensors"))
        panels = [("held-out data", d["x_test"]), ("exact ψ(x1, 1, 0)", d["psi"])]
        panels += [(f"{LABELS[m]}, 1 step", load_file(str(out / "runs" / name / m / "seed0" /
                                                           "samples_1step.safetensors"))["x"]) for m in methods]
        lim = 1.2 * float(d["x_test"].abs().max())
        for j, (title, x) in enumerate(panels):
            ax = axes[i, j]
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if i == 0 else "", fontsize=8)
        axes[i, 0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------------------------------
def _csv(s: str) -> tuple[str, ...]:
    return tuple(x for x in s.split(",") if x)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CompareConfig()
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    p.add_argument("--testbeds", type=_csv, default=d.testbeds,
                   help=f"comma-separated (default {','.join(d.testbeds)})")
    p.add_argument("--methods", type=_csv, default=d.methods, help=f"comma-separated (default {','.join(d.methods)})")
    p.add_argument("--seeds", type=int, default=d.seeds, help=f"training seeds 0..N−1 (default {d.seeds})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps per run (default {d.steps})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"batch size (default {d.batch})")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"MLP width (default {d.hidden})")
    p.add_argument("--n-eval", type=int, default=d.n_eval, help=f"held-out / generated points (default {d.n_eval})")
    p.add_argument("--ode-tol", type=float, default=d.ode_tol,
                   help=f"rtol = atol of ψ's ODE solve (default {d.ode_tol})")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")


def command_line(cc: CompareConfig, out: Path, threads: int) -> str:
    """The full command that reproduces a comparison (every flag spelled out)."""
    return (f"python -m toy compare --out {out} --testbeds {','.join(cc.testbeds)} --methods {','.join(cc.methods)} "
            f"--seeds {cc.seeds} --steps {cc.steps} --batch {cc.batch} --hidden {cc.hidden} --n-eval {cc.n_eval} "
            f"--ode-tol {cc.ode_tol:g} --threads {threads}")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cc = CompareConfig(testbeds=tuple(args.testbeds), methods=tuple(args.methods), seeds=args.seeds,
                       steps=args.steps, batch=args.batch, hidden=args.hidden, n_eval=args.n_eval,
                       ode_tol=args.ode_tol)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = compare(cc, out)
    res["total_wall_s"] = time.perf_counter() - t0
    command = command_line(cc, out, args.threads)
    res["command"] = command
    (out / "compare.json").write_text(json.dumps(res, indent=1))
    (out / "compare.md").write_text(markdown(res, command))
    figures(res, out)
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'}, {out / 'compare.png'}, {out / 'samples.png'} "
          f"in {res['total_wall_s']:.0f} s")
    return 0

