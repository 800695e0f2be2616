"""Train a DiT with the TVM objective (docs/THEORY.md §3), on one process or many.

    python -m full_scale.train --preset tiny-digits --out runs/digits [--steps N] [--set section.key=value ...]
    torchrun --nproc_per_node 2 -m full_scale.train --preset tiny-digits --out runs/digits
    torchrun --nproc_per_node 8 -m full_scale.train --preset imagenet-256 --set data.root=/data/in256 --out runs/in256

or, from Python, ``train(load_config("tiny-digits"), "runs/digits")``.

One step: each rank draws its micro-batches, times (t, s, s′) and noise; the student's f, ∂_s f (one JVP) and
u_θ(x_{s′}) run inside the DDP-wrapped :class:`StudentStep` forward (PyTorch cannot JVP through DDP from outside,
and calling the JVP on ``ddp.module`` would skip gradient synchronisation); the targets come from the target EMA
(both of its velocities in one call); AdamW steps on the averaged gradient; both EMAs follow. DDP uses NCCL on GPUs
and gloo on the CPU; bf16 autocast on GPUs. ∂_s F comes from the DiT's hand-written tangent (``train.jvp: manual``;
``functorch`` uses ``torch.func.jvp``), and on CUDA every block of the student and the target is compiled
(``train.compile``); ``train.activation_checkpointing`` trades a forward for memory. The run directory holds
``config.yaml`` (resolved), ``metrics.jsonl`` and ``checkpoints/``; a run restarted with the same ``--out`` resumes
exactly from its latest checkpoint.

What a run guarantees (tests/test_fs_train.py, tests/test_fs_reliability.py):
* one writer per run folder: rank 0 holds ``{out}/.lock`` (``tvm_theory.io.RunLock``); a second trainer on the same
  folder stops at once with the holder's pid, host and command;
* resume continues bit for bit on the same number of ranks (on another, with the same global batch, exactly in
  weights, optimizer and progress but not in data order or noise: :func:`change_world_size`), and refuses a
  configuration that differs from the checkpoint's (listing every difference) unless each differing key is named
  in ``allow_config_change`` and is one of :data:`SAFE_CHANGES`;
  ``train.steps`` may always change. ``config.yaml`` is rewritten only with a configuration the run then follows,
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
import copy
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import record_function
from tqdm import tqdm

from tvm_theory.cli import DefaultsHelpFormatter
from tvm_theory.ema import ema_update
from tvm_theory.io import RunFolderBusy, RunLock, atomic_write_text
from tvm_theory.loss import CFGConfig, StudentOutput, TVMBatch, prepare_batch, student_forward, tvm_loss
from tvm_theory.time_samplers import TimeSample, make_time_sampler

from . import checkpoint
from .callbacks import Callback, LipschitzProbe, SampleGrid
from .config import Config, load_config
from .data import build_dataset
from .distributed import Dist, setup, teardown
from .metrics import MetricsLog
from .model import DiT

Phase = Callable[[str], ContextManager]  # names a part of the step: profiler annotations, operator counts
EXIT_DIVERGED, EXIT_PREEMPTED = 3, 75  # command-line exit codes (75 = EX_TEMPFAIL: try again, i.e. resume)
# Keys a resumed run may change when they are named in ``allow_config_change``: how the run is watched, saved, fed
# and computed, never what it optimizes (train.steps may always change: extending a run is what resume is for).
SAFE_CHANGES = ("log.every", "log.lipschitz_every", "log.lipschitz_probes", "log.lipschitz_iters", "log.tensorboard",
                "checkpoint.every", "checkpoint.keep", "checkpoint.snapshot_every", "checkpoint.final", "data.root",
                "data.num_workers", "model.attention_backend", "train.compile", "train.activation_checkpointing", "train.ddp_split_graphs",
                "train.nan_policy", "train.max_nan_skips", "sample.nfe", "sample.weight", "sample.per_class",
                "sample.seed", "eval.vae", "eval.batch_size", "eval.every", "eval.grid_classes", "eval.grid_per_class",
                "eval.fid_reference", "eval.fid_samples", "eval.inception")


class StudentStep(nn.Module):
    """The module DDP wraps: its forward is the student's part of the loss, JVP included (docs/THEORY.md §3).

    forward(batch) → (f_θ(x_t, t, s), ∂_s f_θ(x_t, t, s), u_θ(x_{s′}, s′)), upcast to float32 under bf16 autocast.
    ``manual_jvp``: ∂_s F from the DiT's ``forward_and_ds`` (hand-written tangent); otherwise ``torch.func.jvp``.
    """

    def __init__(self, model: nn.Module, manual_jvp: bool = True):
        super().__init__()
        self.model, self.manual_jvp = model, manual_jvp

    def forward(self, batch: TVMBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # A bound __call__ has no forward_and_ds, so tvm_theory.param falls back to torch.func.jvp.
        out = student_forward(self.model if self.manual_jvp else self.model.__call__, batch)
        return tuple(a.to(torch.promote_types(a.dtype, torch.float32)) for a in (out.f, out.dfds, out.u_fm))


@dataclass
class Run:
    """A run in progress: what the loop, the callbacks and a checkpoint see."""

    cfg: Config
    out: Path
    dist: Dist
    model: DiT
    target_ema: DiT
    eval_ema: DiT
    student: nn.Module  # StudentStep, DDP-wrapped on several processes
    optimizer: torch.optim.Optimizer
    sampler: Callable[..., TimeSample]  # draws (t, s, s′)
    guidance: CFGConfig | None
    gen: torch.Generator  # this rank's noise, times and label dropout
    micro: int  # per-rank forward batch
    accum: int  # micro-batches per optimizer step
    bf16: bool
    log: MetricsLog
    step: int = 0
    epoch: int = 0  # data position of the next micro-batch: epoch, and micro-batches consumed in it
    position: int = 0


@dataclass
class StepSums:
    """What one optimizer step's micro-batches leave behind: per-rank sums of loss, terminal, fm, mean-square ∂_s f
    and the example count (float64, (5,)), each example's (t, s) (2, n) and which examples were non-finite (n,)."""

    sums: torch.Tensor
    times: torch.Tensor
    bad: torch.Tensor


