"""Aggregate the Lipschitz-ablation runs: ``ablation.json``, figures and the Markdown table (issue 8).

Every scalar metric of a run (:data:`METRICS`) is summarized per (data set, variant) over seeds as mean ± standard
error (sample standard deviation / √n; none for one seed) and compared with "all on" by Welch's unequal-variance
t-test (the statistics of ``tvm_theory.analysis.stats``). The p-values of one metric and data set are Holm–Bonferroni
adjusted over the variants compared; a difference is called significant when the adjusted p < 0.05. With three
seeds the test has little power: "not significant" means "not resolved at this budget", not "no effect".
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from tvm_theory.analysis.stats import holm, mean_se, welch

ALPHA = 0.05
# key → (label, how to read it from a run's result). Final probes are those of the last checkpoint; "peak" is the
# largest value over the probed checkpoints.
METRICS = {
    "lip_max": ("local L max (final)", lambda r: _last(r, "lip_max")),
    "lip_median": ("local L median (final)", lambda r: _last(r, "lip_median")),
    "lip_max_peak": ("local L max (peak)", lambda r: _peak(r, "lip_max")),
    "ds_max": ("‖∂ₛF‖ max (final)", lambda r: _last(r, "ds_max")),
    "mod_rms_max": ("modulation RMS max", lambda r: _last_prefix(r, "rms_max/", "modulation")),
    "act_rms_max": ("block-output RMS max", lambda r: _last_prefix(r, "rms_max/", None)),
    "grad_norm_median": ("grad-norm median", lambda r: r["training"]["grad_norm_median"]),
    "grad_norm_max": ("grad-norm max", lambda r: r["training"]["grad_norm_max"]),
    "grad_spikes": ("grad-norm spikes", lambda r: r["training"]["grad_spikes"]),
    "nonfinite_steps": ("non-finite steps", lambda r: r["training"]["nonfinite_steps"]),
    "terminal_final": ("terminal term", lambda r: r["training"]["terminal_final"]),
    "fm_final": ("FM term", lambda r: r["training"]["fm_final"]),
    "accuracy_1step": ("accuracy (1 step)", lambda r: _quality(r, "1step", "accuracy")),
    "frechet_1step": ("Fréchet (1 step)", lambda r: _quality(r, "1step", "frechet")),
    "w2_1step": ("W2 (1 step)", lambda r: _quality(r, "1step", "w2")),
    "accuracy_2step": ("accuracy (2 steps)", lambda r: _quality(r, "2step", "accuracy")),
    "frechet_2step": ("Fréchet (2 steps)", lambda r: _quality(r, "2step", "frechet")),
    "w2_2step": ("W2 (2 steps)", lambda r: _quality(r, "2step", "w2")),
}
TABLE_METRICS = ("lip_max", "lip_median", "ds_max", "mod_rms_max", "act_rms_max", "grad_norm_median", "grad_norm_max",
                 "grad_spikes", "nonfinite_steps", "terminal_final", "fm_final", "accuracy_1step", "frechet_1step",
                 "w2_1step", "w2_2step")


def _last(r: dict, key: str) -> float:
    return float(r["probes"][-1][key]) if r["probes"] else math.nan


def _peak(r: dict, key: str) -> float:
    return max((float(p[key]) for p in r["probes"]), default=math.nan)


def _last_prefix(r: dict, prefix: str, contains: str | None) -> float:
    """Max of the last probe's ``prefix…`` keys naming a modulation output (``contains``) or a block output (None)."""
    if not r["probes"]:
        return math.nan
    last = r["probes"][-1]
    vals = [v for k, v in last.items() if k.startswith(prefix)
            and ((contains in k) if contains else ("modulation" not in k))]
    return float(max(vals)) if vals else math.nan


def _quality(r: dict, n: str, key: str) -> float:
    q = r.get("quality", {}).get(n, {})
    return float(q[key]) if q.get("finite") and key in q else math.nan


def summarize(results: list[dict]) -> dict:
    """{dataset: {variant: {metric: {mean, se, n, values, p, p_holm, significant}}}} against "all_on"."""
    summary = {}
    for ds in sorted({r["dataset"] for r in results}):
        runs = [r for r in results if r["dataset"] == ds]
        variants = list(dict.fromkeys(r["variant"] for r in runs))
        values = {v: {m: [fn(r) for r in runs if r["variant"] == v] for m, (_, fn) in METRICS.items()}
                  for v in variants}
        summary[ds] = {v: {m: {**mean_se(vals), "values": vals} for m, vals in values[v].items()} for v in variants}
        for m in METRICS:
            ps = {v: welch(values[v][m], values["all_on"][m]) for v in variants if v != "all_on"}
            adj = holm(ps)
            for v in ps:
                summary[ds][v][m].update(p=ps[v], p_holm=adj[v],
                                         significant=bool(math.isfinite(adj[v]) and adj[v] < ALPHA))
        for v in variants:
            summary[ds][v]["status"] = [r["status"] for r in runs if r["variant"] == v]
    return summary


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    a = abs(x)
    return f"{x:.2e}" if (a >= 1e4 or (0 < a < 1e-2)) else f"{x:.3g}"


def floors(results: list[dict]) -> dict:
    """Per data set, the scores of training data against the held-out set (what a perfect generator would reach up to
    sampling noise) and, for the digits, the classifier's held-out accuracy."""
    out = {}
    for r in results:
        q = r.get("quality", {}).get("1step", {})
        for key in ("w2_floor", "frechet_floor", "classifier_held_out_accuracy"):
            if q.get("finite") and key in q:
                out.setdefault(r["dataset"], {})[key] = float(q[key])
    return out


