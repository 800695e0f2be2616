"""Figures of ``python -m full_scale.verify`` (the toy's figures at scale, docs/THEORY.md §6, §10):

* ``sandwich_vs_step.png`` — per NFE, against the training step: the upper bound (paired RMSE, 95% band), exact POT W2
  (subsample) and sliced W2 with their floors (dotted), the lower bounds (Gelbrich beside its floor, the mean gap),
  bound (a)_N with the local L and the directional sensitivity diagnostic when computed and resolved; the
  references' upper bounds (Gaussian fit, class means) as horizontal lines.
* ``sandwich_vs_nfe.png`` — the same quantities against N at the last checkpoint.
* ``theorem_terms.png`` — at the last checkpoint, per N: A_N(σ), B(σ), the local L(σ) of the model and of the true
  field, and the sensitivity profile ‖∂_xψ ρ‖ beside ‖ρ‖.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .resolved import resolved_sensitivity  # noqa: E402

SERIES = (  # (label, getter on an NFE entry, style)
    ("upper: paired RMSE", lambda e: e["sandwich"]["upper"]["value"], dict(color="k", lw=2, marker="o")),
    ("exact W2 (POT, subsample)", lambda e: e["sandwich"]["pot"], dict(color="tab:blue", marker="s")),
    ("sliced W2", lambda e: e["sandwich"]["sliced"]["value"], dict(color="tab:cyan", marker="^")),
    ("lower: Gelbrich (empirical moments)", lambda e: e["sandwich"]["lower_gelbrich"]["value"],
     dict(color="tab:green", marker="v")),
    ("lower: mean gap", lambda e: e["sandwich"]["lower_mean"]["value"], dict(color="tab:olive", marker=".")),
    ("(a)_N, local L (not a certificate)",
     lambda e: e["theorem"]["bounds"]["bound_a"]["value"] if "theorem" in e else None,
     dict(color="tab:red", ls="--", marker="x")),
    ("sensitivity ∫‖∂ψ ρ‖ (diagnostic; where resolved)",
     lambda e: resolved_sensitivity(e["theorem"]) if "theorem" in e else None,
     dict(color="tab:purple", ls="--", marker="+")),
)
FLOORS = (("POT floor", "pot_floor", "tab:blue"), ("sliced floor", "sliced_floor", "tab:cyan"),
          ("Gelbrich floor", "gelbrich_floor", "tab:green"))
REFS = (("Gaussian fit (upper)", "gaussian_fit", "tab:brown"), ("class means (upper)", "class_means", "tab:gray"))
UNLABELLED = {"class means (upper)": "data mean (upper)"}  # an unconditional run's "class_means" is p0's mean
OFF_SCALE = 1e3  # a bound more than this factor above the measured distances is marked at the top edge


def _value(v):
    return v["value"] if isinstance(v, dict) else v


def _draw(ax, xs, entries, report) -> None:
    """The SERIES against ``xs`` on a log axis. The axis spans the measured distances (upper bound, references) and
    every value within ``OFF_SCALE`` times their largest; a value above that — (a)_N with a large local L reaches
    1e18 — is drawn at the top edge with its value written beside it, so that it does not flatten the sandwich."""
    hi = [e["sandwich"]["upper"]["hi"] for e in entries]
    refs = [report["references"][key]["upper"]["value"] for _, key, _ in REFS]
    limit = OFF_SCALE * max(hi + refs)
    series = []
    for label, get, style in SERIES:
        ys = [get(e) for e in entries]
        if not all(y is None for y in ys):
            series.append((label, np.array([np.nan if y is None or y <= 0 else y for y in ys], dtype=float), style))
    shown = [y for _, ys, _ in series for y in ys if y <= limit]
    edge = 2.0 * max(shown + hi + refs)
    for label, ys, style in series:
        over = ys > limit
        if over.any():
            label += " (above the axis: value written)"
        ax.plot(xs, np.where(over, edge, ys), label=label, **style)
        for x, y in zip(np.asarray(xs)[over], ys[over]):
            ax.annotate(f"{y:.1e}", (x, edge), textcoords="offset points", xytext=(0, -12), ha="center",
                        fontsize=7, color=style.get("color"))
    lo = [e["sandwich"]["upper"]["lo"] for e in entries]
    ax.fill_between(xs, np.maximum(lo, 1e-12), hi, color="k", alpha=0.15, lw=0)
    for label, key, color in FLOORS:
        ax.axhline(_value(report["floors"][key]), color=color, ls=":", lw=1, label=label)
    unlabelled = "bed" in report and report["bed"]["labels"] is None  # verify records labels=None when unconditional
    for (label, _, color), ref in zip(REFS, refs):
        ax.axhline(ref, color=color, ls="-.", lw=1.2, label=UNLABELLED.get(label, label) if unlabelled else label)
    ax.set_yscale("log")
    ax.set_ylim(top=1.5 * edge)
    ax.grid(alpha=0.3, which="both")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_vs_step(report: dict, path: Path) -> Path:
    nfe = [str(n) for n in report["nfe"]]
    fig, axes = plt.subplots(1, len(nfe), figsize=(5.5 * len(nfe), 4.5), squeeze=False)
    steps = [c["step"] for c in report["checkpoints"]]
    for ax, n in zip(axes[0], nfe):
        _draw(ax, steps, [c["nfe"][n] for c in report["checkpoints"]], report)
        ax.set_xlabel("training step")
        ax.set_title(f"{n} step(s), w = {report['bed']['guidance']}")
    axes[0][0].set_ylabel("distance to the exact (guided) law")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_vs_nfe(report: dict, path: Path) -> Path:
    last = report["checkpoints"][-1]
    nfe = report["nfe"]
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    _draw(ax, nfe, [last["nfe"][str(n)] for n in nfe], report)
    ax.set_xscale("log", base=2)
    ax.set_xticks(nfe, [str(n) for n in nfe])
    ax.set_xlabel("number of jumps N")
    ax.set_title(f"step {last['step']}, w = {report['bed']['guidance']}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the curves fill the axes
    return _save(fig, path)


def plot_terms(report: dict, path: Path) -> Path:
    last = report["checkpoints"][-1]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for n, entry in last["nfe"].items():
        th = entry["theorem"]
        pr = th["profiles"]
        s = np.concatenate(pr["s"])
        order = np.argsort(s)
        axes[0].plot(s[order], np.concatenate(pr["A"])[order], marker=".", label=f"N = {n}")
        axes[1].plot(s[order], np.concatenate(pr["B"])[order], marker=".", label=f"N = {n}")
        lip = th["lipschitz"]
        line, = axes[2].plot(lip["s"], lip["L_model"], marker=".", label=f"model, N = {n}")
        axes[2].plot(lip["s"], lip["L_true"], ls="--", color=line.get_color(), label=f"true field, N = {n}")
        sens = th["sensitivity_directional"]
        line, = axes[3].plot(sens["sigma"], sens["profile_jrho"], marker=".", label=f"‖∂ψ ρ‖, N = {n}")
        axes[3].plot(sens["sigma"], sens["profile_rho"], ls="--", color=line.get_color(), label=f"‖ρ‖, N = {n}")
    titles = ("A_N(σ) under the sampler's law", "B(σ) = E‖u_θ − u‖²", "local L(σ) (lower estimates)",
              "sensitivity profile (RMS over draws)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("σ")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"theorem terms at step {last['step']} (w = {report['bed']['guidance']})")
    return _save(fig, path)


def make_figures(report: dict, out: Path) -> list[Path]:
    paths = [plot_vs_step(report, out / "sandwich_vs_step.png"), plot_vs_nfe(report, out / "sandwich_vs_nfe.png")]
    first = report["checkpoints"][-1]["nfe"]
    if all("theorem" in e for e in first.values()):
        paths.append(plot_terms(report, out / "theorem_terms.png"))
    return paths
