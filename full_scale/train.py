"""Train a DiT with the TVM objective (docs/THEORY.md §3), on one process or many.

    python -m full_scale.train --preset tiny-digits --out runs/digits [--steps N] [--set section.key=value ...]
    torchrun --nproc_per_node 2 -m full_scale.train --preset tiny-digits --out runs/digits
    torchrun --nproc_per_node 8 -m full_scale.train --preset imagenet-256 --set data.root=/data/in256 --out runs/in256

One step: each rank draws its micro-batches, times (t, s, s′) and noise; the student's f, ∂_s f (one JVP) and
u_θ(x_{s′}) run inside the DDP-wrapped :class:`StudentStep` forward (PyTorch cannot JVP through DDP from outside,
and calling the JVP on ``ddp.module`` would skip gradient synchronisation); the targets come from the target EMA
(rate 0.99, both of its velocities in one call); AdamW steps on the averaged gradient; both EMAs follow. DDP uses
NCCL on GPUs and gloo on the CPU; bf16 autocast on GPUs. ∂_s F comes from the DiT's hand-written tangent
(``train.jvp: manual``; ``functorch`` uses ``torch.func.jvp``), and on CUDA every block of the student and the target
is compiled (``train.compile``); ``train.activation_checkpointing`` trades a forward for memory. The run directory
holds ``config.yaml`` (resolved), ``metrics.jsonl`` and ``checkpoints/``; a run restarted with the same ``--out``
resumes exactly from its latest checkpoint. SIGTERM saves a checkpoint and exits.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from tvm_theory.ema import ema_update
from tvm_theory.loss import CFGConfig, StudentOutput, TVMBatch, prepare_batch, student_forward, tvm_loss
from tvm_theory.path import interpolate
from tvm_theory.time_samplers import make_time_sampler

from . import checkpoint
from .config import apply_overrides, load_preset, model_config
from .metrics import MetricsLog, lipschitz_probe
from .models import DiT


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


def guidance_config(cfg: dict, null_class: int) -> CFGConfig | None:
    """The ``guidance`` section as a :class:`CFGConfig` (``mode: none`` trains unconditionally)."""
    g = cfg["guidance"]
    if g["mode"] == "none":
        return None
    if g["mode"] == "constant":
        return CFGConfig(null_class=null_class, weight=float(g["weight"]), label_dropout=float(g["label_dropout"]))
    if g["mode"] == "random":
        return CFGConfig(null_class=null_class, weight_range=tuple(map(float, g["weight_range"])),
                         label_dropout=float(g["label_dropout"]))
    raise ValueError(f"guidance.mode: expected none, constant or random, got {g['mode']!r}")


def build_dataset(cfg: dict, rank: int, world_size: int):
    """The training set of ``data.kind``: ``digits`` or ``patches`` (in memory) or ``latents``
    (``full_scale.data.LatentDataset``)."""
    seed = int(cfg["train"]["seed"])
    if cfg["data"]["kind"] == "digits":
        from .digits import DigitsDataset
        return DigitsDataset(rank=rank, world_size=world_size, seed=seed)
    if cfg["data"]["kind"] == "patches":
        from .patches import PatchesDataset
        return PatchesDataset(rank=rank, world_size=world_size, seed=seed)
    if cfg["data"]["kind"] == "latents":
        if not cfg["data"]["root"]:
            raise ValueError("data.root: the latents preset needs a prepared latent directory "
                             "(python -m full_scale.data prepare ...); pass --set data.root=DIR")
        from .data import LatentDataset
        return LatentDataset(cfg["data"]["root"], rank=rank, world_size=world_size, seed=seed)
    raise ValueError(f"data.kind: expected digits, patches or latents, got {cfg['data']['kind']!r}")


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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m full_scale.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny-digits", help="a preset name in full_scale/configs or a .yaml path")
    p.add_argument("--out", required=True, help="run directory (resumed if it holds checkpoints)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides train.steps)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> dict:
    cfg = apply_overrides(load_preset(args.preset), args.set)
    if args.steps is not None:
        if args.steps < 0:
            raise ValueError(f"--steps: expected a non-negative number of steps, got {args.steps}")
        cfg["train"]["steps"] = args.steps
    return cfg


def main(argv=None) -> Path:
    args = parse_args(argv)
    cfg = resolve_config(args)
    tc, out = cfg["train"], Path(args.out)

    # --- distributed set-up: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; a plain `python -m` is one process.
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world_size = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if distributed else (0, 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    barrier = dist.barrier if distributed else (lambda: None)
    main_proc = rank == 0
    use_bf16 = tc["precision"] == "bf16" or (tc["precision"] == "auto" and device.type == "cuda")
    if tc["precision"] not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.precision: expected auto, bf16 or fp32, got {tc['precision']!r}")
    if tc["nan_policy"] not in ("skip", "stop"):
        raise ValueError(f"train.nan_policy: expected skip or stop, got {tc['nan_policy']!r}")
    jvp_mode, compile_mode = tc.get("jvp", "manual"), tc.get("compile", "auto")
    if jvp_mode not in ("manual", "functorch"):
        raise ValueError(f"train.jvp: expected manual or functorch, got {jvp_mode!r}")
    if compile_mode not in ("auto", True, False):
        raise ValueError(f"train.compile: expected auto, true or false, got {compile_mode!r}")
    use_compile = compile_mode is True or (compile_mode == "auto" and device.type == "cuda")
    if use_compile and device.type != "cuda":
        raise ValueError("train.compile: compiled blocks are for CUDA; on the CPU inductor's vectorized code gave "
                         "wrong gradients for them (torch 2.13, benchmarks/RESULTS.md); use train.compile=false")

    # --- batch geometry: global = world_size × micro × accumulation.
    global_batch = int(tc["global_batch"])
    micro = int(tc["micro_batch"] or global_batch // world_size)
    if global_batch % (world_size * micro):
        raise ValueError(f"train.global_batch: {global_batch} is not a multiple of world_size × micro_batch "
                         f"= {world_size} × {micro}")
    accum = global_batch // (world_size * micro)

    # --- data, model, EMAs, optimizer.
    dataset = build_dataset(cfg, rank, world_size)
    mcfg = model_config(cfg)
    if jvp_mode == "functorch" and not mcfg.rms_norm:
        raise ValueError("train.jvp: functorch with model.rms_norm=false would train on a wrong gradient (PyTorch's "
                         "LayerNorm JVP has a wrong reverse mode, pytorch/pytorch#196700); use train.jvp=manual")
    if tuple(dataset.latent_shape) != (mcfg.in_channels, mcfg.input_size, mcfg.input_size):
        raise ValueError(f"model: input ({mcfg.in_channels}, {mcfg.input_size}, {mcfg.input_size}) does not match "
                         f"the data's {tuple(dataset.latent_shape)}")
    if dataset.num_classes != mcfg.num_classes:
        raise ValueError(f"model.num_classes: {mcfg.num_classes}, but the data has {dataset.num_classes} classes")
    torch.manual_seed(int(tc["seed"]))  # identical initial weights on every rank
    with torch.device(device):
        model = DiT(mcfg)
    model.set_attention_backend(tc["attention_backend"])
    model.checkpoint_blocks = bool(tc.get("activation_checkpointing", False))
    target_ema = copy.deepcopy(model).requires_grad_(False).eval()
    eval_ema = copy.deepcopy(model).requires_grad_(False).eval()
    if use_compile:  # the student's blocks and the target's (eval_ema only samples, outside the loop)
        # Under DDP, Dynamo's DDPOptimizer would split every compiled block at gradient-bucket boundaries; with
        # per-block graphs DDP's reducer already overlaps the all-reduce at block granularity, and the split made
        # 2-GPU DiT-XL/2 steps 470–620 ms instead of 400 ms (benchmarks/RESULTS.md).
        torch._dynamo.config.optimize_ddp = bool(tc.get("ddp_split_graphs", False))
        model.compile_blocks(dynamic=False)
        target_ema.compile_blocks(dynamic=False)
    student = StudentStep(model, manual_jvp=jvp_mode == "manual")
    ddp = DDP(student, device_ids=[device.index] if device.type == "cuda" else None) if distributed else student
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(tc["lr"]), betas=tuple(tc["betas"]),
                                  weight_decay=float(tc["weight_decay"]))
    sampler = make_time_sampler(tc["time_sampler"])
    guidance = guidance_config(cfg, model.null_class)
    gen = torch.Generator(device).manual_seed(int(tc["seed"]) * 7919 + rank)  # this rank's noise, times, dropout

    # --- resume from the latest checkpoint of the run directory, if any.
    step, epoch, position = 0, 0, 0
    log = MetricsLog(out, enabled=main_proc, tensorboard=bool(cfg["log"]["tensorboard"]))
    last = checkpoint.latest(out)
    if last is not None:
        meta, rng = checkpoint.load(last, model=model, target_ema=target_ema, eval_ema=eval_ema,
                                    optimizer=optimizer, model_config=mcfg.to_dict(), rank=rank,
                                    world_size=world_size)
        step, epoch, position = meta["step"], meta["epoch"], meta["position"]
        set_rng_state(rng, gen, device)
        log.resume_at(step)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        log.log({"event": "start", "step": step, "world_size": world_size, "device": str(device),
                 "micro_batch": micro, "accumulation": accum, "bf16": use_bf16, "jvp": jvp_mode,
                 "compile": use_compile, "activation_checkpointing": model.checkpoint_blocks,
                 "parameters": sum(p.numel() for p in model.parameters()), "resumed_from": str(last or "")})
    data = micro_batches(dataset, micro, epoch, position, int(cfg["data"]["num_workers"]))

    def save() -> Path:
        return checkpoint.save(out, step, model=model, target_ema=target_ema, eval_ema=eval_ema,
                               optimizer=optimizer, rng=rng_state(gen, device),
                               meta={"epoch": epoch, "position": position, "model_config": mcfg.to_dict()},
                               keep=int(cfg["checkpoint"]["keep"]), rank=rank, world_size=world_size,
                               barrier=barrier)

    # --- a fixed probe batch for the Lipschitz estimate of x ↦ u_θ(x, s): path points at s on a grid.
    lip_every, probe = int(cfg["log"]["lipschitz_every"]), None
    if main_proc and lip_every > 0:
        n_probe = int(cfg["log"]["lipschitz_probes"])
        pg = torch.Generator().manual_seed(12345)
        px, py = next(iter(torch.utils.data.DataLoader(dataset, batch_size=n_probe)))
        ps = torch.linspace(0.05, 0.95, len(px))  # the data may hold fewer than n_probe items
        probe = (interpolate(px, torch.randn(px.shape, generator=pg), ps).to(device), ps.to(device),
                 py.to(device) if guidance is not None else None)

    stop_requested = False

    def on_sigterm(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)

    # --- the loop.
    total = int(tc["steps"])
    bar = tqdm(total=total, initial=step, disable=not main_proc, dynamic_ncols=True, file=sys.stderr)
    acc = torch.zeros(5, dtype=torch.float64, device=device)  # sums of loss, terminal, fm, dfds², count
    t_log, steps_since_log, nan_run = time.perf_counter(), 0, 0
    while step < total:
        optimizer.zero_grad(set_to_none=True)
        times_seen, bad_seen = [], []
        step_acc = torch.zeros_like(acc)
        for k in range(accum):
            epoch, position, x0, y = next(data)
            x0, y = x0.to(device, non_blocking=True), y.to(device, non_blocking=True)
            times = sampler(micro, generator=gen, device=device, dtype=x0.dtype)
            batch = prepare_batch(x0, times, y=y if guidance is not None else None, cfg=guidance, generator=gen)
            sync = k == accum - 1 or not distributed
            with (torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16),
                  ddp.no_sync() if not sync else contextlib.nullcontext()):
                f, dfds, u_fm = ddp(batch)
                terms = tvm_loss(batch, StudentOutput(f=f, dfds=dfds, u_fm=u_fm), target_ema,
                                 null_class=model.null_class)
                (terms.loss / accum).backward()
            per_example = terms.terminal_per_example + terms.fm_per_example
            times_seen.append(torch.stack([batch.t, batch.s]).detach())
            bad_seen.append(~torch.isfinite(per_example))
            step_acc += torch.stack([per_example.sum(), terms.terminal_per_example.sum(), terms.fm_per_example.sum(),
                                dfds.detach().pow(2).mean(dim=tuple(range(1, dfds.ndim))).sum(),
                                torch.tensor(float(micro), device=device)]).double()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)
        # Flags agreed by all ranks: [a non-finite loss anywhere, SIGTERM anywhere]. Gradients are already averaged,
        # so a non-finite gradient shows on every rank.
        bad = torch.cat(bad_seen)
        flags = torch.tensor([float(bad.any()), float(stop_requested)], device=device)
        if distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite = bool(flags[0]) or not bool(torch.isfinite(grad_norm))
        step += 1
        if nonfinite:
            nan_run += 1
            ts = torch.cat(times_seen, dim=1)  # (2, n) this rank's (t, s)
            if distributed:
                gathered = [torch.empty_like(ts) for _ in range(world_size)]
                flags_all = [torch.empty_like(bad) for _ in range(world_size)]
                dist.all_gather(gathered, ts)
                dist.all_gather(flags_all, bad)
                ts, bad = torch.cat(gathered, dim=1), torch.cat(flags_all)
            culprits = ts[:, bad] if bool(bad.any()) else ts  # gradient-only failure: report the whole batch
            log.log({"event": "nonfinite", "step": step, "policy": tc["nan_policy"],
                     "grad_norm": float(grad_norm), "n_nonfinite_examples": int(bad.sum()),
                     "t": culprits[0].tolist(), "s": culprits[1].tolist()})
            if tc["nan_policy"] == "stop" or nan_run > int(tc["max_nan_skips"]):
                signal.signal(signal.SIGTERM, previous_handler)
                raise FloatingPointError(f"non-finite loss or gradient at step {step} (policy "
                                         f"{tc['nan_policy']}, {nan_run} in a row); see {out / 'metrics.jsonl'}")
            optimizer.zero_grad(set_to_none=True)
        else:
            nan_run = 0
            acc += step_acc
            if tc["grad_clip"] is not None:
                torch.nn.utils.clip_grads_with_norm_(model.parameters(), float(tc["grad_clip"]), grad_norm)
            optimizer.step()
            ema_update(target_ema, model, float(tc["target_ema"]))
            ema_update(eval_ema, model, float(tc["eval_ema"]))
        bar.update(1)
        steps_since_log += 1

        if step % int(cfg["log"]["every"]) == 0 or step == total:
            if distributed:
                dist.all_reduce(acc)
            now = time.perf_counter()
            if acc[4] > 0:
                record = {"step": step, "loss": float(acc[0] / acc[4]), "terminal": float(acc[1] / acc[4]),
                          "fm": float(acc[2] / acc[4]), "dfds_ms": float(acc[3] / acc[4]),
                          "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"], "epoch": epoch,
                          "images_per_s": global_batch * steps_since_log / (now - t_log),
                          "sec_per_step": (now - t_log) / steps_since_log}
                if probe is not None and (step % lip_every == 0 or step == total):
                    model.eval()
                    w = guidance.weight if guidance is not None and guidance.weight_range is None else None
                    with model.attention_backend("reference"):
                        record.update(lipschitz_probe(model, probe[0], probe[1], w=w, y=probe[2],
                                                      n_iter=int(cfg["log"]["lipschitz_iters"]),
                                                      generator=torch.Generator(device).manual_seed(0)))
                    model.train()
                log.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            acc.zero_()
            t_log, steps_since_log = now, 0

        if bool(flags[1]):
            path = save()
            log.log({"event": "sigterm", "step": step, "checkpoint": str(path)})
            break
        if step % int(cfg["checkpoint"]["every"]) == 0 or step == total:
            save()
    bar.close()
    log.close()
    signal.signal(signal.SIGTERM, previous_handler)
    if distributed:
        dist.destroy_process_group()
    return out


if __name__ == "__main__":
    main()
