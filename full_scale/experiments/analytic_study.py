"""The GPU study of issue 18: the real trainer against an exact answer in ImageNet-latent dimensions.

    python -m full_scale.experiments.analytic_study --out DIR [--variants guided,unconditional] [--train-seconds 600]
        [--call-seconds S] [--checkpoints 4] [--preset analytic-256] [--samples 1024] [--nfe 1,2,4] [--set k=v ...]

For each variant, :func:`full_scale.train.train` trains the preset (``analytic-256``: DiT-B/2 on the analytic mixture
of D = 4096 with 100 classes; on CUDA the trainer's defaults — Triton attention kernel, compiled blocks, bf16 autocast)
for a budget of training time, measured from the end of each process's first optimizer step (so compilation is not
counted), with checkpoints at ``--checkpoints`` geometrically spaced times (budget/2^(k−1), …, budget/2, budget); at
the budget the run is stopped through the trainer's own SIGTERM path (it saves one more checkpoint). Then
:func:`full_scale.verify.verify` checks every checkpoint at every N of ``--nfe`` on the same noise and labels.

A budget longer than one call can run (the device tool allows 10 minutes a command) is spread over calls:
``--call-seconds S`` ends a call after S seconds of training with a checkpoint, and the same command again (same
``--out``) resumes the run and its clock (``DIR/{variant}/clock.json``) until the budget is reached, then verifies.
Checkpoints written at a call's end are verified too.

Variants: ``guided`` — class-conditional with constant guidance w = 2 (the paper's value; the exact target is the
guided flow of w·u(x, t | k) − (w − 1)·u(x, t)); ``unconditional`` — ``guidance.mode: none`` (the exact target is the
marginal flow of the 100-mode mixture).

Writes DIR/{variant}/run (the training run: config.yaml, metrics.jsonl, checkpoints), DIR/{variant}/verify
(verify.json and figures) and DIR/study.json (device, budget, throughput, and per checkpoint and N the sandwich:
upper bound, POT and sliced W2, lower bounds, the references; an unfinished variant says how far it got).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tvm_theory.cli import DefaultsHelpFormatter
from tvm_theory.io import atomic_write_text

from ..callbacks import Callback
from ..config import load_config
from ..metrics import read_metrics
from ..run_folder import save
from ..train import train
from ..verify import resolved_sensitivity, to_json, verify

VARIANTS = {
    "guided": ["guidance.mode=constant", "guidance.weight=2.0"],
    "unconditional": ["guidance.mode=none"],
}


class WallClock(Callback):
    """Checkpoints at ``marks`` seconds of training, and a stop at the last mark (SIGTERM to this process, which
    :func:`full_scale.train.train` turns into a checkpoint and a clean end).

    Training time is ``already`` (seconds trained by earlier calls on the same run) plus the time since the end of this
    process's first optimizer step, so compilation is never counted. ``call_seconds`` stops this call earlier (the
    same clean stop): a later call resumes the run and the clock. ``trained`` is the training time at the last step
    seen, ``state()`` what :func:`run_variant` stores between calls.
    """

    def __init__(self, marks: list[float], *, already: float = 0.0, call_seconds: float | None = None,
                 on_save: Callable[[WallClock], None] | None = None):
        if not marks or any(b <= a for a, b in zip(marks[:-1], marks[1:])) or marks[0] <= 0:
            raise ValueError(f"marks: expected increasing positive times, got {marks}")
        if call_seconds is not None and not call_seconds > 0:
            raise ValueError(f"call_seconds: expected > 0 or None, got {call_seconds}")
        self.marks = [m for m in marks if m > already]  # earlier marks were checkpointed by earlier calls
        self.already, self.call_seconds, self.on_save = already, call_seconds, on_save
        self.start, self.trained, self.saved, self.stopping = None, already, [], False

    def on_step(self, run) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
            return
        if self.stopping:  # the signal is acted on at the end of the next step
            return
        self.trained = self.already + now - self.start
        if self.marks and self.trained >= self.marks[0]:
            self.marks.pop(0)
            if self.marks:
                save(run)
                self.saved.append(run.step)
                if self.on_save is not None:
                    self.on_save(self)
                return
        if not self.marks or (self.call_seconds is not None and now - self.start >= self.call_seconds):
            self.stopping = True
            os.kill(os.getpid(), signal.SIGTERM)

    def state(self) -> dict:
        return {"trained_s": self.trained, "budget_reached": not self.marks}  # the last mark is the budget


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def summarize(report: dict) -> list[dict]:
    """One row per (checkpoint, N): the sandwich in plain numbers (the sensitivity integral None where unresolved)."""
    rows = []
    for c in report["checkpoints"]:
        for n, e in c["nfe"].items():
            s = e["sandwich"]
            row = {"step": c["step"], "nfe": int(n), "upper": s["upper"]["value"], "upper_lo": s["upper"]["lo"],
                   "upper_hi": s["upper"]["hi"], "pot": s["pot"], "sliced": s["sliced"]["value"],
                   "gelbrich": s["lower_gelbrich"]["value"], "mean_gap": s["lower_mean"]["value"]}
            if "theorem" in e:
                th = e["theorem"]
                row.update({"bound_a_local": th["bounds"]["bound_a"]["value"],
                            "sensitivity_directional": resolved_sensitivity(th),
                            "sensitivity_identity_rel": th["sensitivity_directional"]["identity_rel"]})
            rows.append(row)
    return rows


def run_variant(name: str, out: Path, *, preset: str, overrides: list[str], train_seconds: float, checkpoints: int,
                verify_kwargs: dict, call_seconds: float | None = None) -> dict:
    """Train (or resume) one variant to ``train_seconds`` of training, then verify every checkpoint. With
    ``call_seconds`` a call may end first: the entry then says how far training got, and the same call again
    resumes it (``{variant}/clock.json`` keeps the training time between calls)."""
    # checkpoints only at the wall-clock marks (and the stops)
    cfg = load_config(preset, VARIANTS[name] + ["checkpoint.every=1000000000"] + overrides)
    marks = [train_seconds / 2 ** k for k in reversed(range(checkpoints))]
    clock_path = out / name / "clock.json"
    state = json.loads(clock_path.read_text()) if clock_path.is_file() else {"trained_s": 0.0, "budget_reached": False}
    clock = WallClock(marks, already=state["trained_s"], call_seconds=call_seconds,
                      on_save=lambda c: atomic_write_text(clock_path, json.dumps(c.state())))
    run_dir = out / name / "run"
    started = time.perf_counter()
    summary = train(cfg, run_dir, callbacks=[clock]) if not state["budget_reached"] else None
    train_wall = time.perf_counter() - started
    state = clock.state()
    if summary is not None and summary["stopped_by"] == "steps":  # the preset's step count came before the budget
        state["budget_reached"] = True
    clock_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(clock_path, json.dumps(state))
    entry = {"variant": name, "overrides": VARIANTS[name] + overrides, "train_summary": summary,
             "train_wall_s": train_wall, "trained_s": state["trained_s"], "budget_s": train_seconds,
             "checkpoint_marks_s": marks}
    records = [r for r in read_metrics(run_dir) if "images_per_s" in r]
    entry["images_per_s_last"] = records[-1]["images_per_s"] if records else None
    if not state["budget_reached"]:
        return {**entry, "status": f"trained {state['trained_s']:.0f} of {train_seconds:.0f} s: run the same command "
                                   "again to resume"}
    report = verify(run_dir, out / name / "verify", **verify_kwargs)
    return {**entry, "status": "verified", "verify_wall_s": report["wall_s"],
            "references": {k: v["upper"]["value"] for k, v in report["references"].items()},
            "floors": {"pot": report["floors"]["pot_floor"], "sliced": report["floors"]["sliced_floor"]["value"],
                       "gelbrich": report["floors"]["gelbrich_floor"]["value"]},
            "rows": summarize(report), "figures": report.get("figures", [])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m full_scale.experiments.analytic_study",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (the lead passes $OUT)")
    p.add_argument("--variants", default="guided,unconditional", help=f"comma-separated, of {list(VARIANTS)}")
    p.add_argument("--preset", default="analytic-256")
    p.add_argument("--train-seconds", type=float, default=600.0,
                   help="training budget per variant, compilation not counted")
    p.add_argument("--call-seconds", type=float, default=None,
                   help="end this call after this much training (checkpointed); the same command again resumes")
    p.add_argument("--checkpoints", type=int, default=4, help="checkpoints at budget/2^(k-1), ..., budget")
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--nfe", default="1,2,4")
    p.add_argument("--theorem-samples", type=int, default=64)
    p.add_argument("--sens-samples", type=int, default=8)
    p.add_argument("--sens-nodes", type=int, default=3)
    p.add_argument("--sens-rtol", type=float, default=1e-3)
    p.add_argument("--lip-probes", type=int, default=8)
    p.add_argument("--pot-samples", type=int, default=500)
    p.add_argument("--gelbrich-boot", type=int, default=10)
    p.add_argument("--theorem", default="last", choices=("all", "last", "none"),
                   help="checkpoints at which the theorem's terms are computed")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every variant")
    p.add_argument("--commit", default=None,
                   help="commit recorded in study.json (default: git rev-parse HEAD; pass it where the code runs from "
                        "a copy whose .git is absent or not the code's)")
    a = p.parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    if a.checkpoints < 1 or not a.train_seconds > 0 or (a.call_seconds is not None and not a.call_seconds > 0):
        raise SystemExit("--checkpoints, --train-seconds, --call-seconds: expected ≥ 1, > 0 and > 0")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    verify_kwargs = dict(samples=a.samples, nfe=[int(v) for v in a.nfe.split(",")], theorem_samples=a.theorem_samples,
                         sens_samples=a.sens_samples, sens_nodes=a.sens_nodes, sens_rtol=a.sens_rtol,
                         lip_probes=a.lip_probes, pot_samples=a.pot_samples, gelbrich_boot=a.gelbrich_boot,
                         theorem=a.theorem)
    study_path = out / "study.json"
    study = json.loads(study_path.read_text()) if study_path.is_file() else {"variants": {}}
    study.update({"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                  "commit": a.commit or _commit(), "preset": a.preset, "torch": torch.__version__})
    for name in variants:
        study["variants"][name] = run_variant(name, out, preset=a.preset, overrides=a.set,
                                              train_seconds=a.train_seconds, checkpoints=a.checkpoints,
                                              verify_kwargs=verify_kwargs, call_seconds=a.call_seconds)
        atomic_write_text(study_path, to_json(study))
    return study


if __name__ == "__main__":
    main()
