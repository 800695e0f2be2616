"""Figures of a verification run (docs/THEORY.md §6): bounds vs. true W2 over training, the s-profiles, the samples.

* ``bounds_vs_w2.png`` — log10 of W2_emp, D_t, the floor and every bound at each checkpoint (full range, left) and
  a zoom on the non-vacuous ones (right). Bounds that overflow float64 are drawn from their log10 values.
* ``profiles.png`` — A_t(s), B(s), L(s) (local and certified) and log10 λ(s) at the last checkpoint.
* ``samples.png`` — data, exact-flow samples ψ(x1, 1, 0), and the model's 1-, 2- and 4-step samples.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tvm_theory.sampling import sample_few_step  # noqa: E402

LN10 = math.log(10.0)
SERIES = (  # (label, log10 key or linear key, style)
    ("W2_emp (true)", "w2_emp", dict(color="k", lw=2.5, marker="o")),
    ("D_t (paired RMSE)", "paired_rmse", dict(color="0.4", lw=1.5, marker=".")),
    ("sensitivity bound ∫‖∂ψ‖‖ρ‖ (§6.1)", "log10_bound_sensitivity", dict(color="tab:green", lw=2, marker="s")),
    ("sensitivity, directional ∫‖∂ψ ρ‖", "bound_sensitivity_directional",
     dict(color="tab:green", lw=1.5, ls="--", marker="s", mfc="none")),
    ("(a), local L", "log10_bound_a_local", dict(color="tab:blue", marker="^")),
    ("(a), certified L", "log10_bound_a_certified", dict(color="tab:blue", ls="--", marker="v")),
    ("√(b), certified L", "log10_bound_b_certified", dict(color="tab:purple", ls="--", marker="x")),
    ("√(c), certified L", "log10_bound_c_certified", dict(color="tab:orange", ls="--", marker="+")),
    ("√paper (§4), certified L", "log10_paper_bound", dict(color="tab:red", ls=":", marker="d")),
    ("√paper (§4), local L", "log10_paper_bound_local", dict(color="tab:red", ls="-.", marker="d", alpha=0.6)),
)


def _log10_series(entries: list[dict], key: str) -> np.ndarray:
    vals = []
    for e in entries:
        v = e.get(key)
        if v is None:
            vals.append(np.nan)
        elif key.startswith("log10_"):
            vals.append(v)
        else:
            vals.append(math.log10(v) if v > 0 else np.nan)
    return np.array(vals, dtype=float)


def plot_bounds(report: dict, path: Path) -> Path:
    """Bound vs. true W2 over training, log scale (docs/THEORY.md §6: the ladder at every checkpoint)."""
    entries = report["checkpoints"]
    steps = np.array([e["step"] for e in entries], dtype=float)
    w2 = _log10_series(entries, "w2_emp")
    floor = entries[0]["w2_floor"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    lows = []
    for ax, zoom in zip(axes, (False, True)):
        for label, key, style in SERIES:
            y = _log10_series(entries, key)
            lows.append(np.nanmin(y))
            with np.errstate(over="ignore"):  # huge bounds become inf: off the zoomed chart, drawn on the left
                ax.plot(steps, 10.0 ** y if zoom else y, label=label, **style)
        ax.axhline(floor if zoom else math.log10(floor), color="0.6", ls=":", label="finite-sample floor")
        positive = steps[steps > 0]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
        ax.set_xlabel("training step")
        if zoom:
            ax.set_yscale("log")
            ax.set_ylim(0.5 * min(floor, 10.0 ** np.nanmin(w2)), 100 * 10.0 ** np.nanmax(w2))
            ax.set_ylabel("W2 (distance units)")
            ax.set_title("zoom: up to 100× the largest W2 (higher bounds are off the chart)")
        else:
            # the axis is log10(bound), linear up to 10 and logarithmic beyond, so 0.1 and 1e16000 share a panel
            ax.set_yscale("symlog", linthresh=10.0, linscale=2.0)
            top = max(np.nanmax(_log10_series(entries, key)) for _, key, _ in SERIES)
            ticks = [k for k in (-3, -2, -1, 0, 1, 2, 5, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
                     if min(lows) - 1 <= k <= max(top, 1) * 1.5]
            ax.set_yticks(ticks, [f"1e{k}" if abs(k) > 2 else f"{10.0 ** k:g}" for k in ticks])
            ax.set_ylim(min(lows) - 0.3, max(top, 1) * 1.5)
            ax.set_ylabel("bound on W2 (axis ∝ log10 below 1e10, ∝ log10 log10 above)")
            ax.set_title(f"{report['testbed']}: every bound vs. the true W2 (t = {entries[0]['t']:g})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_profiles(report: dict, path: Path) -> Path:
    """A_t(s), B(s), L(s) and log10 λ(s) against s at the last checkpoint (and the first, faint)."""
    first, last = report["checkpoints"][0], report["checkpoints"][-1]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for e, alpha, tag in ((first, 0.35, f"step {first['step']}"), (last, 1.0, f"step {last['step']}")):
        p = e["profiles"]
        s = np.array(p["s"])
        axes[0].semilogy(s, np.maximum(p["A"], 1e-16), alpha=alpha, label=tag)
        axes[1].semilogy(s, np.maximum(p["B"], 1e-16), alpha=alpha, label=tag)
        axes[2].semilogy(s, np.maximum(p["L_local"], 1e-16), alpha=alpha, label=f"local, {tag}")
        if e is last and "L_true_local" in p:
            axes[2].semilogy(s, np.maximum(p["L_true_local"], 1e-16), color="k", ls=":", label="true field u, local")
        axes[2].semilogy(s, 10.0 ** np.minimum(p["log10_L_certified"], 300), ls="--", alpha=alpha,
                         label=f"certified, {tag}")
        axes[3].plot(s, np.array(p["log_lambda_local"]) / LN10, alpha=alpha, label=f"local, {tag}")
        axes[3].plot(s, np.array(p["log_lambda_certified"]) / LN10, ls="--", alpha=alpha, label=f"certified, {tag}")
    titles = ("A_t(s): terminal-velocity residual", "B(s) = E‖u_θ − u‖² on p_s", "L(s): Lipschitz of u_θ(·, s)",
              "log10 λ(s) = ∫_0^s L / ln 10")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_samples(verifier, jump, path: Path, n_show: int = 1000) -> Path:
    """Scatter plots: data, ψ(x1, 1, 0), and the model's 1-, 2- and 4-step samples from the same noise x1."""
    x1 = verifier.x1[:n_show]
    panels = [("data p0 (independent)", verifier.data[:n_show]), ("exact flow ψ(x1, 1, 0)", verifier.z0_1[:n_show])]
    panels += [(f"model, {k} step{'s' if k > 1 else ''}", sample_few_step(jump, x1, k)) for k in (1, 2, 4)]
    dim = x1.shape[1]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), sharex=True, sharey=True)
    for ax, (title, pts) in zip(axes, panels):
        pts = pts.cpu().numpy()
        if dim == 1:
            ax.hist(pts[:, 0], bins=60, density=True, color="tab:blue")
        else:
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
            ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_figures(report: dict, verifier, jump, out: Path) -> list[Path]:
    out = Path(out)
    return [plot_bounds(report, out / "bounds_vs_w2.png"), plot_profiles(report, out / "profiles.png"),
            plot_samples(verifier, jump, out / "samples.png")]
