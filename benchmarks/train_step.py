"""Benchmark of full TVM training steps of the real trainer (issue 10): step time, images/s, peak memory, MFU.

Each run is ``full_scale.train.train`` itself (StudentStep under DDP when several GPUs, bf16 autocast, target and
evaluation EMAs, AdamW), started in a fresh process (``torchrun`` for several GPUs). Each optimizer step is one
micro-batch per GPU (``global_batch = batch × GPUs``, no accumulation). The step time is the median over the steps
after ``--warmup`` of the host clock between the ends of consecutive steps (:class:`StepClock`, after each step's
flag read, its one synchronisation): each interval holds one whole step (data, forward and JVP, targets, backward,
all-reduce, clipping, AdamW, both EMAs), as the device runs it when the host keeps ahead. The trainer logs as it does
by default (``--log-every 100``; reading a record waits for all queued work, a second synchronisation in its step;
``--log-every 1`` times that too, as this benchmark did before 2026-12-06). Peak memory is
``torch.cuda.max_memory_allocated`` of each rank over the whole run (the largest rank is reported).

The attention backend is the trainer's ``model.attention_backend``. Each run is ``full_scale.train.train`` with a
config (:func:`run_config`), nothing patched: the data are ``data.kind: synthetic`` (random standardized latents of
the preset's shape, 4×32×32 for ``--resolution 256`` and 4×64×64 for 512, labels uniform over the classes; no disk,
``full_scale.data.synthetic``), and no checkpoint is written (``checkpoint.final: false``; I/O, not a step).

Variants (``--variants``, :data:`VARIANTS`): ``baseline`` = the reference PyTorch attention and ∂_s F by
``torch.func.jvp`` (``train.jvp: functorch``), no compilation (``torch.compile`` cannot enter a ``torch.func.jvp``
called from eager code, PyTorch #128711); ``triton`` = the same with the Triton JVP attention kernel; ``manual`` =
the DiT's hand-written tangent (``train.jvp: manual``, ``DiT.forward_and_ds``), eager; ``manual-compile`` = the same
with every block compiled (``DiT.compile_blocks``), the trainer's default on CUDA; ``…-ckpt`` adds activation
checkpointing, ``…-expandable`` ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``, ``…-ddpsplit`` lets Dynamo's
DDPOptimizer split the compiled blocks at gradient-bucket boundaries (``train.ddp_split_graphs: true``),
``…-foreach`` uses the foreach AdamW instead of the fused one (``train.fused_adamw: false``), ``…-foreach-ema`` two
``torch._foreach_lerp_`` for the EMAs instead of one Triton pass (``train.fused_ema: false``; also after
``…-cudagraphs``), ``…-cudagraphs`` and ``…-autotune`` compile the blocks with ``mode="reduce-overhead"`` (CUDA
graphs) and ``"max-autotune-no-cudagraphs"`` (``train.compile_mode``), ``…-gemm-autotune`` lets Inductor choose
each matmul among cuBLAS and its own Triton templates, which can take neighbouring elementwise work in as epilogues
(``TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1``: the matmuls alone, without the coordinate-descent tuning of every kernel that
``max-autotune`` adds); ``…-breaks`` calls the student's Triton attention as autograd Functions that break each
compiled block's graph in two (``train.attention_in_graph: false``) instead of the default custom operators that
stay inside it (the issue-21 runs named the default path ``…-ingraph``). Ratios are against ``baseline`` of the
same model, batch and GPU count in the same invocation.

Model FLOPs of one step, per image (2 FLOPs per multiply-add; :func:`forward_flops` gives L, the linear and patch
matmuls of one forward, and A, the attention products QKᵀ and PV, 4·T²·hidden per block; recomputation is not
counted, so this is model FLOP utilisation, not hardware utilisation):

    student f and ∂_s f by one JVP:   2L + 3A   (a tangent matmul per linear; QKᵀ, PV and four tangent products)
    backward through f and ∂_s f:     4L + 6A   (twice the forward)
    student u at the flow-matching point, forward and backward:   3L + 3A
    target forwards (no gradient): u_tgt at x̂_s and, with guidance, the unconditional u_tgt:   2L + 2A
    total with guidance:              11L + 14A     (without guidance 10L + 13A)

MFU = step FLOPs × batch per GPU / step time / peak, with the dense bf16 peak of the card's datasheet
(989.4 TFLOP/s for H100 SXM and H200); the measured rate of one 8192³ bf16 matmul is reported beside it.

``--profile N`` profiles N steps after the timed ones (kernel time by class, every kernel, GPU idle time by phase,
and the host operators that launched the kernels neither Inductor nor cuBLAS wrote).
With ``--kernel-bytes`` too, each run compiles into a fresh Inductor cache with ``TORCHINDUCTOR_BENCHMARK_KERNEL=1``,
which makes Inductor write each kernel's byte count into its source; :func:`bandwidth_summary` joins those counts
with the profiled times to say how far Inductor's memory-bound kernels run from the card's measured copy rate.

Usage (on the GPU machine; the device copy has no .git, so pass the commit):
    python benchmarks/train_step.py --models DiT-B/2,DiT-XL/2 --batches 32,64 --variants baseline,manual-compile \
        --out train_step.json --commit $(git rev-parse --short HEAD)
    python benchmarks/train_step.py --gpus 1,2 --models DiT-XL/2 --batches 32 --variants manual-compile
    python benchmarks/train_step.py --loss-check 100 --seeds 3 --models DiT-B/2 --batches 32 --variants manual-compile
    python benchmarks/train_step.py --census --models DiT-XL/2   # CPU: ATen operators of one step, per phase
Any ``--set section.key=value`` is applied to every run (e.g. a tiny model for the CPU smoke test).
"""
from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from full_scale.callbacks import Callback  # noqa: E402
from full_scale.config import Config, load_config  # noqa: E402
from full_scale.model import DiTConfig  # noqa: E402
from kernels import _backward, _forward  # noqa: E402


