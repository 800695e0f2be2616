"""Train a DiT with the TVM objective (docs/THEORY.md §3), on one process or many.

    python -m full_scale.train --preset tiny-digits --out runs/digits [--steps N] [--set section.key=value ...]
    torchrun --nproc_per_node 2 -m full_scale.train --preset tiny-digits --out runs/digits
    torchrun --nproc_per_node 8 -m full_scale.train --preset imagenet-256 --set data.root=/data/in256 --out runs/in256

or, from Python, ``train(load_config("tiny-digits"), "runs/digits")``.

One step: each rank draws its micro-batches, times (t, s, s′) and noise; the student's f, ∂_s f (one JVP) and
u_θ(x_{s′}) (one pass with the hand-written JVP: ``DiT.forward_and_ds(..., n_tangent=B)``) run inside the
DDP-wrapped :class:`~full_scale.run.StudentStep` forward (PyTorch cannot JVP through DDP from outside, and calling
the JVP on ``ddp.module`` would skip gradient synchronisation); the targets come from the target EMA (both of its
velocities in one call); AdamW steps on the averaged gradient (one fused kernel on CUDA, ``train.fused_adamw``);
both EMAs follow (one Triton pass on CUDA, ``train.fused_ema``). The step's health flags (non-finite loss or
gradient, SIGTERM) are read in one host synchronisation, and batches come from pinned memory on CUDA, so the copy
does not wait for the GPU. With ``train.update_in_stream`` (``auto``: on where both are fused, as on CUDA), AdamW
and the EMAs are launched before that read and skip a non-finite step on the device, so the read waits for the
flags alone and the GPU works through the update while the host starts the next step.
DDP uses NCCL on GPUs and gloo on the CPU; bf16 autocast on GPUs. ∂_s F comes from the DiT's hand-written tangent
(``train.jvp: manual``; ``functorch`` uses ``torch.func.jvp``), and on CUDA every block of the student and the target
is compiled (``train.compile``, ``train.compile_mode``); ``train.activation_checkpointing`` trades a forward for
memory. The run directory holds
``config.yaml`` (resolved), ``metrics.jsonl`` and ``checkpoints/``; a run restarted with the same ``--out`` resumes
exactly from its latest checkpoint.

The run's parts are built in :mod:`full_scale.run`; saving and resuming are :mod:`full_scale.run_folder`'s.
What a run guarantees (tests/test_fs_train.py, tests/test_fs_reliability.py, tests/test_fs_runs.py):
* one writer per run folder: rank 0 holds ``{out}/.lock`` (``tvm_theory.io.RunLock``); a second trainer on the same
  folder stops at once with the holder's pid, host and command;
* resume continues bit for bit on the same number of ranks (on another, with the same global batch, exactly in
  weights, optimizer and progress but not in data order or noise: :func:`~full_scale.run_folder.change_world_size`),
  and refuses a configuration that differs from the checkpoint's (listing every difference) unless each differing key is named
  in ``allow_config_change`` and is one of :data:`~full_scale.run_folder.SAFE_CHANGES`;
  ``train.steps`` may always change and ``train.init_from`` is not compared (the run keeps the value it started
  with). ``config.yaml`` is rewritten only with a configuration the run then follows,
  and the change is logged;
* a checkpoint is saved only while the run is healthy (its last step finite), so rotation never evicts the last
  healthy checkpoint for a diverged one; on divergence (``train.nan_policy``) the error names the step and the last
  healthy checkpoint;
* SIGTERM saves a checkpoint and ends the run; the command line then exits with :data:`EXIT_PREEMPTED` (75), a
  finished run with 0 and a diverged one with :data:`EXIT_DIVERGED` (3), so a scheduler can tell them apart; a bad
  setting or a busy or damaged run folder exits with 2 and one line.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch
import torch.distributed as dist
import yaml
from torch.profiler import record_function
from tqdm import tqdm

from kernels.ema import lerp_two_
from tvm_theory.cli import DefaultsHelpFormatter
from tvm_theory.ema import copy_buffers, ema_update
from tvm_theory.io import RunFolderBusy, atomic_write_text
from tvm_theory.loss import StudentOutput, prepare_batch, tvm_loss

from . import checkpoint
from .callbacks import Callback, LipschitzProbe, SampleGrid
from .config import Config, load_config
from .data import build_dataset
from .distributed import agree_later, setup, teardown
from .run import Run, build_run, use_compile
from .run_folder import SAFE_CHANGES, init_weights, one_writer, resume, save_if_healthy

Phase = Callable[[str], ContextManager]  # names a part of the step: profiler annotations, operator counts
EXIT_DIVERGED, EXIT_PREEMPTED = 3, 75  # command-line exit codes (75 = EX_TEMPFAIL: try again, i.e. resume)


@dataclass
class StepSums:
    """What one optimizer step's micro-batches leave behind: per-rank sums of loss, terminal, fm, mean-square ∂_s f
    and the example count (float64, (5,)), each example's (t, s) (2, n) and which examples were non-finite (n,)."""

    sums: torch.Tensor
    times: torch.Tensor
    bad: torch.Tensor