# ---- set-up --------------------------------------------------------------------------------------------------------

def batch_geometry(cfg: Config, world_size: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps) with global = world_size × micro × accumulation."""
    global_batch = cfg.train.global_batch
    micro = cfg.train.micro_batch or global_batch // world_size
    if micro < 1 or global_batch % (world_size * micro):
        raise ValueError(f"train.global_batch: {global_batch} is not a multiple of world_size × micro_batch "
                         f"= {world_size} × {micro}")
    return micro, global_batch // (world_size * micro)


def use_compile(cfg: Config, device: torch.device) -> bool:
    if cfg.train.compile is True and device.type != "cuda":
        raise ValueError("train.compile: compiled blocks are for CUDA; on the CPU inductor's vectorized code gave "
                         "wrong gradients for them (torch 2.13, benchmarks/RESULTS.md); use train.compile=false")
    return cfg.train.compile is True or (cfg.train.compile == "auto" and device.type == "cuda")


def build_run(cfg: Config, out: Path, d: Dist, dataset) -> Run:
    """Model and EMAs (compiled on CUDA), the DDP-wrapped student, AdamW and this rank's generator."""
    micro, accum = batch_geometry(cfg, d.world_size)
    mcfg = cfg.model.dit()
    if tuple(dataset.latent_shape) != (mcfg.in_channels, mcfg.input_size, mcfg.input_size):
        raise ValueError(f"model: input ({mcfg.in_channels}, {mcfg.input_size}, {mcfg.input_size}) does not match "
                         f"the data's {tuple(dataset.latent_shape)}")
    if dataset.num_classes != mcfg.num_classes:
        raise ValueError(f"model.num_classes: {mcfg.num_classes}, but the data has {dataset.num_classes} classes")
    compiled = use_compile(cfg, d.device)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    with torch.device(d.device):
        model = DiT(mcfg)
    model.set_attention_backend(cfg.model.attention_backend)
    model.checkpoint_blocks = cfg.train.activation_checkpointing
    target_ema = copy.deepcopy(model).requires_grad_(False).eval()
    eval_ema = copy.deepcopy(model).requires_grad_(False).eval()
    if compiled:  # the student's blocks and the target's (eval_ema only samples, outside the loop)
        # Under DDP, Dynamo's DDPOptimizer would split every compiled block at gradient-bucket boundaries; with
        # per-block graphs DDP's reducer already overlaps the all-reduce at block granularity, and the split made
        # 2-GPU DiT-XL/2 steps 470–620 ms instead of 400 ms (benchmarks/RESULTS.md).
        torch._dynamo.config.optimize_ddp = cfg.train.ddp_split_graphs
        model.compile_blocks(dynamic=False)
        target_ema.compile_blocks(dynamic=False)
    student = StudentStep(model, manual_jvp=cfg.train.jvp == "manual")
    if d.distributed:
        student = DDP(student, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas,
                                  weight_decay=cfg.train.weight_decay)
    return Run(cfg=cfg, out=out, dist=d, model=model, target_ema=target_ema, eval_ema=eval_ema, student=student,
               optimizer=optimizer, sampler=make_time_sampler(cfg.train.time_sampler), guidance=cfg.guidance.cfg(model.null_class),
               gen=torch.Generator(d.device).manual_seed(cfg.train.seed * 7919 + d.rank), micro=micro, accum=accum,
               bf16=cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and d.device.type == "cuda"),
               log=MetricsLog(out, enabled=d.main, tensorboard=cfg.log.tensorboard))