class Variant(NamedTuple):
    """The trainer settings of one variant (model.attention_backend, train.jvp, train.compile,
    train.activation_checkpointing, train.ddp_split_graphs), further ``section.key=value`` overrides, and extra
    environment of the trainer process."""

    backend: str
    jvp: str = "manual"
    compile: bool = False
    checkpointing: bool = False
    ddp_split: bool = False
    env: dict = {}
    sets: tuple = ()


EXPANDABLE = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
VARIANTS = {
    "baseline": Variant("reference", "functorch"),
    "triton": Variant("triton", "functorch"),
    "manual": Variant("triton"),
    "manual-compile": Variant("triton", compile=True),
    "manual-compile-ckpt": Variant("triton", compile=True, checkpointing=True),
    "manual-compile-expandable": Variant("triton", compile=True, env=EXPANDABLE),
    "manual-compile-ddpsplit": Variant("triton", compile=True, ddp_split=True),
    "manual-compile-foreach": Variant("triton", compile=True, sets=("train.fused_adamw=false",)),
    "manual-compile-foreach-ema": Variant("triton", compile=True, sets=("train.fused_ema=false",)),
    "manual-compile-cudagraphs-foreach-ema": Variant("triton", compile=True, sets=("train.compile_mode=reduce-overhead",
                                                                                   "train.fused_ema=false")),
    "manual-compile-cudagraphs": Variant("triton", compile=True, sets=("train.compile_mode=reduce-overhead",)),
    "manual-compile-autotune": Variant("triton", compile=True, sets=("train.compile_mode=max-autotune-no-cudagraphs",)),
    "manual-compile-gemm-autotune": Variant("triton", compile=True, env={"TORCHINDUCTOR_MAX_AUTOTUNE_GEMM": "1"}),
    "manual-compile-breaks": Variant("triton", compile=True, sets=("train.attention_in_graph=false",)),
    "manual-compile-cudagraphs-breaks": Variant("triton", compile=True, sets=("train.compile_mode=reduce-overhead",
                                                                              "train.attention_in_graph=false")),
}
# Dense bf16 peak of the datasheets (TFLOP/s); a card not listed gets no MFU.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}
# NVLink multicast stays off on the shared machines (KINDS.md); set for every process we start.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


# ------------------------------------------------------------------------------------------------------------ FLOPs

def forward_flops(m: DiTConfig) -> tuple[int, int]:
    """(L, A): matmul FLOPs of one DiT forward of one image, 2 per multiply-add.

    L: patch embedding (T·C·p²·d), the three time-embedding MLPs (freq·d + d²), per block the adaLN modulation
    (6d², per image), qkv (3d²·T), projection (d²·T) and MLP (2·r·d²·T), and the final layer (2d² + T·d·p²·C).
    A: attention products QKᵀ and PV, 2·T²·d each per block (d = hidden = heads × head dim).
    """
    d, T, p, C = m.hidden_size, m.num_patches, m.patch_size, m.in_channels
    r = int(d * m.mlp_ratio)
    embed = T * C * p * p * d + 3 * (m.freq_dim * d + d * d)
    block = 6 * d * d + T * (3 * d * d + d * d + 2 * d * r)
    final = 2 * d * d + T * d * p * p * C
    return 2 * (embed + m.depth * block + final), 2 * m.depth * 2 * T * T * d


def step_flops(m: DiTConfig, guidance: bool) -> int:
    """Model FLOPs of one TVM training step per image: 11L + 14A with guidance, 10L + 13A without (module doc)."""
    lin, att = forward_flops(m)
    return (11 * lin + 14 * att) if guidance else (10 * lin + 13 * att)


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


# ----------------------------------------------------------------------------------------------------------- worker

ANNOTATIONS = ("ProfilerStep", "Optimizer.", "DistributedDataParallel.", "nccl:")
ATTENTION_KERNELS = _forward.KERNELS + _backward.KERNELS


def kernel_category(name: str) -> str:
    """A coarse class of a GPU kernel by its name: matmul (cuBLAS, CUTLASS, Inductor's matmul templates with their
    fused epilogues, ``triton_tem_…``), attention (our Triton kernels), elementwise, other."""
    low = name.lower()
    if any(k in low for k in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")) or name.startswith("triton_tem_"):
        return "matmul"
    if any(name.startswith(k) for k in ATTENTION_KERNELS):
        return "attention"
    if any(k in low for k in ("elementwise", "vectorized", "unrolled", "foreach", "copy", "fill", "lerp")):
        return "elementwise"
    if "reduce" in low or "norm" in low or "softmax" in low:
        return "reduction/norm"
    return "other"


def profile_summary(prof, steps: int, top: int = 25) -> dict:
    """Device time per step of the profiled steps: total over kernels, by :func:`kernel_category`, the ``top``
    kernels (names cut to 120 characters) and every kernel (``kernels``, full names, for :func:`bandwidth_summary`)."""
    # user annotations (the profiler's and the trainer's phases) are listed as device events too
    marked = {e.name for e in prof.events() if getattr(e, "is_user_annotation", False)}
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.key.startswith(ANNOTATIONS) and e.key not in marked]
    total = sum(e.self_device_time_total for e in kernels) / 1e3 / steps
    cats: dict[str, float] = {}
    for e in kernels:
        c = kernel_category(e.key)
        cats[c] = cats.get(c, 0.0) + e.self_device_time_total / 1e3 / steps
    ranked = sorted(kernels, key=lambda e: -e.self_device_time_total)
    per_step = [{"kernel": e.key, "ms_per_step": e.self_device_time_total / 1e3 / steps,
                 "calls_per_step": e.count / steps} for e in ranked]
    return {"steps": steps, "kernel_ms_per_step": total, "ms_per_step_by_category": cats,
            "top": [{**k, "kernel": k["kernel"][:120]} for k in per_step[:top]], "kernels": per_step}


