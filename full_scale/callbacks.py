"""Hooks into the training loop of :func:`full_scale.train.train`, and the Lipschitz probe that uses them.

A callback subclasses :class:`Callback` and overrides what it needs. Every rank calls every hook (a hook that
communicates may do so); ``run.dist.main`` tells rank 0, the only one whose log records are written.

* ``on_start(run, dataset)`` — after set-up and resume, before the first step;
* ``on_step(run)`` — after each optimizer step (``run.step`` already counts it; skipped steps included);
* ``on_log(run, record)`` — when a log record is due: add keys to ``record`` before it is written;
* ``on_end(run, summary)`` — once, after the loop (also after SIGTERM), with the summary :func:`train` returns.
"""
from __future__ import annotations

import torch

from tvm_theory.path import interpolate

from .metrics import lipschitz_probe


class Callback:
    """A no-op at every hook; subclasses override what they need."""

    def on_start(self, run, dataset) -> None:
        pass

    def on_step(self, run) -> None:
        pass

    def on_log(self, run, record: dict) -> None:
        pass

    def on_end(self, run, summary: dict) -> None:
        pass


class LipschitzProbe(Callback):
    """Every ``log.lipschitz_every`` steps (and at the last), a local Lipschitz estimate of x ↦ u_θ(x, s) on a fixed
    probe batch, added to the log record as ``lip_max``, ``lip_q50``, ``lip_q90`` (docs/THEORY.md §5, §8).

    The probe points are path points x_s = (1 − s)·x0 + s·ε with x0 the first ``log.lipschitz_probes`` training
    items, ε from seed 12345 and s on a grid in [0.05, 0.95]; the estimate is a power iteration of the Jacobian with
    the reference attention (a LOWER estimate of the true constant at these points, never a certificate)."""

    def __init__(self):
        self.probe = None

    def on_start(self, run, dataset) -> None:
        if not run.dist.main or run.cfg.log.lipschitz_every == 0:
            return
        gen = torch.Generator().manual_seed(12345)
        x0, y = next(iter(torch.utils.data.DataLoader(dataset, batch_size=run.cfg.log.lipschitz_probes)))
        s = torch.linspace(0.05, 0.95, len(x0))  # the data may hold fewer than lipschitz_probes items
        device = run.dist.device
        self.probe = (interpolate(x0, torch.randn(x0.shape, generator=gen), s).to(device), s.to(device),
                      y.to(device) if run.guidance is not None else None)

    def on_log(self, run, record: dict) -> None:
        every = run.cfg.log.lipschitz_every
        if self.probe is None or not (run.step % every == 0 or run.step == run.cfg.train.steps):
            return
        g = run.guidance
        w = g.weight if g is not None and g.weight_range is None else None
        x, s, y = self.probe
        run.model.eval()
        with run.model.attention_backend("reference"):
            record.update(lipschitz_probe(run.model, x, s, w=w, y=y, n_iter=run.cfg.log.lipschitz_iters,
                                          scaled=run.cfg.guidance.scaled,
                                          generator=torch.Generator(run.dist.device).manual_seed(0)))
        run.model.train()
