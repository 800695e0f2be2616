"""Run metrics: a JSON-lines log (one object per line, ``metrics.jsonl``), optional TensorBoard, and the probes of the
bound's ingredients (docs/THEORY.md §5, §8): a local Lipschitz estimate of x ↦ u_θ(x, s) on a fixed probe batch.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from tvm_theory.analysis.lipschitz import local_lipschitz
from tvm_theory.io import atomic_write_text
from tvm_theory.param import velocity


class MetricsLog:
    """Appends records to ``{run}/metrics.jsonl`` (and TensorBoard scalars when enabled); no-op when not ``enabled``.

    ``resume_at(step)`` drops records of steps after ``step`` (left by a run that stopped after its last checkpoint),
    so that the log of a resumed run reads like an uninterrupted one.
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled, self.writer = enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("log.tensorboard: the tensorboard package is not installed "
                                   "(pip install tensorboard, or set log.tensorboard=false)") from err
            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def resume_at(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of a run's metrics.jsonl, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lipschitz_probe(F, x: Tensor, s: Tensor, *, w=None, y: Tensor | None = None, n_iter: int = 20,
                    generator: torch.Generator | None = None, scaled: bool = True) -> dict:
    """Local Lipschitz estimate of x ↦ u_θ(x, s) = [w ·] F_θ(x, s, s, y, 1/w) (the factor w when ``scaled``,
    docs/THEORY.md §2) at each probe x_i (power iteration,
    ``tvm_theory.analysis.lipschitz.local_lipschitz``): a LOWER estimate of the true constant at these points.

    x: (B, C, H, W) probe points, s: (B,). Returns {"lip_max", "lip_q50", "lip_q90"} over the probes.
    """
    shape = x.shape[1:]
    cond = {} if y is None else {"y": y}

    def u(flat: Tensor, s_: Tensor) -> Tensor:
        return velocity(F, flat.view(-1, *shape), s_, w, scaled=scaled, **cond).flatten(1)

    # tol=0 keeps every probe row in each iteration (a fixed n_iter), so the labels y stay aligned with the rows.
    est = local_lipschitz(u, x.flatten(1), s=s, n_iter=n_iter, tol=0.0, generator=generator)
    return {"lip_max": est.max, "lip_q50": est.quantiles["q50"], "lip_q90": est.quantiles["q90"]}