def kernel_sources(events, steps: int, top: int = 25, depth: int = 5) -> list[dict]:
    """Which host operators launched the kernels that neither Inductor (``triton_…``) nor cuBLAS nor our attention
    wrote, over the profiled ``steps``: per (kernel, chain) its ``ms_per_step`` and ``calls_per_step``, the ``top``
    by time. ``events`` are the profiler's events; a CPU event's ``kernels`` are those it launched itself (the
    profiler links a kernel to the innermost operator), and the chain is that operator and the ones around it,
    innermost first, repeated names once, at most ``depth`` names: an autograd node, a trainer phase or a module
    call says where in the step the kernel comes from."""
    found: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    for e in events:
        for k in e.kernels:
            if k.name.startswith("triton_") or kernel_category(k.name) in ("matmul", "attention"):
                continue
            chain, up = [], e
            while up is not None and len(chain) < depth:
                if not chain or chain[-1] != up.name:
                    chain.append(up.name)
                up = up.cpu_parent
            entry = found.setdefault((k.name, tuple(chain)), [0.0, 0])
            entry[0] += k.duration
            entry[1] += 1
    ranked = sorted(found.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"kernel": name[:160], "launched_by": list(chain), "ms_per_step": us / 1e3 / steps,
             "calls_per_step": n / steps} for (name, chain), (us, n) in ranked]


def idle_gaps(kernels: list[tuple[float, float]], host_ops: list[tuple[str, float, float]],
              phases: list[tuple[str, float, float]], steps: int, top: int = 12) -> dict:
    """Where the GPU waited, from a profile's intervals (µs): device work ``kernels`` (start, end), the host's
    top-level operators ``host_ops`` (name, start, end; any thread) and the trainer's annotated ``phases``.

    Idle time is the part of [first kernel start, last kernel end] that no kernel covers. Each idle interval is
    split over the phases it overlaps (the rest is "outside the annotated phases") and charged to every host
    operator running during it (operators of different threads may overlap, so these may sum to more than the
    idle time; idle time no operator covers is "no operator (Python, or waiting on the host)"). Per step: divided
    by ``steps``. The ``top`` largest intervals are listed with their phase and operators."""
    if not kernels:
        return {"idle_ms_per_step": None}
    merged: list[list[float]] = []
    for a, b in sorted(kernels):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    gaps = [(merged[i][1], merged[i + 1][0]) for i in range(len(merged) - 1)]
    ops = sorted(host_ops, key=lambda o: o[1])
    starts = [o[1] for o in ops]
    longest = max((o[2] - o[1] for o in ops), default=0.0)

    def clipped(items, a, b):  # (name, start, end) of the items overlapping [a, b], cut to it
        return [(name, max(a, s), min(b, e)) for name, s, e in items if s < b and e > a]

    outside, no_op = "outside the annotated phases", "no operator (Python, or waiting on the host)"
    by_phase: dict[str, float] = {}
    by_op: dict[str, float] = {}
    listed = []
    for a, b in gaps:
        in_phases = clipped(phases, a, b)
        running = clipped(ops[bisect.bisect_left(starts, a - longest):bisect.bisect_left(starts, b)], a, b)
        for name, s, e in in_phases:
            by_phase[name] = by_phase.get(name, 0.0) + e - s
        by_phase[outside] = by_phase.get(outside, 0.0) + max(b - a - sum(e - s for _, s, e in in_phases), 0.0)
        union, end = 0.0, a
        for _, s, e in sorted(running, key=lambda o: o[1]):
            union += max(0.0, e - max(s, end))
            end = max(end, e)
        for name, s, e in running:
            by_op[name] = by_op.get(name, 0.0) + e - s
        by_op[no_op] = by_op.get(no_op, 0.0) + (b - a) - union
        listed.append({"ms": (b - a) / 1e3, "phases": sorted({n for n, _, _ in in_phases}),
                       "ops": [n for n, s, e in sorted(running, key=lambda o: o[1] - o[2])[:4]]})
    per_step = lambda d: {k: v / 1e3 / steps for k, v in sorted(d.items(), key=lambda kv: -kv[1])}  # noqa: E731
    idle = sum(b - a for a, b in gaps)
    return {"window_ms_per_step": (merged[-1][1] - merged[0][0]) / 1e3 / steps,
            "idle_ms_per_step": idle / 1e3 / steps, "idle_intervals_per_step": len(gaps) / steps,
            "idle_ms_per_step_by_phase": per_step(by_phase),
            "idle_ms_per_step_by_host_op": dict(list(per_step(by_op).items())[:top]),
            "largest": sorted(listed, key=lambda g: -g["ms"])[:top]}


def profile_gaps(prof, steps: int) -> dict:
    """:func:`idle_gaps` of a ``torch.profiler`` run: kernels and copies are its CUDA events that are not user
    annotations; host operators are CPU events without a parent operator (a user annotation does not count as
    one); phases are the user annotations other than the profiler's own step markers."""
    events = prof.events()
    annotation = lambda e: getattr(e, "is_user_annotation", False) or e.name.startswith(ANNOTATIONS)  # noqa: E731
    kernels = [(e.time_range.start, e.time_range.end) for e in events
               if e.device_type == torch.autograd.DeviceType.CUDA and not annotation(e)]
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    phases = [(e.name, e.time_range.start, e.time_range.end) for e in host
              if annotation(e) and not e.name.startswith("ProfilerStep")]
    top_level = [(e.name, e.time_range.start, e.time_range.end) for e in host
                 if not annotation(e) and (e.cpu_parent is None or annotation(e.cpu_parent))]
    return idle_gaps(kernels, top_level, phases, steps)


class ProfilerSteps(Callback):
    """Advances a ``torch.profiler`` schedule after every optimizer step, and waits for the device (``drain``) before
    the step that opens the recording. Without that wait a host that runs ahead leaves the last warm-up step's AdamW
    and EMA kernels still running when the window opens, and the profiler counts them as the window's own: profiles
    of fast hosts held 1.5 EMA passes and ~40 AdamW launches per step instead of 1 and 34 (benchmarks/RESULTS.md).
    The recorded steps themselves run as in training: nothing waits inside the window."""

    def __init__(self, prof, drain=None):
        self.prof, self.drain = prof, drain

    def on_step(self, run) -> None:
        from torch.profiler import ProfilerAction
        if self.drain is not None and self.prof.current_action == ProfilerAction.WARMUP:
            self.drain()
        self.prof.step()