# ---- data ----------------------------------------------------------------------------------------------------------

def micro_batches(dataset, size: int, epoch: int, position: int, num_workers: int, pin_memory: bool = False):
    """Endless (epoch, position, x, y): position counts the micro-batches consumed in the epoch (for resume).
    ``pin_memory`` (on CUDA) lets the copy to the GPU run without waiting for the GPU's queue: a copy from pageable
    memory synchronises the stream first."""
    if len(dataset) < size:
        raise ValueError(f"train.micro_batch: {size} exceeds this rank's {len(dataset)} items per epoch")
    while True:
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=size, drop_last=True, num_workers=num_workers,
                                             pin_memory=pin_memory)
        for i, (x, y) in enumerate(loader):
            if i >= position:
                yield epoch, i + 1, x, y
        epoch, position = epoch + 1, 0


# ---- one step ------------------------------------------------------------------------------------------------------

def accumulate_gradients(run: Run, data, phase: Phase = record_function) -> StepSums:
    """Forward, JVP, targets, loss and backward of the step's ``run.accum`` micro-batches (gradients summed into
    ``.grad``, all-reduced by DDP after the last one); ``data`` yields (epoch, position, x0, y)."""
    sums = torch.zeros(5, dtype=torch.float64, device=run.dist.device)
    times, bad = [], []
    device = run.dist.device
    for k in range(run.accum):
        run.epoch, run.position, x0, y = next(data)
        x0, y = x0.to(device, non_blocking=True), y.to(device, non_blocking=True)
        draws = run.sampler(run.micro, generator=run.gen, device=device, dtype=x0.dtype)
        batch = prepare_batch(x0, draws, y=y if run.guidance is not None else None, cfg=run.guidance, generator=run.gen)
        sync = k == run.accum - 1 or not run.dist.distributed
        with (torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.bf16),
              run.student.no_sync() if not sync else contextlib.nullcontext()):
            with phase("student forward (JVP + flow matching)"):
                f, dfds, u_fm = run.student(batch)
            with phase("targets and loss"):
                terms = tvm_loss(batch, StudentOutput(f=f, dfds=dfds, u_fm=u_fm), run.target_ema,
                                 null_class=run.model.null_class)
            with phase("backward"):
                (terms.loss / run.accum).backward()
        per_example = terms.terminal_per_example + terms.fm_per_example
        times.append(torch.stack([batch.t, batch.s]).detach())
        bad.append(~torch.isfinite(per_example))
        sums += torch.stack([per_example.sum(), terms.terminal_per_example.sum(), terms.fm_per_example.sum(),
                             dfds.detach().pow(2).mean(dim=tuple(range(1, dfds.ndim))).sum(),
                             torch.full((), float(run.micro), device=device)]).double()  # no host copy
    return StepSums(sums, torch.cat(times, dim=1), torch.cat(bad))


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """‖(g_1, …, g_n)‖₂ over all gradients, as ``torch.nn.utils.get_total_norm`` (torch ≥ 2.6) computes it; the
    formula itself on older torch (the project's floor is 2.4)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_to_norm(params, max_norm: float, norm: torch.Tensor) -> None:
    """Scale every gradient by min(1, max_norm / (norm + 1e-6)), as ``torch.nn.utils.clip_grads_with_norm_``
    (torch ≥ 2.6) does; the formula itself on older torch."""
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.device))


def apply_update(run: Run, grad_norm: torch.Tensor, skip: torch.Tensor | None = None,
                 phase: Phase = record_function) -> None:
    """Clip to ``train.grad_clip``, take the AdamW step, then move both EMAs toward the new weights.

    ``skip`` (``run.update_in_stream``): a 0-d float tensor on the device, 1 if the step was not finite, which the
    host has not read yet. Where it is 1 the update changes nothing: fused AdamW reads it as its ``found_inf`` input
    (as ``torch.amp.GradScaler`` drives it: weights, moments and step count stay), the EMA kernel as its skip flag.
    The EMAs' buffers are then left to :func:`copy_ema_buffers`, after the read."""
    with phase("AdamW"):
        if run.cfg.train.grad_clip is not None:
            clip_to_norm(run.model.parameters(), run.cfg.train.grad_clip, grad_norm)
        if skip is not None:
            run.optimizer.found_inf, run.optimizer.grad_scale = skip, None
        try:
            run.optimizer.step()
        finally:
            if skip is not None:
                del run.optimizer.found_inf, run.optimizer.grad_scale
    with phase("two EMAs"):
        if run.fused_ema:  # one pass that reads the weights once
            lerp_two_(run.target_ema.parameters(), run.eval_ema.parameters(), run.model.parameters(),
                      1.0 - run.cfg.train.target_ema, 1.0 - run.cfg.train.eval_ema, skip=skip)
            if skip is None:
                copy_ema_buffers(run)
        else:
            ema_update(run.target_ema, run.model, run.cfg.train.target_ema)
            ema_update(run.eval_ema, run.model, run.cfg.train.eval_ema)


