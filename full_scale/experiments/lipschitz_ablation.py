"""The Lipschitz ablation: does the semi-Lipschitz DiT need each of its changes? (docs/THEORY.md §8, issue 8)

    python -m full_scale.experiments.lipschitz_ablation --out DIR [--budget small|gpu] [--seeds N]
        [--datasets digits patches] [--variants all_on vanilla ...] [--steps N] [--workers N]

Trains the same small class-conditional DiT with TVM (``full_scale.train``, preset ``tiny-digits``) once per
(data set, variant, seed) for a fixed budget. Variants (:data:`VARIANTS`): all §8 changes on; each change off in
turn (QK-norm, parameter-free RMSNorm, modulation RMS-normalization, spectral initialization of all linears, the time
MLPs included); all off (vanilla DiT); all on plus true spectral normalization during training; and, if asked for,
AdamW β2 = 0.999 instead of 0.95 (§8.5). Data sets: scikit-learn's digits (``full_scale.data.digits``) and 8 × 8 grey
patches of its sample photographs (``full_scale.data.patches``).

Per run (``DIR/runs/{dataset}/{variant}/seed{k}/result.json``): every ``probe_every`` steps, from the checkpoint of
that step, the probes of :class:`tvm_theory.analysis.probes.ProbeSet` on a fixed probe batch (local Lipschitz estimates of
x ↦ u_θ(x, s) over probes and an s-grid, ‖∂_s F‖, adaLN modulation and block-output RMS); from the trainer's
``metrics.jsonl`` the per-step gradient norms, spikes (:func:`grad_spikes`), non-finite steps, and the TVM terms;
at the end, 1- and 2-step samples of the evaluation EMA scored against held-out data (digits: classifier accuracy,
Fréchet distance, W2; patches: Fréchet distance and W2 in pixel space). A run whose result exists is not rerun.
``full_scale.experiments.ablation_report`` turns the runs into ``DIR/ablation.json``, figures and a Markdown table
with mean ± standard error over seeds and Welch's t-test against "all on".
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from toy.certified_vs_local import toy_certified_vs_local
from tvm_theory.analysis.probes import ProbeSet
from tvm_theory.io import atomic_write_text
from tvm_theory.param import NetworkJump
from tvm_theory.sampling import sample_few_step
from tvm_theory.time_samplers import make_time_sampler

from .. import checkpoint, train
from ..config import Config, load_config
from ..data import DATASETS as DATA_KINDS
from ..metrics import read_metrics
from ..model import DiT

PRESET = "tiny-digits"
LIPSCHITZ_SWITCHES = ("qk_norm", "rms_norm", "mod_norm", "spectral_init", "spectral_init_time")
ALL_ON = {k: True for k in LIPSCHITZ_SWITCHES} | {"spectral_norm": False}

# name → (model switches, train overrides). "Each change off in turn" follows docs/THEORY.md §8's numbering; change 4
# (spectral initialization) covers the attention/MLP linears, the patch embedding and the time MLPs together.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "all_on": (ALL_ON, {}),
    "no_qk_norm": (ALL_ON | {"qk_norm": False}, {}),
    "no_rms_norm": (ALL_ON | {"rms_norm": False}, {}),
    "no_mod_norm": (ALL_ON | {"mod_norm": False}, {}),
    "no_spectral_init": (ALL_ON | {"spectral_init": False, "spectral_init_time": False}, {}),
    "vanilla": ({k: False for k in ALL_ON}, {}),
    "spectral_norm": (ALL_ON | {"spectral_norm": True}, {}),
    "adam_beta2_0999": (ALL_ON, {"betas": [0.9, 0.999]}),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "adam_beta2_0999"]
DATASETS = ("digits", "patches")

# Budgets: model size, batch, steps, how often the probes run, and how many probes. "small" fits a shared 2-core CPU
# (cut --steps/--seeds/--variants further if needed); "gpu" is a four-times longer run of a 4-block DiT at twice the
# width and batch (sized to the 10-minute GPU calls it was run in: one data set, 21 runs, 8 workers).
BUDGETS = {
    "small": {"model": {"hidden_size": 64, "depth": 2, "num_heads": 4, "freq_dim": 64},
              "train": {"steps": 150, "global_batch": 64, "eval_ema": 0.98},
              "probe_every": 75, "n_probes": 16, "s_grid": [0.1, 0.5, 0.9], "power_iters": 10,
              "sample_steps": [1, 2]},
    "gpu": {"model": {"hidden_size": 128, "depth": 4, "num_heads": 4, "freq_dim": 64},
            "train": {"steps": 600, "global_batch": 128, "eval_ema": 0.99},
            "probe_every": 150, "n_probes": 32, "s_grid": [0.05, 0.25, 0.5, 0.75, 0.95], "power_iters": 15,
            "sample_steps": [1, 2]},
}
# The recipe every run shares, pinned here so that edits of the preset cannot change a study half-way: the paper's
# time embedding of t itself (time_scale 1, as the official code), gap* sampler, target EMA 0.99, AdamW β = (0.9, 0.95)
# at lr 1e-3 (§8.5 and docs/ANCHORS.md, with the larger small-model learning rate), constant CFG w = 1.5, label dropout 0.1.
RECIPE = {"model": {"input_size": 8, "in_channels": 1, "patch_size": 2, "mlp_ratio": 4.0, "time_scale": 1.0},
          "train": {"lr": 1.0e-3, "betas": [0.9, 0.95], "weight_decay": 0.0, "grad_clip": None, "target_ema": 0.99,
                    "time_sampler": "gap", "micro_batch": None, "nan_policy": "skip", "max_nan_skips": 20},
          "guidance": {"mode": "constant", "weight": 1.5, "label_dropout": 0.1}}
NORM_PATTERNS = (r"blocks\.\d+\.modulation", r"final\.modulation", r"blocks\.\d+")
GUIDANCE_WEIGHT = RECIPE["guidance"]["weight"]  # training, probes and sampling use the same CFG weight
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_WARMUP = 5.0, 50, 20
PROBE_SEED, SAMPLE_SEED = 12345, 2024


# ------------------------------------------------------------------------------------------------ data sets

def dataset_module(name: str):
    """The scoring module of a data set (``full_scale.data.DATASETS``): ``load_split``, ``NUM_CLASSES``, ``SHAPE``
    and ``evaluate`` (digits: with a classifier)."""
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")
    return DATA_KINDS[name].scoring_module()


# ------------------------------------------------------------------------------------------------ one run

def run_config(dataset: str, variant: str, seed: int, budget: dict, steps: int | None = None) -> Config:
    """The trainer's configuration of one run: the ``tiny-digits`` preset with the recipe, budget and variant."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    switches, train_over = VARIANTS[variant]
    num_classes = dataset_module(dataset).NUM_CLASSES
    model = RECIPE["model"] | budget["model"] | switches | {"num_classes": num_classes}
    changes = {f"model.{k}": v for k, v in model.items()}
    changes |= {f"train.{k}": v for k, v in (RECIPE["train"] | budget["train"] | train_over | {"seed": seed}).items()}
    changes |= {f"guidance.{k}": v for k, v in RECIPE["guidance"].items()}
    if steps is not None:
        changes["train.steps"] = steps
    total = int(changes["train.steps"])
    changes |= {"data.kind": dataset, "log.every": 1, "log.lipschitz_every": 0,
                "checkpoint.every": min(int(budget["probe_every"]), total), "checkpoint.keep": 10_000}
    return load_config(PRESET).override(changes)