class StepClock(Callback):
    """The host's clock at the end of every optimizer step (after the step's health flags are read, the step's one
    synchronisation): consecutive readings are the step times, without the extra synchronisation that reading a
    metrics record costs (``log.every``)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step(self, run) -> None:
        self.ends.append(time.perf_counter())


def worker(config: str, run_dir: str, variant: str, profile_after: str = "0", profile_steps: str = "0") -> None:
    """One trainer run (this process is one rank); writes ``rank{r}.json`` with its peak memory into ``run_dir``,
    and on rank 0 with ``profile_steps`` > 0, ``profile.json`` of the steps after ``profile_after`` + 1 (without
    CUDA the profile lists no kernels)."""
    from full_scale.train import train

    rank = int(os.environ.get("RANK", "0"))
    status, error = "ok", ""
    profile_after, profile_steps = int(profile_after), int(profile_steps)
    clock = StepClock()
    prof, callbacks = None, [clock]
    if profile_steps and rank == 0:
        from torch.profiler import ProfilerActivity, profile, schedule
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        prof = profile(activities=activities,
                       schedule=schedule(wait=profile_after, warmup=1, active=profile_steps, repeat=1))
        prof.start()
        callbacks.append(ProfilerSteps(prof, torch.cuda.synchronize if torch.cuda.is_available() else None))
    try:
        train(load_config(config), run_dir, callbacks=callbacks)
    except torch.OutOfMemoryError as err:
        status, error = "oom", str(err).splitlines()[0]
    if prof is not None:
        prof.stop()
        if status == "ok":
            summary = {**profile_summary(prof, profile_steps), "idle": profile_gaps(prof, profile_steps),
                       "aten_kernel_sources": kernel_sources(prof.events(), profile_steps)}
            (Path(run_dir) / "profile.json").write_text(json.dumps(summary))
    cuda = torch.cuda.is_available()
    record = {"rank": rank, "status": status, "error": error,
              "device_name": torch.cuda.get_device_name() if cuda else "cpu",
              "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
              "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None}
    (Path(run_dir) / f"rank{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        (Path(run_dir) / "step_ends.json").write_text(json.dumps(clock.ends))


# ----------------------------------------------------------------------------------------------------------- driver

def run_config(preset: str, model: str, batch: int, gpus: int, steps: int, variant: str, sets: list[str],
               global_batch: int | None = None, log_every: int = 1) -> Config:
    """The trainer configuration of one run: preset, model name, --set overrides, then the benchmark's own keys
    (the variant's switches, synthetic data, a metrics record every ``log_every`` steps and after the last, no
    Lipschitz probe, no checkpoint)."""
    v = VARIANTS[variant]
    cfg = load_config(preset, [f"model.name={model}", *v.sets, *sets])
    # Loader workers on GPUs; none on the CPU, where forked workers of two gloo ranks hung the smoke test at times.
    return cfg.override({
        "model.attention_backend": v.backend, "train.jvp": v.jvp, "train.compile": v.compile,
        "train.activation_checkpointing": v.checkpointing, "train.ddp_split_graphs": v.ddp_split,
        "data.kind": "synthetic", "data.root": None, "data.num_workers": 2 if torch.cuda.is_available() else 0,
        "train.steps": steps, "train.micro_batch": batch, "train.global_batch": global_batch or batch * gpus,
        "log.every": log_every, "log.lipschitz_every": 0, "log.tensorboard": False,
        "checkpoint.every": 10 ** 9, "checkpoint.final": False})


def stop(proc: subprocess.Popen, grace: float = 45.0) -> None:
    """End a timed-out run. SIGTERM first: torchrun forwards it to its ranks, which run in sessions of their own
    (SIGKILL to torchrun alone leaves them alive, holding the pipes and the next run), and kills them itself after
    its own grace period; then SIGKILL."""
    proc.terminate()
    try:
        proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # a rank still holds the pipes: give up on its output rather than wait


def launch(cfg: Config, gpus: int, variant: str, workdir: Path, timeout: float,
           profile: tuple[int, int] = (0, 0), env: dict[str, str] | None = None) -> tuple[Path, str]:
    """Run the trainer on ``cfg`` in a fresh process (torchrun when gpus > 1), with the variant's environment and
    ``env`` added; returns (run dir, failure text)."""
    env_extra = {**VARIANTS[variant].env, **(env or {})}
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.in.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    run_dir = workdir / "run"
    script = [str(Path(__file__).resolve()), "--worker", str(config), str(run_dir), variant,
                                                     *map(str, profile)]
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
                              if gpus > 1 else []) + script
    full_env = {**os.environ, **SAFE_ENV, **env_extra, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        return run_dir, f"timed out after {timeout:.0f} s"
    proc = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    (workdir / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return run_dir, f"exit {proc.returncode}: " + failure_line(proc.stdout + proc.stderr)
    return run_dir, ""


def failure_line(output: str) -> str:
    """The line of a failed run's output that names its error: the last one with "Error" or "error:", leaving out
    torchrun's own report of a failed child (``ChildFailedError``, ``error_file``) so the rank's exception shows;
    else the last three lines."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    wrapper = ("ChildFailedError", "error_file")
    errors = [line for line in lines
              if ("Error" in line or "error:" in line) and not any(w in line for w in wrapper)]
    return errors[-1] if errors else " | ".join(lines[-3:])


