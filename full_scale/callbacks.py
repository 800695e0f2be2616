"""Hooks into the training loop of :func:`full_scale.train.train`, and the Lipschitz probe that uses them.

A callback subclasses :class:`Callback` and overrides what it needs. Every rank calls every hook (a hook that
communicates may do so); ``run.dist.main`` tells rank 0, the only one whose log records are written.

* ``on_start(run, dataset)`` — after set-up and resume, before the first step;
* ``on_step(run)`` — after each optimizer step (``run.step`` already counts it; skipped steps included);
* ``on_log(run, record)`` — when a log record is due: add keys to ``record`` before it is written;
* ``on_end(run, summary)`` — once, after the loop (also after SIGTERM), with the summary :func:`train` returns.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tvm_theory.io import atomic_savez
from tvm_theory.path import interpolate

from .data import DATASETS
from .metrics import lipschitz_probe
from .sample import generate, grid_png, to_uint8


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


class SampleGrid(Callback):
    """Watch a run: every ``eval.every`` steps, samples of the evaluation EMA with ``sample.nfe[0]`` jumps, guidance
    ``sample.weight`` and noise ``sample.seed`` (the same noise every time, so grids compare across steps).

    * a grid ``{out}/samples/step_{N}.png`` of ``eval.grid_per_class`` samples of each of the first
      ``eval.grid_classes`` classes (one row per class; unconditional runs: one row), for pixel data or for latents
      with ``eval.vae`` set (the latents are saved as ``.npz`` either way), also sent to TensorBoard when it is on;
    * with ``eval.fid_reference``, the FID (and Inception Score) of ``eval.fid_samples`` samples against it, logged
      as ``fid`` and ``inception_score`` in an ``eval`` record of metrics.jsonl: a trend over training, not the
      FID-50k of record. Every rank takes part (sampling and Inception features are split over ranks).
    """

    def __init__(self):
        self.decode, self.inception = None, None

    def on_start(self, run, dataset) -> None:
        ev = run.cfg.eval
        if ev.every == 0:
            return
        if DATASETS[run.cfg.data.kind].pixels:
            self.decode = to_uint8
        elif ev.vae:
            from .data.vae import decode_latents, load_vae
            stats = getattr(dataset, "stats", None)  # the standardization the latents were stored with
            if stats is None:
                raise ValueError(f"eval.vae: decoding needs latents with their statistics (data.kind: latents), "
                                 f"got data.kind: {run.cfg.data.kind}")
            vae = load_vae(ev.vae, device=run.dist.device)
            self.decode = lambda z: decode_latents(vae, z, stats)  # noqa: E731
        if ev.fid_reference:
            from .evaluation.fid import load_inception
            if self.decode is None:
                raise ValueError("eval.fid_reference: FID needs images; set eval.vae to decode latent samples")
            self.inception = load_inception(ev.inception, device=run.dist.device)

    def on_step(self, run) -> None:
        ev = run.cfg.eval
        if ev.every == 0 or run.step % ev.every:
            return
        conditional = run.guidance is not None
        classes = min(ev.grid_classes, run.model.cfg.num_classes) if conditional else 1
        labels = torch.arange(classes).repeat_interleave(ev.grid_per_class) if conditional else None
        nfe, weight, seed = run.cfg.sample.nfe[0], run.cfg.sample.weight, run.cfg.sample.seed
        x = generate(run.eval_ema, labels, nfe, weight if conditional else None, n=classes * ev.grid_per_class,
                     seed=seed, batch_size=ev.batch_size, d=run.dist)
        record = {"event": "eval", "step": run.step, "nfe": nfe}
        folder = Path(run.out) / "samples"
        if run.dist.main:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_savez(folder / f"step_{run.step:08d}.npz", samples=x.numpy())
            if self.decode is not None:
                images = self.decode(x)
                grid_png(folder / f"step_{run.step:08d}.png", images, rows=classes)
                record["grid"] = str(folder / f"step_{run.step:08d}.png")
                if run.log.writer is not None:
                    run.log.writer.add_images("samples", images, run.step, dataformats="NHWC")
        if self.inception is not None:
            record.update(self._fid(run, folder, conditional, nfe, weight, seed))
        run.log.log(record)

    def _fid(self, run, folder: Path, conditional: bool, nfe: int, weight: float, seed: int) -> dict:
        from .evaluation.scoring import fid_and_is, write_adm_npz

        ev, k = run.cfg.eval, run.model.cfg.num_classes
        labels = torch.arange(ev.fid_samples) % k if conditional else None
        x = generate(run.eval_ema, labels, nfe, weight if conditional else None, n=ev.fid_samples, seed=seed + 1,
                     batch_size=ev.batch_size, d=run.dist)
        path = folder / "fid_samples.npz"
        if run.dist.main:
            images = self.decode(x)
            write_adm_npz(path, np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images)
        run.dist.barrier()
        result = fid_and_is(path, ev.fid_reference, model=self.inception, batch_size=ev.batch_size)
        return {"fid": result["fid"], "inception_score": result["inception_score"], "fid_samples": ev.fid_samples}