def probe_set(dataset: str, budget: dict, device: torch.device) -> ProbeSet:
    """The fixed probe batch of a data set: held-out images, noise, labels, the budget's s-grid, and (t, s) pairs
    from the training time sampler (gap*), all drawn from seed :data:`PROBE_SEED`."""
    x, y = dataset_module(dataset).load_split("held_out")
    gen = torch.Generator().manual_seed(PROBE_SEED)
    idx = torch.randperm(len(y), generator=gen)[: int(budget["n_probes"])]
    times = make_time_sampler("gap")(len(idx), generator=gen)
    return ProbeSet(x0=x[idx], noise=torch.randn(x[idx].shape, generator=gen), y=y[idx],
                    s_grid=torch.tensor(budget["s_grid"]), t=times.t, s=times.s, patterns=NORM_PATTERNS).to(device)


def _load(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    model.load_state_dict(load_file(str(path), device=str(next(model.parameters()).device)), strict=True)
    return model.eval()


def grad_spikes(grad_norms: list[float]) -> list[int]:
    """Indices k ≥ SPIKE_WARMUP with g_k > SPIKE_FACTOR × median(g_{k−50}, …, g_{k−1}) (finite values only): a
    gradient-norm spike is a step whose norm exceeds five times the running median of the 50 steps before it."""
    g = np.asarray(grad_norms, dtype=np.float64)
    out = []
    for k in range(SPIKE_WARMUP, len(g)):
        window = g[max(0, k - SPIKE_WINDOW):k]
        window = window[np.isfinite(window)]
        if window.size and np.isfinite(g[k]) and g[k] > SPIKE_FACTOR * np.median(window):
            out.append(k)
    return out


def training_summary(records: list[dict]) -> dict:
    """Gradient-norm statistics, spikes, non-finite steps and the final TVM terms from a run's metrics.jsonl."""
    steps = [r for r in records if "event" not in r and "grad_norm" in r]
    nonfinite = [r["step"] for r in records if r.get("event") == "nonfinite"]
    g = [float(r["grad_norm"]) for r in steps]
    spikes = grad_spikes(g)
    tail = steps[-max(1, len(steps) // 10):]  # the final 10% of logged steps
    gf = np.asarray([v for v in g if math.isfinite(v)] or [math.nan])
    return {
        "steps_logged": len(steps), "nonfinite_steps": len(nonfinite), "nonfinite_at": nonfinite,
        "grad_norm_median": float(np.median(gf)), "grad_norm_p99": float(np.quantile(gf, 0.99)),
        "grad_norm_max": float(gf.max()), "grad_spikes": len(spikes), "grad_spike_steps": [steps[k]["step"] for k in spikes],
        "terminal_final": float(np.mean([r["terminal"] for r in tail])) if tail else math.nan,
        "fm_final": float(np.mean([r["fm"] for r in tail])) if tail else math.nan,
        "loss_final": float(np.mean([r["loss"] for r in tail])) if tail else math.nan,
        "series": {"step": [r["step"] for r in steps], "grad_norm": g, "loss": [r["loss"] for r in steps]},
    }


@torch.no_grad()
def sample_quality(model: torch.nn.Module, dataset: str, n_steps: int, device: torch.device) -> dict:
    """Scores of ``n_steps``-step samples with CFG weight 1.5, one per held-out image and with its label."""
    mod = dataset_module(dataset)
    _, labels = mod.load_split("held_out")
    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    noise = torch.randn((len(labels), *mod.SHAPE), generator=gen).to(device)
    x = sample_few_step(NetworkJump(model, w=GUIDANCE_WEIGHT, y=labels.to(device)), noise, n_steps).cpu()
    finite = bool(torch.isfinite(x).all())
    if not finite:
        return {"finite": False}
    x = x.clamp(-1, 1)
    if dataset == "digits":
        scores = mod.evaluate(x, labels, mod.load_classifier())
    else:
        scores = mod.evaluate(x)
    return {"finite": True, **scores}


def existing_result(spec: dict) -> dict | None:
    """A run's result.json, or None if it has not finished."""
    path = Path(spec["run_dir"]) / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_one(spec: dict) -> dict:
    """Train one (dataset, variant, seed), probe its checkpoints, score its samples; write and return result.json."""
    done = existing_result(spec)
    if done is not None:
        return done
    run_dir = Path(spec["run_dir"])
    result_path = run_dir / "result.json"
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    status, t0 = "ok", time.perf_counter()
    with open(run_dir / "train.log", "a") as log, contextlib.redirect_stderr(log):
        try:
            train.train(spec["config"], run_dir)
        except FloatingPointError as err:  # the trainer stops after too many non-finite steps in a row
            status = f"stopped: {err}"
    train_seconds = time.perf_counter() - t0
    mcfg = spec["config"].model.dit()
    # The probes run on the CPU, where the DiT uses the PyTorch reference attention (when the recorded results were
    # made, the Triton kernel had no torch.func.vjp for the power iteration). Sampling uses the training device.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probes = probe_set(spec["dataset"], spec["budget"], torch.device("cpu"))
    model = DiT(mcfg)
    series = []
    for ck in checkpoint.list_checkpoints(run_dir):
        step = int(ck.name.removeprefix(checkpoint.PREFIX))
        _load(model, ck / "model.safetensors")
        series.append({"step": step, **probes.measure(model, w=GUIDANCE_WEIGHT, n_iter=int(spec["budget"]["power_iters"]),
                                                      seed=PROBE_SEED)})
    last = checkpoint.latest(run_dir)
    quality = {}
    if last is not None:
        with torch.device(device):
            model = DiT(mcfg)
        _load(model, last / "eval_ema.safetensors")
        quality = {f"{n}step": sample_quality(model, spec["dataset"], n, device)
                   for n in spec["budget"]["sample_steps"]}
    result = {"dataset": spec["dataset"], "variant": spec["variant"], "seed": spec["seed"], "status": status,
              "train_seconds": train_seconds, "device": str(device), "probe_every": spec["budget"]["probe_every"],
              "probes": series, "training": training_summary(read_metrics(run_dir)), "quality": quality,
              "model_config": mcfg.to_dict()}
    atomic_write_text(result_path, json.dumps(result, allow_nan=True))
    if not spec.get("keep_checkpoints"):
        shutil.rmtree(checkpoint.checkpoint_dir(run_dir), ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------ the study

def run_specs(out: Path, budget_name: str, datasets, variants, seeds: int, steps: int | None, threads: int,
              keep_checkpoints: bool = False) -> list:
    budget = BUDGETS[budget_name]
    return [{"dataset": d, "variant": v, "seed": k, "budget": budget, "threads": threads,
             "keep_checkpoints": keep_checkpoints,
             "config": run_config(d, v, k, budget, steps), "run_dir": str(out / "runs" / d / v / f"seed{k}")}
            for k in range(seeds) for d in datasets for v in variants]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m full_scale.experiments.lipschitz_ablation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="study directory (runs/, ablation.json, figures, LIPSCHITZ.md)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    p.add_argument("--steps", type=int, default=None, help="override the budget's training steps")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: aggregate the runs of these arguments that have finished")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's checkpoints (by default they are deleted once result.json is written)")
    p.add_argument("--toy-steps", type=int, default=400,
                   help="training steps of the 2-D toy MLPs for the certified-vs-local comparison (0: at init)")
    p.add_argument("--figures-dir", default=None, help="also copy the figures here (e.g. docs/figures)")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.workers < 1 or args.threads < 1 or (args.steps is not None and args.steps < 1):
        p.error("--seeds, --workers, --threads and --steps must be positive")
    if args.toy_steps < 0:
        p.error("--toy-steps must be non-negative")
    if "all_on" not in args.variants:
        p.error("--variants: 'all_on' is the reference of every comparison and must be included")
    return args


def main(argv=None) -> dict:
    from .ablation_report import write_report

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = run_specs(out, args.budget, args.datasets, args.variants, args.seeds, args.steps, args.threads,
                      args.keep_checkpoints)
    if "digits" in args.datasets:  # train and cache the classifier once, before workers race for it
        dataset_module("digits").load_classifier()
    t0 = time.perf_counter()
    if args.report_only:
        results = [r for r in map(existing_result, specs) if r is not None]
        if not results:
            raise SystemExit(f"--report-only: no finished run under {out / 'runs'}")
    elif args.workers == 1:
        results = [run_one(s) for s in specs]
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_one, specs))
    meta = {"budget": args.budget, "budget_config": BUDGETS[args.budget], "seeds": args.seeds,
            "datasets": args.datasets, "variants": {v: VARIANTS[v] for v in args.variants},
            "steps": args.steps or BUDGETS[args.budget]["train"]["steps"], "recipe": RECIPE,
            "runs_finished": len(results), "runs_planned": len(specs), "wall_seconds": time.perf_counter() - t0,
            "device": results[0]["device"] if results else "none", "torch": torch.__version__}
    return write_report(out, results, meta, figures_dir=args.figures_dir, extra={"toy": toy_certified_vs_local(args.toy_steps)})


if __name__ == "__main__":
    main()