def summarize(run_dir: Path, warmup: int, last: int | None = None) -> dict:
    """Step-time statistics of steps ``warmup`` + 1 … ``last`` from rank 0's :class:`StepClock`, losses from the
    trainer's metrics.jsonl and peak memory from the ranks' records."""
    ranks = [json.loads(p.read_text()) for p in sorted(run_dir.glob("rank*.json"))]
    out = {"status": "ok" if ranks and all(r["status"] == "ok" for r in ranks) else "failed"}
    if ranks:
        worst = max(ranks, key=lambda r: r["peak_allocated_bytes"] or 0)
        out["device_name"] = worst["device_name"]
        if worst["peak_allocated_bytes"] is not None:
            out["peak_allocated_gb"] = max(r["peak_allocated_bytes"] for r in ranks) / 1e9
            out["peak_reserved_gb"] = max(r["peak_reserved_bytes"] for r in ranks) / 1e9
        bad = [r for r in ranks if r["status"] != "ok"]
        if bad:
            out.update(status=bad[0]["status"], error=bad[0]["error"])
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    logged = [r for r in records if "loss" in r]
    if logged:
        out["loss"] = [r["loss"] for r in logged]
        out["loss_steps"] = [r["step"] for r in logged]
    clock = run_dir / "step_ends.json"
    ends = json.loads(clock.read_text()) if clock.exists() else []
    seconds = [b - a for a, b in zip(ends, ends[1:])]  # seconds[i]: step i + 2 (step 1 has no start reading)
    timed = seconds[max(warmup - 1, 0):None if last is None else last - 1]
    if len(timed) >= 3:
        q1, med, q3 = statistics.quantiles(timed, n=4, method="inclusive")
        out.update(steps_timed=len(timed), sec_per_step=statistics.median(timed), sec_per_step_q25=q1,
                   sec_per_step_q75=q3, sec_per_step_min=min(timed))
    elif out["status"] == "ok":
        out.update(status="failed", error=f"only {len(timed)} steps after {warmup} warm-up steps")
    return out


def median_cuda_seconds(fn, warmup: int = 3, reps: int = 10) -> float:
    """Median time of ``fn()`` on the current CUDA stream over ``reps`` calls after ``warmup``, by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure_matmul_tflops() -> float | None:
    """Rate of an 8192³ bf16 matmul on this card (median of CUDA-event timings), TFLOP/s; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    seconds = median_cuda_seconds(lambda: a @ b)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n ** 3 / seconds / 1e12


def measure_copy_gbps() -> float | None:
    """Rate of a device-to-device copy of 1 GiB of bf16 on this card (bytes read + written over the median of
    CUDA-event timings), GB/s: the memory bandwidth a memory-bound kernel can reach; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    src = torch.empty(2 ** 29, device="cuda", dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    seconds = median_cuda_seconds(lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2 ** 30 / seconds / 1e9


# Inductor writes each Triton kernel's metadata, then its definition; with TORCHINDUCTOR_BENCHMARK_KERNEL=1 the
# metadata holds ``kernel_num_gb``, its estimate of the bytes the kernel moves (every input and output buffer once).
_KERNEL_BYTES = re.compile(r"""['"]kernel_num_gb['"]:\s*([0-9.eE+-]+).*?\bdef\s+(triton_\w+)\s*\(""", re.DOTALL)


def inductor_kernel_bytes(cache_dir: Path) -> dict[str, float]:
    """GB per call of each Triton kernel Inductor generated under ``cache_dir`` (its ``TORCHINDUCTOR_CACHE_DIR``),
    by kernel name, from ``kernel_num_gb`` in the generated sources. A name whose sources give different sizes (two
    graphs that number their kernels alike) is left out rather than guessed."""
    found: dict[str, set[float]] = {}
    for path in cache_dir.rglob("*.py"):
        for gb, name in _KERNEL_BYTES.findall(path.read_text(errors="replace")):
            found.setdefault(name, set()).add(float(gb))
    return {name: sizes.pop() for name, sizes in found.items() if len(sizes) == 1}


def bandwidth_summary(kernels: list[dict], gb_per_call: dict[str, float], copy_gbps: float | None,
                      top: int = 15) -> dict:
    """How close Inductor's memory-bound kernels run to the card's copy bandwidth, per step.

    ``kernels`` is the profile's per-kernel list (``ms_per_step``, ``calls_per_step``), ``gb_per_call`` the bytes of
    :func:`inductor_kernel_bytes`. For each kernel with a byte count, GB per step = GB per call × calls, its rate
    GB/s = GB / time, and its floor = GB / ``copy_gbps``, the time it would take at the measured copy rate; ``excess``
    = time − floor is what a perfect kernel on the same bytes would save. Bytes are Inductor's count of buffers
    (a re-read or a cache hit is not seen), so the floor is an estimate, not a bound; the kernels Inductor did not
    write (matmuls, ours, ATen) are outside this summary, whose ``ms_per_step`` says how much it covers."""
    rows = []
    for k in kernels:
        gb = gb_per_call.get(k["kernel"])
        if gb is None:
            continue
        gb_step = gb * k["calls_per_step"]
        floor = gb_step / copy_gbps * 1e3 if copy_gbps else None
        rows.append({"kernel": k["kernel"][:120], "ms_per_step": k["ms_per_step"], "calls_per_step":
                     k["calls_per_step"], "gb_per_step": gb_step, "gb_per_s": gb_step / k["ms_per_step"] * 1e3,
                     "floor_ms": floor, "excess_ms": None if floor is None else k["ms_per_step"] - floor})
    ms = sum(r["ms_per_step"] for r in rows)
    gb = sum(r["gb_per_step"] for r in rows)
    floor = gb / copy_gbps * 1e3 if copy_gbps else None
    return {"copy_gb_per_s": copy_gbps, "kernels": len(rows), "ms_per_step": ms, "gb_per_step": gb,
            "gb_per_s": gb / ms * 1e3 if ms else None, "floor_ms": floor,
            "excess_ms": None if floor is None else ms - floor,
            "largest_excess": sorted(rows, key=lambda r: -(r["excess_ms"] if copy_gbps else r["ms_per_step"]))[:top]}