# ---- checkpoints ---------------------------------------------------------------------------------------------------

def rng_state(gen: torch.Generator, device: torch.device) -> dict:
    state = {"generator": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, gen: torch.Generator, device: torch.device) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save(run: Run) -> Path:
    """Checkpoint the run (collective: every rank calls it)."""
    return checkpoint.save(run.out, run.step, model=run.model, target_ema=run.target_ema, eval_ema=run.eval_ema,
                           optimizer=run.optimizer, rng=rng_state(run.gen, run.dist.device),
                           meta={"epoch": run.epoch, "position": run.position, "config": run.cfg.to_dict(),
                                 "model_config": run.model.cfg.to_dict()},
                           keep=run.cfg.checkpoint.keep, snapshot_every=run.cfg.checkpoint.snapshot_every,
                           rank=run.dist.rank, world_size=run.dist.world_size,
                           barrier=run.dist.barrier)


def config_changes(saved: dict, cfg: Config) -> dict[str, tuple]:
    """``{"section.key": (checkpoint's value, this run's value)}`` for every key that differs. A key the checkpoint
    does not record (a field added later, e.g. ``guidance.scaled``) counts as its default, which keeps the behaviour
    of before the field existed."""
    now, default = cfg.to_dict(), Config().to_dict()
    changes = {}
    for sec in now:
        for key, value in now[sec].items():
            old = saved.get(sec, {}).get(key, default[sec][key])
            if old != value:
                changes[f"{sec}.{key}"] = (old, value)
    return changes


def check_resume_config(saved: dict, cfg: Config, allowed: Sequence[str], path: Path) -> dict[str, tuple]:
    """The changes of a resume, after refusing any not allowed (see the module docstring)."""
    unsafe = sorted(set(allowed) - set(SAFE_CHANGES))
    if unsafe:
        raise ValueError(f"--allow-config-change: {', '.join(unsafe)} cannot change on resume; "
                         f"the keys that can: {', '.join(SAFE_CHANGES)}")
    changes = {k: v for k, v in config_changes(saved, cfg).items() if k != "train.steps"}
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        lines = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"{path}: the configuration differs from the checkpoint's ({lines}). Resume with the "
                         "checkpoint's values, start a new --out, or name safe changes with --allow-config-change")
    return changes


def resume(run: Run, allow_config_change: Sequence[str] = ()) -> Path | None:
    """Restore the run's latest checkpoint, if any, after checking the configuration; returns its path."""
    last = checkpoint.latest(run.out)
    if last is None:
        return None
    try:
        meta = checkpoint.read_meta(last)
    except checkpoint.CheckpointError as err:
        intact = next((p for p in reversed(checkpoint.list_checkpoints(run.out)[:-1]) if _verifies(p)), None)
        hint = (f"; the older checkpoint {intact} is intact: move the damaged one aside (mv {last} {last}.damaged) "
                "to resume from it") if intact else "; no older intact checkpoint exists"
        raise checkpoint.CheckpointError(f"{err}{hint}") from None
    changes = check_resume_config(meta["config"], run.cfg, allow_config_change, last)
    meta, rng = checkpoint.load(last, model=run.model, target_ema=run.target_ema, eval_ema=run.eval_ema,
                                optimizer=run.optimizer, model_config=run.model.cfg.to_dict(),
                                rank=run.dist.rank, world_size=run.dist.world_size)
    run.step, run.epoch, run.position = meta["step"], meta["epoch"], meta["position"]
    run.log.resume_at(run.step)
    if rng is not None:
        set_rng_state(rng, run.gen, run.dist.device)
    else:
        change_world_size(run, meta)
    if changes:
        run.log.log({"event": "config_change", "step": run.step,
                     "changes": {k: {"checkpoint": a, "now": b} for k, (a, b) in changes.items()}})
    return last


def change_world_size(run: Run, meta: dict) -> None:
    """Continue a checkpoint written by another number of ranks, with the same global batch (checked with the rest of
    the configuration). Exact: weights, EMAs, optimizer, step, epoch and how many examples the epoch has consumed
    (the position is converted from the old accumulation to the new). Not exact: which examples remain in the epoch
    (each rank's share of the permutation changes with the rank count) and the noise and time draws (each rank's
    generator is seeded anew from (train.seed, rank, step))."""
    _, old_accum = batch_geometry(Config.from_dict(meta["config"]), meta["world_size"])
    run.position = run.position // old_accum * run.accum
    seed = (run.cfg.train.seed * 7919 + run.dist.rank) * 1_000_003 + run.step
    run.gen.manual_seed(seed)
    torch.manual_seed(seed)
    run.log.log({"event": "world_size_change", "step": run.step, "from": meta["world_size"],
                 "to": run.dist.world_size, "position": run.position})