def markdown_table(summary: dict, meta: dict, floor: dict | None = None) -> str:
    """One table per data set: rows are variants, cells mean ± SE over seeds, ** where Holm-adjusted p < 0.05."""
    lines = [f"Budget `{meta['budget']}`: {meta['steps']} steps, {meta['seeds']} seed(s) per variant, device "
             f"{meta['device']}. Cells: mean ± standard error over seeds; **bold** = differs from `all_on` by "
             f"Welch's t-test with Holm–Bonferroni adjusted p < {ALPHA} (over the variants, per metric and data set). "
             f"Local L is a power-iteration LOWER estimate of ‖∂ₓu_θ(x, s)‖₂ on a fixed probe batch (docs/THEORY.md §6).",
             ""]
    for ds, by_variant in summary.items():
        metrics = [m for m in TABLE_METRICS
                   if any(math.isfinite(by_variant[v][m]["mean"]) for v in by_variant)]
        ref = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in (floor or {}).get(ds, {}).items())
        lines += [f"**{ds}**" + (f" (reference: {ref})" if ref else ""), "", "| variant | " + " | ".join(METRICS[m][0] for m in metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for v, row in by_variant.items():
            cells = []
            for m in metrics:
                c = row[m]
                text = _fmt(c["mean"]) + ("" if not math.isfinite(c["se"]) else f" ± {_fmt(c['se'])}")
                cells.append(f"**{text}**" if c.get("significant") else text)
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figures(results: list[dict], summary: dict, out: Path) -> list[Path]:
    """lipschitz_training.png (local L max and ‖∂ₛF‖ max over training), lipschitz_gradnorm.png (gradient norms),
    lipschitz_quality.png (W2 and Fréchet of 1-step samples): means over seeds, bands/bars ± SE."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(summary)
    variants = list(dict.fromkeys(r["variant"] for r in results))
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    paths = []

    def curves(ax, ds, get_x, get_y, ylabel, log=True):
        for v in variants:
            runs = [r for r in results if r["dataset"] == ds and r["variant"] == v]
            series = [(get_x(r), get_y(r)) for r in runs if len(get_x(r))]
            if not series:
                continue
            n = min(len(x) for x, _ in series)
            x = np.asarray(series[0][0][:n], dtype=float)
            y = np.asarray([s[1][:n] for s in series], dtype=float)
            m = np.nanmean(y, 0)
            ax.plot(x, m, color=colors[v], label=v)
            if len(series) > 1:
                se = np.nanstd(y, 0, ddof=1) / math.sqrt(len(series))
                ax.fill_between(x, m - se, m + se, color=colors[v], alpha=0.2)
        ax.set_title(ds)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")

    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 7.5), squeeze=False)
    for j, ds in enumerate(datasets):
        curves(axes[0, j], ds, lambda r: [p["step"] for p in r["probes"]], lambda r: [p["lip_max"] for p in r["probes"]],
               "local L max over probes and s")
        curves(axes[1, j], ds, lambda r: [p["step"] for p in r["probes"]], lambda r: [p["ds_max"] for p in r["probes"]],
               "‖∂ₛF‖ max over probes")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "lipschitz_training.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    def smooth(g):
        g = np.asarray(g, dtype=float)
        k = max(1, len(g) // 50)
        return np.convolve(np.nan_to_num(g, nan=np.nanmax(g) if np.isfinite(g).any() else 0.0),
                           np.ones(k) / k, mode="valid")

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for j, ds in enumerate(datasets):
        curves(axes[0, j], ds, lambda r: r["training"]["series"]["step"][: len(smooth(r["training"]["series"]["grad_norm"]))],
               lambda r: smooth(r["training"]["series"]["grad_norm"]), "gradient norm (moving mean)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "lipschitz_gradnorm.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    keys = [("w2_1step", "W2 to held-out (1 step)"), ("frechet_1step", "Fréchet (1 step)")]
    fig, axes = plt.subplots(len(keys), len(datasets), figsize=(5.5 * len(datasets), 7), squeeze=False)
    for j, ds in enumerate(datasets):
        for i, (key, label) in enumerate(keys):
            ax = axes[i, j]
            vs = list(summary[ds])
            m = [summary[ds][v][key]["mean"] for v in vs]
            se = [summary[ds][v][key]["se"] for v in vs]
            ax.bar(range(len(vs)), m, yerr=np.nan_to_num(se), color=[colors[v] for v in vs], capsize=3)
            floors = [r["quality"]["1step"].get(key.replace("_1step", "_floor"), math.nan)
                      for r in results if r["dataset"] == ds and r["quality"].get("1step", {}).get("finite")]
            if floors:  # the same score for training data against the held-out set
                ax.axhline(float(np.nanmean(floors)), color="k", ls="--", lw=1, label="floor (training data)")
                ax.legend(fontsize=7)
            ax.set_xticks(range(len(vs)), vs, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{ds}: {label}")
    fig.tight_layout()
    paths.append(out / "lipschitz_quality.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_report(out: Path, results: list[dict], meta: dict, *, figures_dir: str | None = None,
                 extra: dict | None = None) -> dict:
    """Write ``out/ablation.json`` (meta, per-run results, summary, ``extra``), the figures and ``out/LIPSCHITZ.md``."""
    summary = summarize(results)
    report = {"meta": meta, "summary": summary, "runs": results, **(extra or {})}
    (out / "ablation.json").write_text(json.dumps(report, indent=1, allow_nan=True))
    (out / "LIPSCHITZ.md").write_text(markdown_table(summary, meta, floors(results)))
    paths = figures(results, summary, out)
    if figures_dir:
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy(p, Path(figures_dir) / p.name)
    return report