def bench_one(args, tmp: Path, preset: str, model: str, batch: int, gpus: int, variant: str,
              matmul_tflops: float | None, copy_gbps: float | None = None) -> dict:
    extra = 1 + args.profile if args.profile else 0  # profiled steps come last and are not timed
    cfg = run_config(preset, model, batch, gpus, args.warmup + args.steps + extra, variant, args.set,
                     log_every=args.log_every)
    mcfg = cfg.model.dit()
    guided = cfg.guidance.mode != "none"
    tag = f"{model.replace('/', '_')}-b{batch}-g{gpus}-{variant}"
    t0 = time.perf_counter()
    inductor_cache = tmp / tag / "inductor"  # a fresh cache, so that every kernel is generated with its byte count
    env = {"TORCHINDUCTOR_BENCHMARK_KERNEL": "1", "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)} \
        if args.kernel_bytes else None
    run_dir, failure = launch(cfg, gpus, variant, tmp / tag, args.timeout,
                              (args.warmup + args.steps, args.profile), env)
    row = {"model": model, "resolution": args.resolution, "latent_shape": [mcfg.in_channels, mcfg.input_size,
                                                                             mcfg.input_size],
           "batch_per_gpu": batch, "gpus": gpus, "global_batch": batch * gpus, "variant": variant,
           **VARIANTS[variant]._asdict(), "kernel_bytes": args.kernel_bytes,
           "parameters": None, "wall_s": None}
    row.update(summarize(run_dir, args.warmup, args.warmup + args.steps))
    if (run_dir / "profile.json").exists():
        row["profile"] = json.loads((run_dir / "profile.json").read_text())
        if args.kernel_bytes:
            row["profile"]["bandwidth"] = bandwidth_summary(row["profile"]["kernels"],
                                                            inductor_kernel_bytes(inductor_cache), copy_gbps)
    row["wall_s"] = time.perf_counter() - t0
    if failure and row["status"] == "ok":
        row.update(status="failed", error=failure)
    elif failure:
        row.setdefault("error", failure)
    start = run_dir / "metrics.jsonl"
    if start.exists():
        first = json.loads(start.read_text().splitlines()[0])
        row["parameters"] = first.get("parameters")
    flops = step_flops(mcfg, guided)
    row["model_flops_per_image"] = flops
    if "sec_per_step" in row:
        spt = row["sec_per_step"]
        row["images_per_s"] = batch * gpus / spt
        row["images_per_s_per_gpu"] = batch / spt
        row["tflops_per_gpu"] = flops * batch / spt / 1e12
        peak = peak_tflops(row.get("device_name", ""))
        row["mfu"] = row["tflops_per_gpu"] / peak if peak else None
        row["fraction_of_measured_matmul"] = row["tflops_per_gpu"] / matmul_tflops if matmul_tflops else None
    return row


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_baseline = baseline step time / this step time, same model, resolution, batch and GPU count;
    scaling_efficiency = images/s on g GPUs / (g × images/s on 1 GPU), same variant, model and batch per GPU."""
    key = lambda r: (r["model"], r["resolution"], r["batch_per_gpu"])  # noqa: E731
    for r in rows:
        if "sec_per_step" not in r:
            continue
        base = next((b for b in rows if key(b) == key(r) and b["gpus"] == r["gpus"] and b["variant"] == "baseline"
                     and "sec_per_step" in b), None)
        if base is not None:
            r["speedup_vs_baseline"] = base["sec_per_step"] / r["sec_per_step"]
        one = next((b for b in rows if key(b) == key(r) and b["gpus"] == 1 and b["variant"] == r["variant"]
                    and "sec_per_step" in b), None)
        if one is not None and r["gpus"] > 1:
            r["scaling_efficiency"] = r["images_per_s"] / (r["gpus"] * one["images_per_s"])


def compare_loss_curves(runs_1: list[list[float]], runs_2: list[list[float]], windows: int = 5) -> dict:
    """Window means of per-step losses of two configurations, each run with one or more seeds.

    With K ≥ 2 seeds each, t = (mean₁ − mean₂) / √(s₁²/K + s₂²/K), s² the between-seed variance of a window's mean:
    run-to-run variation is part of the error. With one seed each, the standard error comes from the spread of the
    losses inside the window, which ignores run-to-run variation (a lower bound on the error: a large |t| is then
    not evidence of a difference on its own); ``error`` says which.
    """
    n = min(len(c) for c in runs_1 + runs_2)
    w = max(n // windows, 2)
    k = min(len(runs_1), len(runs_2))
    out = []
    for start in range(0, n - w + 1, w):
        means = [[statistics.fmean(c[start:start + w]) for c in runs] for runs in (runs_1, runs_2)]
        if k >= 2:
            var = [statistics.variance(m) / len(m) for m in means]
        else:
            var = [statistics.variance(runs[0][start:start + w]) / w for runs in (runs_1, runs_2)]
        diff = statistics.fmean(means[0]) - statistics.fmean(means[1])
        se = math.sqrt(sum(var))
        out.append({"steps": [start + 1, start + w], "loss_1": statistics.fmean(means[0]),
                    "loss_2": statistics.fmean(means[1]), "diff": diff, "t": diff / se if se > 0 else None})
    ts = [abs(x["t"]) for x in out if x["t"] is not None]
    return {"windows": out, "max_abs_t": max(ts) if ts else None, "seeds": k,
            "error": "between seeds" if k >= 2 else "within run (ignores run-to-run variation)"}


def loss_check(args, tmp: Path, preset: str) -> dict:
    """Loss curves of 1 GPU at micro-batch 2b and 2 GPUs at b each: the same global batch 2b and initial weights,
    ``--seeds`` seeds each (train.seed 0, 1, …); the noise and data draws differ per rank, so the curves can agree
    only statistically (:func:`compare_loss_curves`)."""
    model, b = args.models[0], args.batches[0]
    curves = {1: [], 2: []}
    for seed in range(args.seeds):
        for gpus in (1, 2):
            cfg = run_config(preset, model, 2 * b // gpus, gpus, args.loss_check, args.variants[-1],
                             [*args.set, f"train.seed={seed}"], global_batch=2 * b)
            run_dir, failure = launch(cfg, gpus, args.variants[-1], tmp / f"loss-s{seed}-g{gpus}", args.timeout)
            summary = summarize(run_dir, 0)
            if failure or "loss" not in summary:
                return {"status": "failed", "error": failure or summary.get("error", "no loss records")}
            curves[gpus].append(summary["loss"])
    return {"status": "ok", "model": model, "global_batch": 2 * b, "variant": args.variants[-1],
            **compare_loss_curves(curves[1], curves[2]), "loss_1gpu": curves[1], "loss_2gpu": curves[2]}


class _OpCensus(TorchDispatchMode):
    """Counts the ATen operators dispatched, those that are not views (views launch no kernel) and those given a
    zero-filled floating-point tensor input (≥ 16 elements)."""

    def __init__(self):
        super().__init__()
        self.ops = self.compute_ops = self.zero_input_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.compute_ops += not func.is_view
        flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs or {})) if isinstance(a, torch.Tensor)]
        if any(a.device.type == "cpu" and a.numel() >= 16 and a.is_floating_point() and not bool(a.any())
               for a in flat):
            self.zero_input_ops += 1
        return func(*args, **(kwargs or {}))


def _census_step(cfg: Config, depth: int, manual_jvp: bool) -> dict:
    """Operator counts of one step of the trainer's own code (``full_scale.train.accumulate_gradients`` and
    ``apply_update``, their phases counted one by one) on a ``depth``-block copy of the configured model at a tiny
    width, on the CPU in float32, every weight random (adaLN-Zero layers too, so no tangent is trivially zero)."""
    import contextlib
    import tempfile

    from full_scale.data import build_dataset
    from full_scale.distributed import Dist
    from full_scale.run import build_run
    from full_scale.train import accumulate_gradients, apply_update, total_norm

    m = cfg.model.dit()
    n = 4
    cfg = cfg.override({"model.depth": depth, "model.hidden_size": 8 * m.num_heads, "model.input_size": 2 * m.patch_size,
                        "model.freq_dim": 16, "model.attention_backend": "reference", "train.compile": False,
                        "train.jvp": "manual" if manual_jvp else "functorch", "train.global_batch": n,
                        "train.micro_batch": n, "data.kind": "synthetic"})
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(cfg, Path(tmp), Dist(), build_dataset(cfg))
    torch.manual_seed(0)
    for p in run.model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    run.target_ema.load_state_dict(run.model.state_dict())
    tc = cfg.train  # foreach AdamW, as PyTorch picks on CUDA (on the CPU it would loop over the parameters)
    run.optimizer = torch.optim.AdamW(run.model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay,
                                      foreach=True)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, m.in_channels, 2 * m.patch_size, 2 * m.patch_size, generator=gen)
    y = torch.randint(0, m.num_classes, (n,), generator=gen)
    counts: dict[str, _OpCensus] = {}

    @contextlib.contextmanager
    def counted(name: str):
        with _OpCensus() as c:
            yield
        counts[name] = c

    accumulate_gradients(run, iter([(0, 1, x0, y)]), phase=counted)
    grad_norm = total_norm([p.grad for p in run.model.parameters()])
    apply_update(run, grad_norm, phase=lambda name: contextlib.nullcontext())  # the first fills AdamW's moments
    apply_update(run, grad_norm, phase=counted)
    return {k: (v.ops, v.compute_ops, v.zero_input_ops) for k, v in counts.items()}


def census(cfg: dict, manual_jvp: bool) -> dict:
    """ATen operators one step dispatches at the configured depth, per phase: counted at depth 1 and 2 and
    extrapolated linearly (every block runs the same code). Each operator is at least one kernel launch on a GPU,
    so ``ops`` × (host time per operator) bounds an eager step's time from below when the GPU is fast enough."""
    one, two = _census_step(cfg, 1, manual_jvp), _census_step(cfg, 2, manual_jvp)
    depth = cfg.model.dit().depth
    out = {}
    keys = ("ops", "compute_ops", "zero_input_ops")
    for phase in one:
        out[phase] = {k: a + (depth - 1) * (b - a) for k, a, b in zip(keys, one[phase], two[phase])}
        out[phase]["compute_ops_per_block"] = two[phase][1] - one[phase][1]
    out["total"] = {k: sum(v[k] for v in out.values()) for k in (*keys, "compute_ops_per_block")}
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | res | batch/GPU | GPUs | variant | step ms (IQR) | img/s | img/s/GPU | peak GB | "
             "TFLOP/s/GPU | MFU | ×baseline | scaling |", "|" + "---|" * 13]
    f = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        if "sec_per_step" not in r:
            lines.append(f"| {r['model']} | {r['resolution']} | {r['batch_per_gpu']} | {r['gpus']} | {r['variant']} |"
                         f" {r['status']}: {r.get('error', '')[:80]} | | | {f(r.get('peak_allocated_gb'), '.1f')} |"
                         " | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['resolution']} | {r['batch_per_gpu']} | {r['gpus']} | {r['variant']} | "
            f"{1e3 * r['sec_per_step']:.1f} ({1e3 * r['sec_per_step_q25']:.1f}–{1e3 * r['sec_per_step_q75']:.1f}) | "
            f"{r['images_per_s']:.1f} | {r['images_per_s_per_gpu']:.1f} | {f(r.get('peak_allocated_gb'), '.1f')} | "
            f"{r['tflops_per_gpu']:.0f} | {f(r.get('mfu'), '.1%')} | {f(r.get('speedup_vs_baseline'), '.2f')} | "
            f"{f(r.get('scaling_efficiency'), '.2f')} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="DiT-B/2,DiT-XL/2", type=lambda s: s.split(","))
    ap.add_argument("--batches", default="32,64", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--gpus", default="1", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--variants", default="baseline,manual-compile", type=lambda s: s.split(","))
    ap.add_argument("--resolution", default=256, type=int, choices=[256, 512])
    ap.add_argument("--steps", default=20, type=int, help="timed steps after the warm-up")
    ap.add_argument("--warmup", default=6, type=int, help="steps left out of the statistics (autotuning, allocator)")
    ap.add_argument("--profile", default=0, type=int, metavar="STEPS",
                    help="after the timed steps, profile STEPS more into the JSON: CUDA kernels by class, top "
                         "kernels, GPU idle time by trainer phase and by the host operator running then, and "
                         "the operators that launched the ATen kernels")
    ap.add_argument("--kernel-bytes", action="store_true",
                    help="with --profile: compile into a fresh Inductor cache with TORCHINDUCTOR_BENCHMARK_KERNEL=1 "
                         "and report how close Inductor's kernels run to the measured copy bandwidth")
    ap.add_argument("--log-every", default=100, type=int, metavar="N",
                    help="the trainer's log.every (its default): a metrics record every N steps and after the last. "
                         "Reading one waits for the GPU to finish all queued work, a second synchronisation in its "
                         "step; step times come from a clock after each step's flag read, not from the records")
    ap.add_argument("--timeout", default=600.0, type=float, help="seconds per run before it is killed")
    ap.add_argument("--seeds", default=3, type=int, help="seeds per configuration for --loss-check")
    ap.add_argument("--loss-check", default=0, type=int, metavar="STEPS",
                    help="instead of timing: loss curves of 1 GPU (batch 2b) vs 2 GPUs (b each) for STEPS steps, "
                         "b the first of --batches, with the first of --models and the last of --variants")
    ap.add_argument("--census", action="store_true",
                    help="instead of timing: count the ATen operators of one step per phase (CPU, seconds)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", default="train_step.json")
    ap.add_argument("--workdir", default=None, help="keep run directories here (default: a temporary folder)")
    ap.add_argument("--commit", default="unknown", help="commit the tree was at (the device copy has no .git)")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; expected some of {sorted(VARIANTS)}")
    if args.kernel_bytes and not args.profile:
        ap.error("--kernel-bytes needs --profile STEPS: the kernel times come from the profile")
    if min(args.batches) < 1 or min(args.gpus) < 1 or args.steps < 3 or args.warmup < 0 or args.seeds < 1 \
            or args.log_every < 1:
        ap.error("--batches, --gpus, --seeds and --log-every must be ≥ 1, --steps ≥ 3, --warmup ≥ 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = f"imagenet-{args.resolution}"
    meta = {"torch": torch.__version__, "commit": args.commit, "argv": sys.argv[1:] if argv is None else argv,
            "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "gpu_count": torch.cuda.device_count(), "matmul_tflops_measured": measure_matmul_tflops(),
            "copy_gb_per_s_measured": measure_copy_gbps(),
            "inductor_env": {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")},
            "peak_tflops_datasheet": PEAK_TFLOPS, "warmup": args.warmup, "steps": args.steps,
            "flop_model": "per image: 11L + 14A with guidance, 10L + 13A without (benchmarks/train_step.py)"}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    result = {"meta": meta, "runs": []}
    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp_name:
        tmp = Path(args.workdir) if args.workdir else Path(tmp_name)
        if args.census:
            result["census"] = {}
            for model in args.models:
                cfg = run_config(preset, model, 1, 1, 1, args.variants[0], args.set)
                result["census"][model] = {mode: census(cfg, mode == "manual") for mode in ("functorch", "manual")}
                for mode, phases in result["census"][model].items():
                    print(f"{model}, train.jvp={mode}:")
                    for phase, c in phases.items():
                        print(f"  {phase:38s} {c['ops']:6d} ops, {c['compute_ops']:6d} not views "
                              f"({c['compute_ops_per_block']} per block), {c['zero_input_ops']} with a zero input")
            Path(args.out).write_text(json.dumps(result, indent=1))
            return result
        if args.loss_check:
            result["loss_check"] = loss_check(args, tmp, preset)
            Path(args.out).write_text(json.dumps(result, indent=1))
            lc = result["loss_check"]
            print(json.dumps({k: v for k, v in lc.items() if k not in ("loss_1gpu", "loss_2gpu")}, indent=1))
            return result
        for gpus in args.gpus:
            for model in args.models:
                for batch in args.batches:
                    for variant in args.variants:
                        row = bench_one(args, tmp, preset, model, batch, gpus, variant, meta["matmul_tflops_measured"],
                                        meta["copy_gb_per_s_measured"])
                        result["runs"].append(row)
                        add_ratios(result["runs"])
                        Path(args.out).write_text(json.dumps(result, indent=1))
                        print(json.dumps({k: v for k, v in row.items() if k not in ("loss", "profile")}),
                              flush=True)
    print(f"device: {meta['device_name']}  torch {meta['torch']}  triton {meta['triton']}  commit {meta['commit']}  "
          f"matmul {meta['matmul_tflops_measured'] or 0:.0f} TFLOP/s")
    print(table(result["runs"]))
    for r in result["runs"]:
        if "profile" in r and "sec_per_step" in r:
            p = r["profile"]
            by_class = sorted(p["ms_per_step_by_category"].items(), key=lambda kv: -kv[1])
            cats = ", ".join(f"{k} {v:.1f}" for k, v in by_class)
            print(f"profile {r['model']} b{r['batch_per_gpu']} g{r['gpus']} {r['variant']}: kernels "
                  f"{p['kernel_ms_per_step']:.1f} ms of a {1e3 * r['sec_per_step']:.1f} ms step ({cats})")
            idle = p.get("idle", {})
            if idle.get("idle_ms_per_step") is not None:
                phases = ", ".join(f"{k} {v:.1f}" for k, v in idle["idle_ms_per_step_by_phase"].items())
                ops = ", ".join(f"{k} {v:.1f}" for k, v in list(idle["idle_ms_per_step_by_host_op"].items())[:6])
                print(f"  GPU idle {idle['idle_ms_per_step']:.1f} ms per step in {idle['idle_intervals_per_step']:.0f} "
                      f"intervals; by phase: {phases}; host operators then: {ops}")
            bw = p.get("bandwidth")
            if bw and bw["kernels"]:
                print(f"  Inductor kernels: {bw['kernels']} with byte counts, {bw['ms_per_step']:.1f} ms, "
                      f"{bw['gb_per_step']:.1f} GB per step, {bw['gb_per_s']:.0f} GB/s against a copy rate of "
                      f"{bw['copy_gb_per_s'] or 0:.0f} GB/s: {bw['excess_ms'] or 0:.1f} ms above the copy-rate floor")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # one trainer process, started by launch()
        worker(*sys.argv[2:])
    else:
        main()