def init_weights(run: Run, source: str) -> None:
    """Start a new run from existing weights (``train.init_from``): a checkpoint folder gives the student and both
    EMAs from their own files (hashes verified, architecture checked); a ``.safetensors`` file of a DiT's state dict
    gives all three. The optimizer, the step and the data position start afresh."""
    path = Path(source)
    nets = (run.model, run.target_ema, run.eval_ema)
    if path.is_dir():
        for name, module in zip(checkpoint.WEIGHTS, nets):
            meta = checkpoint.load_weights(path, module, name)
        checkpoint.check_model_config(meta, run.model.cfg.to_dict(), path)
    elif path.suffix == ".safetensors" and path.is_file():
        state = load_file(str(path))
        for module in nets:
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise checkpoint.CheckpointError(f"{path}: cannot be loaded into this model ({err})") from None
    else:
        raise ValueError(f"train.init_from: expected a checkpoint folder or a .safetensors file, got {source!r}")
    run.log.log({"event": "init_from", "step": run.step, "source": str(path)})


def _verifies(path: Path) -> bool:
    try:
        checkpoint.read_meta(path)
        return True
    except checkpoint.CheckpointError:
        return False


# ---- data ----------------------------------------------------------------------------------------------------------

def micro_batches(dataset, size: int, epoch: int, position: int, num_workers: int):
    """Endless (epoch, position, x, y): position counts the micro-batches consumed in the epoch (for resume)."""
    if len(dataset) < size:
        raise ValueError(f"train.micro_batch: {size} exceeds this rank's {len(dataset)} items per epoch")
    while True:
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=size, drop_last=True, num_workers=num_workers)
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
                             torch.tensor(float(run.micro), device=device)]).double()
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


def apply_update(run: Run, grad_norm: torch.Tensor, phase: Phase = record_function) -> None:
    """Clip to ``train.grad_clip``, take the AdamW step, then move both EMAs toward the new weights."""
    with phase("AdamW"):
        if run.cfg.train.grad_clip is not None:
            clip_to_norm(run.model.parameters(), run.cfg.train.grad_clip, grad_norm)
        run.optimizer.step()
    with phase("two EMAs"):
        ema_update(run.target_ema, run.model, run.cfg.train.target_ema)
        ema_update(run.eval_ema, run.model, run.cfg.train.eval_ema)


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


def agree(d: Dist, *flags: bool) -> list[bool]:
    """Each flag OR-ed over all ranks (one all-reduce)."""
    t = torch.tensor([float(f) for f in flags], device=d.device)
    if d.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t]


@contextlib.contextmanager
def one_writer(out: Path, d: Dist):
    """Hold the run folder's lock (rank 0) for the block; every rank raises :class:`RunFolderBusy` if it is taken."""
    lock, busy = RunLock(out), None
    if d.main:
        try:
            lock.acquire()
        except RunFolderBusy as err:
            busy = err
    if agree(d, busy is not None)[0]:
        raise busy or RunFolderBusy(f"{out}: rank 0 could not lock the run folder")
    try:
        yield
    finally:
        lock.release()


def save_if_healthy(run: Run, nan_run: int, last: Path | None) -> Path | None:
    """Checkpoint unless the last ``nan_run`` steps were non-finite (then log why and keep the healthy one)."""
    if nan_run == 0:
        return save(run)
    run.log.log({"event": "checkpoint_skipped", "step": run.step, "reason": f"{nan_run} non-finite steps in a row",
                 "last_healthy": str(last or "")})
    return last


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
        if d.main:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            run.log.log({"event": "start", "step": run.step, "world_size": d.world_size, "device": str(d.device),
                         "micro_batch": run.micro, "accumulation": run.accum, "bf16": run.bf16, "jvp": cfg.train.jvp,
                         "compile": use_compile(cfg, d.device), "activation_checkpointing": run.model.checkpoint_blocks,
                         "parameters": sum(p.numel() for p in run.model.parameters()),
                         "resumed_from": str(resumed_from or "")})
        data = micro_batches(dataset, run.micro, run.epoch, run.position, cfg.data.num_workers)
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
                nonfinite, stopping = agree(d, bool(step.bad.any()), stop.requested)  # gradients are averaged
                nonfinite = nonfinite or not bool(torch.isfinite(grad_norm))
                run.step += 1
                if nonfinite:
                    nan_run += 1
                    report_nonfinite(run, step, grad_norm, nan_run)
                    run.optimizer.zero_grad(set_to_none=True)
                else:
                    nan_run = 0
                    sums += step.sums
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
