"""Train TVM on a low-dimensional test bed on CPU (docs/THEORY.md §3), with exact resume.

One flat loop, readable top to bottom: build the test bed, the model, the target EMA (rate ``ema``, the paper's
0.99) and an evaluation EMA (rate ``eval_ema``, with warm-up min(rate, (1 + n)/(10 + n))); then per step draw
x0 ~ p0 and (t, s, s′) from the time sampler (gap* by default), compute the shared loss
``tvm_theory.loss.tvm_step_loss`` (or, with ``objective``, a baseline of ``tvm_theory.baselines.OBJECTIVES`` with
its own time sampler), take an AdamW step, update both EMAs and log one JSON line.

Every random draw of training comes from one ``torch.Generator`` seeded with ``seed``; its state, the weights, both
EMAs, the optimizer state and the hook's results are saved in an atomic checkpoint (weights as safetensors, the rest
as JSON, both hashed: the format of ``tvm_theory.io``), so a run resumed from a checkpoint continues bit for bit as
if never interrupted.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from tvm_theory.analysis.testbeds import make_testbed
from tvm_theory.baselines import OBJECTIVES, make_objective
from tvm_theory.ema import ema_update
from tvm_theory.io import CheckpointError, atomic_write_text, latest_checkpoint, read_checkpoint_meta, write_checkpoint

from .models import MLP, AffineModel

MODELS = ("mlp", "mlp-sn", "affine")


@dataclass
class TrainConfig:
    """Every knob of a toy run. ``model``: "mlp" (unconstrained), "mlp-sn" (spectral normalization with
    ``lipschitz_cap``) or "affine" (Gaussian-preserving). lr follows a cosine from ``lr`` to ``lr * lr_final``
    after ``warmup`` linear steps."""

    testbed: str = "ring8"
    steps: int = 3000
    seed: int = 0
    model: str = "mlp"
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 16
    max_freq: float = 30.0
    lipschitz_cap: float = 4.0
    batch: int = 512
    lr: float = 2e-3
    lr_final: float = 0.05
    warmup: int = 100
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.99
    eval_ema: float = 0.999
    time_sampler: str = "gap"
    objective: str = "tvm"  # a key of tvm_theory.baselines.OBJECTIVES (tvm, meanflow, fm)
    log_every: int = 25

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {self.model!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        for name in ("steps", "batch", "hidden", "depth", "emb_dim", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup: expected a non-negative int, got {self.warmup!r}")
        for name in ("grad_clip", "lipschitz_cap", "max_freq"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        for name in ("ema", "eval_ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected a rate in [0, 1), got {getattr(self, name)}")
        if not (self.lr > 0 and 0 < self.lr_final <= 1):
            raise ValueError(f"lr, lr_final: expected lr > 0 and 0 < lr_final ≤ 1, got {self.lr}, {self.lr_final}")
        self.betas = tuple(self.betas)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}")
        return cls(**d)


def build_model(cfg: TrainConfig, dim: int) -> nn.Module:
    """The network F_θ named by ``cfg.model`` for data dimension ``dim``."""
    if cfg.model == "affine":
        return AffineModel(dim, hidden=cfg.hidden, depth=min(cfg.depth, 2), emb_dim=cfg.emb_dim,
                           max_freq=cfg.max_freq)
    cap = cfg.lipschitz_cap if cfg.model == "mlp-sn" else None
    return MLP(dim, cfg.hidden, cfg.depth, cfg.emb_dim, cfg.max_freq, lipschitz_cap=cap)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up for ``warmup`` steps, then a cosine from lr to lr·lr_final at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


@dataclass
class TrainState:
    """What a checkpoint restores: the three networks, the optimizer, the generator, the step and the hook's
    per-checkpoint results (``entries``)."""

    cfg: TrainConfig
    model: nn.Module
    target: nn.Module
    eval_model: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    step: int = 0
    entries: list = field(default_factory=list)


def init_state(cfg: TrainConfig, dim: int) -> TrainState:
    torch.manual_seed(cfg.seed)  # initialization only; training draws use ``gen``
    model = build_model(cfg, dim)
    target, eval_model = copy.deepcopy(model), copy.deepcopy(model)
    for m in (target, eval_model):
        m.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    return TrainState(cfg, model, target, eval_model, opt, gen)


# ---- checkpoints ----------------------------------------------------------------------------------------------
FORMAT = "tvm-toy-checkpoint-v1"


def checkpoint_root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def has_checkpoint(out: Path) -> bool:
    return latest_checkpoint(checkpoint_root(out)) is not None


def save_checkpoint(state: TrainState, out: Path) -> Path:
    """Write ``out/checkpoints/step_N/`` atomically (``tvm_theory.io``: ``weights.safetensors`` with the three
    networks, the optimizer's tensors and the generator state; ``meta.json`` with the config, the optimizer's
    param groups, the hook's entries and every file's SHA-256) and delete older checkpoints. Returns its path."""
    tensors = {}
    for prefix, m in (("model", state.model), ("target", state.target), ("eval", state.eval_model)):
        tensors.update({f"{prefix}.{k}": v.detach().contiguous() for k, v in m.state_dict().items()})
    opt_sd = state.opt.state_dict()
    for idx, st in opt_sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v).contiguous()
    tensors["rng.train"] = state.gen.get_state()
    meta = {"config": asdict(state.cfg), "opt_param_groups": opt_sd["param_groups"],
            "opt_state_keys": {str(i): sorted(st) for i, st in opt_sd["state"].items()}, "entries": state.entries}
    return write_checkpoint(checkpoint_root(out), state.step,
                            {"weights.safetensors": lambda path: save_file(tensors, str(path))},
                            fmt=FORMAT, meta=meta, keep=1)


def load_checkpoint(out: Path, dim: int) -> TrainState:
    """Rebuild the :class:`TrainState` of the latest checkpoint in ``out`` (hashes verified first)."""
    path = latest_checkpoint(checkpoint_root(out))
    if path is None:
        raise CheckpointError(f"{checkpoint_root(out)}: no checkpoint to resume from")
    meta = read_checkpoint_meta(path, FORMAT)
    cfg = TrainConfig.from_dict(meta["config"])
    state = init_state(cfg, dim)
    tensors = load_file(str(path / "weights.safetensors"))
    for prefix, m in (("model", state.model), ("target", state.target), ("eval", state.eval_model)):
        m.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
    opt_state = {int(i): {k: tensors[f"opt.{i}.{k}"] for k in keys} for i, keys in meta["opt_state_keys"].items()}
    state.opt.load_state_dict({"state": opt_state, "param_groups": meta["opt_param_groups"]})
    state.gen.set_state(tensors["rng.train"])
    state.step, state.entries = meta["step"], meta["entries"]
    return state


# ---- the loop -------------------------------------------------------------------------------------------------
Hook = Callable[[int, nn.Module, nn.Module], dict]


def train(cfg: TrainConfig, out: str | Path, *, hook_steps=(), hook: Hook | None = None, resume: bool = True,
          stop_after: int | None = None, progress: bool = True) -> TrainState:
    """Run (or resume) training; at each step in ``hook_steps`` (0 = before the first update) call
    ``hook(step, eval_model, student)``, append its result to ``state.entries`` and checkpoint.

    Args:
        cfg: the run's configuration; on resume it must equal the checkpoint's.
        out: run directory (checkpoint, ``train.jsonl``).
        resume: continue from the checkpoint in ``out/checkpoints/`` if there is one.
        stop_after: stop (after checkpointing) once this step is reached — simulates an interrupted run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bed = make_testbed(cfg.testbed)
    step_loss, sampler = make_objective(cfg.objective, cfg.time_sampler)
    hook_steps = sorted(set(int(s) for s in hook_steps))
    if hook_steps and (hook_steps[0] < 0 or hook_steps[-1] > cfg.steps):
        raise ValueError(f"hook_steps: expected steps in [0, {cfg.steps}], got {hook_steps}")
    log_path = out / "train.jsonl"
    if resume and has_checkpoint(out):
        state = load_checkpoint(out, bed.dim)
        if asdict(state.cfg) != asdict(cfg):
            diff = {k: (v, asdict(cfg)[k]) for k, v in asdict(state.cfg).items() if asdict(cfg)[k] != v}
            raise ValueError(f"resume: the checkpoint in {out} was made with a different config: {diff}")
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        atomic_write_text(log_path, "".join(l + "\n" for l in lines if json.loads(l)["step"] <= state.step))
    else:
        state = init_state(cfg, bed.dim)
        log_path.write_text("")

    bar = tqdm(total=cfg.steps, initial=state.step, disable=not progress, desc=f"train {cfg.testbed}")

    def run_hook():
        if hook is not None and state.step in hook_steps and all(e.get("step") != state.step for e in state.entries):
            bar.set_description(f"hook at step {state.step} ({cfg.testbed})")  # the bar says what runs now
            state.entries.append({"step": state.step, **hook(state.step, state.eval_model, state.model)})
            save_checkpoint(state, out)
            bar.set_description(f"train {cfg.testbed}")

    run_hook()
    t0 = time.perf_counter()
    with log_path.open("a") as log:
        while state.step < cfg.steps and (stop_after is None or state.step < stop_after):
            for g in state.opt.param_groups:
                g["lr"] = lr_at(cfg, state.step)
            x0 = bed.sample(cfg.batch, state.gen).to(torch.float32)
            times = sampler(cfg.batch, generator=state.gen)
            state.model.train()
            out_loss = step_loss(state.model, state.target, x0, times, generator=state.gen)
            state.opt.zero_grad(set_to_none=True)
            out_loss.loss.backward()
            gnorm = float(nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip))
            loss_value = float(out_loss.loss.detach())
            if not (math.isfinite(loss_value) and math.isfinite(gnorm)):
                healthy = latest_checkpoint(checkpoint_root(out))
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {state.step + 1} (loss {loss_value}, gradient "
                    f"norm {gnorm}); nothing was saved after it, the last healthy checkpoint is "
                    f"{healthy or 'none (the run diverged before its first checkpoint)'}: lower lr and rerun")
            state.opt.step()
            ema_update(state.target, state.model, cfg.ema)
            n = state.step + 1
            ema_update(state.eval_model, state.model, min(cfg.eval_ema, (1 + n) / (10 + n)))
            state.step = n
            bar.update(1)
            if n % cfg.log_every == 0 or n == cfg.steps:
                rec = {"step": n, "loss": float(out_loss.loss.detach()), "terminal": float(out_loss.terminal),
                       "fm": float(out_loss.fm), "lr": state.opt.param_groups[0]["lr"], "grad_norm": gnorm,
                       "wall_s": round(time.perf_counter() - t0, 3)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
            run_hook()
    bar.close()
    save_checkpoint(state, out)
    return state