def copy_ema_buffers(run: Run) -> None:
    """The model's buffers (e.g. spectral-norm vectors) into both EMAs."""
    copy_buffers(run.target_ema, run.model)
    copy_buffers(run.eval_ema, run.model)


def report_nonfinite(run: Run, step: StepSums, grad_norm: torch.Tensor, in_a_row: int) -> None:
    """Log the (t, s) of the non-finite examples on every rank (the whole batch if only the gradient is), and raise
    ``FloatingPointError`` when ``train.nan_policy`` is stop or ``train.max_nan_skips`` is exceeded."""
    ts, bad = step.times, step.bad
    if run.dist.distributed:
        gathered = [torch.empty_like(ts) for _ in range(run.dist.world_size)]
        flags = [torch.empty_like(bad) for _ in range(run.dist.world_size)]
        dist.all_gather(gathered, ts)
        dist.all_gather(flags, bad)
        ts, bad = torch.cat(gathered, dim=1), torch.cat(flags)
    culprits = ts[:, bad] if bool(bad.any()) else ts
    policy = run.cfg.train.nan_policy
    run.log.log({"event": "nonfinite", "step": run.step, "policy": policy, "grad_norm": float(grad_norm),
                 "n_nonfinite_examples": int(bad.sum()), "t": culprits[0].tolist(), "s": culprits[1].tolist()})
    if policy == "stop" or in_a_row > run.cfg.train.max_nan_skips:
        healthy = checkpoint.latest(run.out)
        raise FloatingPointError(
            f"non-finite loss or gradient at step {run.step} (policy {policy}, {in_a_row} in a row; see "
            f"{run.out / 'metrics.jsonl'}); the last healthy checkpoint is "
            + (f"{healthy}: a rerun resumes from it (lower train.lr, or add train.grad_clip)" if healthy else
               "none: the run diverged before its first checkpoint"))


class StopSignal:
    """Within ``with StopSignal() as stop:``, SIGTERM sets ``stop.requested`` instead of ending the process."""

    requested = False

    def __enter__(self) -> "StopSignal":
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)


# ---- the run -------------------------------------------------------------------------------------------------------

