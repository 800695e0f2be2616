"""A training run's parts and how they are built (docs/THEORY.md §3): the module DDP wraps, the :class:`Run` that the
loop, the callbacks and a checkpoint see, and :func:`build_run` (model, EMAs, compilation, DDP, AdamW, generators).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kernels.ema import runs_on as ema_kernel_runs_on
from tvm_theory.loss import CFGConfig, TVMBatch, student_forward
from tvm_theory.time_samplers import TimeSample, make_time_sampler

from .config import Config
from .distributed import Dist
from .metrics import MetricsLog
from .model import DiT


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
    fused_ema: bool = False  # both EMAs by kernels.ema.lerp_two_ (else two torch._foreach_lerp_)
    update_in_stream: bool = False  # AdamW and the EMAs launched before the step's flags are read (train.py)
    step: int = 0
    epoch: int = 0  # data position of the next micro-batch: epoch, and micro-batches consumed in it
    position: int = 0


def batch_geometry(cfg: Config, world_size: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps) with global = world_size × micro × accumulation."""
    global_batch = cfg.train.global_batch
    micro = cfg.train.micro_batch or global_batch // world_size
    if micro < 1 or global_batch % (world_size * micro):
        raise ValueError(f"train.global_batch: {global_batch} is not a multiple of world_size × micro_batch "
                         f"= {world_size} × {micro}")
    return micro, global_batch // (world_size * micro)


def on_for(setting: bool | str, device: torch.device) -> bool:
    """A true/false/auto switch's value on ``device``: auto means on for CUDA."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def use_fused_ema(cfg: Config, device: torch.device) -> bool:
    if cfg.train.fused_ema is True and not ema_kernel_runs_on(device):
        raise ValueError("train.fused_ema: the Triton EMA kernel needs CUDA (or TRITON_INTERPRET=1 on the CPU); "
                         "use train.fused_ema=auto or false")
    return on_for(cfg.train.fused_ema, device)


def adamw_skips_on_the_device(device: torch.device) -> bool:
    """Whether this torch's fused AdamW leaves a weight untouched when the optimizer's ``found_inf`` is 1 (the input
    ``torch.amp.GradScaler`` sets): tried once on a one-element weight with a NaN gradient, so that a torch that no
    longer reads it makes the trainer read the flags first rather than apply a non-finite step."""
    weight = torch.zeros(1, device=device, requires_grad=True)
    optimizer = torch.optim.AdamW([weight], lr=1.0, fused=True)
    weight.grad = torch.full_like(weight, float("nan"))
    optimizer.found_inf, optimizer.grad_scale = torch.ones((), device=device), None
    optimizer.step()
    return bool((weight.detach() == 0).all())


def use_update_in_stream(cfg: Config, fused_adamw: bool, fused_ema: bool, device: torch.device) -> bool:
    """Whether the update can be launched before the host reads the step's flags: it needs fused AdamW (whose
    ``found_inf`` input skips the step on the device, :func:`adamw_skips_on_the_device`) and the EMA kernel (whose
    ``skip`` flag does)."""
    setting = cfg.train.update_in_stream
    if setting is True and not (fused_adamw and fused_ema):
        raise ValueError("train.update_in_stream: needs train.fused_adamw and train.fused_ema on (the fused kernels "
                         "skip a non-finite step on the device); use train.update_in_stream=auto or false")
    if setting is False or not (fused_adamw and fused_ema):
        return False
    if not adamw_skips_on_the_device(device):
        if setting is True:
            raise RuntimeError("train.update_in_stream: this torch's fused AdamW ignores found_inf, so a non-finite "
                               "step would be applied; use train.update_in_stream=auto or false")
        return False
    return True


def use_compile(cfg: Config, device: torch.device) -> bool:
    if cfg.train.compile is True and device.type != "cuda":
        raise ValueError("train.compile: compiled blocks are for CUDA; on the CPU inductor's vectorized code gave "
                         "wrong gradients for them (torch 2.13, benchmarks/RESULTS.md); use train.compile=false")
    return on_for(cfg.train.compile, device)


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
    model.keep_attention_in_graph(cfg.train.attention_in_graph)
    model.checkpoint_blocks = cfg.train.activation_checkpointing
    target_ema = copy.deepcopy(model).requires_grad_(False).eval()
    eval_ema = copy.deepcopy(model).requires_grad_(False).eval()
    if compiled:  # the student's blocks and the target's (eval_ema only samples, outside the loop)
        # Under DDP, Dynamo's DDPOptimizer would split every compiled block at gradient-bucket boundaries; with
        # per-block graphs DDP's reducer already overlaps the all-reduce at block granularity, and the split made
        # 2-GPU DiT-XL/2 steps 470–620 ms instead of 400 ms (benchmarks/RESULTS.md).
        torch._dynamo.config.optimize_ddp = cfg.train.ddp_split_graphs
        model.compile_blocks(dynamic=False, mode=cfg.train.compile_mode)
        target_ema.compile_blocks(dynamic=False, mode=cfg.train.compile_mode)
    student = StudentStep(model, manual_jvp=cfg.train.jvp == "manual")
    if d.distributed:
        student = DDP(student, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    fused_adamw, fused_ema = on_for(cfg.train.fused_adamw, d.device), use_fused_ema(cfg, d.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas,
                                  weight_decay=cfg.train.weight_decay, fused=fused_adamw or None)
    return Run(cfg=cfg, out=out, dist=d, model=model, target_ema=target_ema, eval_ema=eval_ema, student=student,
               optimizer=optimizer, sampler=make_time_sampler(cfg.train.time_sampler),
               guidance=cfg.guidance.cfg(model.null_class),
               gen=torch.Generator(d.device).manual_seed(cfg.train.seed * 7919 + d.rank), micro=micro, accum=accum,
               bf16=cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and d.device.type == "cuda"),
               log=MetricsLog(out, enabled=d.main, tensorboard=cfg.log.tensorboard),
               fused_ema=fused_ema, update_in_stream=use_update_in_stream(cfg, fused_adamw, fused_ema, d.device))