def train(cfg: Config, out: str | Path, *, dataset=None, callbacks: Sequence[Callback] = (),
          allow_config_change: Sequence[str] = ()) -> dict:
    """Train (or resume) the run in ``out`` to ``cfg.train.steps`` steps; returns its summary.

    ``dataset``: the training set (default: ``cfg.data.kind`` from :data:`full_scale.data.DATASETS`).
    ``callbacks``: :class:`~full_scale.callbacks.Callback` hooks, after the built-in Lipschitz probe and sample
    grids (``log.lipschitz_every``, ``eval.every``).
    ``allow_config_change``: keys of :data:`SAFE_CHANGES` that may differ from the checkpoint's on resume.
    """
    out, d = Path(out), setup()
    with one_writer(out, d):
        dataset = dataset if dataset is not None else build_dataset(cfg, d.rank, d.world_size)
        run = build_run(cfg, out, d, dataset)
        resumed_from = resume(run, allow_config_change)
        if resumed_from is None and cfg.train.init_from:
            init_weights(run, cfg.train.init_from)
        cfg = run.cfg  # a resume restores the run's train.init_from
        if d.main:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            run.log.log({"event": "start", "step": run.step, "world_size": d.world_size, "device": str(d.device),
                         "micro_batch": run.micro, "accumulation": run.accum, "bf16": run.bf16, "jvp": cfg.train.jvp,
                         "compile": use_compile(cfg, d.device), "activation_checkpointing": run.model.checkpoint_blocks,
                         "parameters": sum(p.numel() for p in run.model.parameters()),
                         "resumed_from": str(resumed_from or "")})
        data = micro_batches(dataset, run.micro, run.epoch, run.position, cfg.data.num_workers,
                             pin_memory=d.device.type == "cuda")
        callbacks = [LipschitzProbe(), SampleGrid(), *callbacks]
        for cb in callbacks:
            cb.on_start(run, dataset)

        total, stopped_by, last_saved, record = cfg.train.steps, "steps", resumed_from, None
        sums = torch.zeros(5, dtype=torch.float64, device=d.device)  # loss, terminal, fm, dfds², count since log
        t_log, steps_since_log, nan_run = time.perf_counter(), 0, 0
        with (StopSignal() as stop,
              tqdm(total=total, initial=run.step, disable=not d.main, dynamic_ncols=True, file=sys.stderr) as bar):
            while run.step < total:
                run.optimizer.zero_grad(set_to_none=True)
                step = accumulate_gradients(run, data)
                grads = [p.grad for p in run.model.parameters() if p.grad is not None]
                grad_norm = total_norm(grads)
                # OR-ed over the ranks (the gradients, hence their norm, are averaged over them already)
                flags, read_flags = agree_later(d, step.bad.any(), ~torch.isfinite(grad_norm), stop.requested)
                if run.update_in_stream:
                    apply_update(run, grad_norm, skip=flags[:2].amax())
                bad_loss, bad_grad, stopping = read_flags()  # the step's one host synchronisation
                nonfinite = bad_loss or bad_grad
                run.step += 1
                if nonfinite:
                    nan_run += 1
                    report_nonfinite(run, step, grad_norm, nan_run)
                    run.optimizer.zero_grad(set_to_none=True)
                else:
                    nan_run = 0
                    sums += step.sums
                    if run.update_in_stream:
                        copy_ema_buffers(run)
                    else:
                        apply_update(run, grad_norm)
                for cb in callbacks:
                    cb.on_step(run)
                bar.update(1)
                steps_since_log += 1
                if run.step % cfg.log.every == 0 or run.step == total:
                    if d.distributed:
                        dist.all_reduce(sums)
                    now = time.perf_counter()
                    if sums[4] > 0:
                        record = log_record(run, sums, grad_norm, steps_since_log, now - t_log)
                        for cb in callbacks:
                            cb.on_log(run, record)
                        run.log.log(record)
                        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                    sums.zero_()
                    t_log, steps_since_log = now, 0
                if stopping:
                    last_saved, stopped_by = save_if_healthy(run, nan_run, last_saved), "sigterm"
                    run.log.log({"event": "sigterm", "step": run.step, "checkpoint": str(last_saved or "")})
                    break
                if run.step % cfg.checkpoint.every == 0 or (run.step == total and cfg.checkpoint.final):
                    last_saved = save_if_healthy(run, nan_run, last_saved)
        summary = {"out": str(out), "step": run.step, "steps": total, "stopped_by": stopped_by,
                   "checkpoint": str(last_saved or ""), "last_record": record}
        for cb in callbacks:
            cb.on_end(run, summary)
        run.log.close()
    teardown(d)
    return summary


def log_record(run: Run, sums: torch.Tensor, grad_norm: torch.Tensor, steps: int, seconds: float) -> dict:
    """The metrics.jsonl record of the steps since the last one: mean loss terms, gradient norm, throughput."""
    n = sums[4]
    return {"step": run.step, "loss": float(sums[0] / n), "terminal": float(sums[1] / n), "fm": float(sums[2] / n),
            "dfds_ms": float(sums[3] / n), "grad_norm": float(grad_norm), "lr": run.optimizer.param_groups[0]["lr"],
            "epoch": run.epoch, "images_per_s": run.cfg.train.global_batch * steps / seconds,
            "sec_per_step": seconds / steps}


# ---- command line --------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m full_scale.train", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--preset", default="tiny-digits", help="a preset name in full_scale/configs or a .yaml path")
    p.add_argument("--out", required=True, help="run directory (resumed if it holds checkpoints)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides train.steps)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="start a new run from these weights: a checkpoint folder or a .safetensors file "
                        "(train.init_from; default: random initialisation)")
    p.add_argument("--allow-config-change", action="append", default=[], metavar="SECTION.KEY",
                   help=f"on resume, let this key differ from the checkpoint's (one of: {', '.join(SAFE_CHANGES)})")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset with ``--set`` overrides and ``--steps`` applied."""
    extra = ([] if args.steps is None else [f"train.steps={args.steps}"]) + \
        ([] if args.init_from is None else [f"train.init_from={args.init_from}"])
    return load_config(args.preset, args.set + extra)


def main(argv=None) -> dict:
    args = parse_args(argv)
    return train(config_from_args(args), args.out, allow_config_change=args.allow_config_change)


def cli(argv=None) -> int:
    """:func:`main` with the exit codes of the module docstring: 0 finished, 75 preempted (SIGTERM), 3 diverged, and
    2 with one line for an error of the configuration or the run folder (argparse's convention)."""
    try:
        summary = main(argv)
    except FloatingPointError as err:
        print(f"python -m full_scale.train: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, FileNotFoundError, RunFolderBusy, checkpoint.CheckpointError) as err:
        print(f"python -m full_scale.train: error: {err}", file=sys.stderr)
        return 2
    return EXIT_PREEMPTED if summary["stopped_by"] == "sigterm" else 0


if __name__ == "__main__":
    sys.exit(cli())
