"""Atomic, verified training checkpoints: ``{run}/checkpoints/step_{NNNNNNNN}/``.

A checkpoint directory holds

* ``model.safetensors``, ``target_ema.safetensors``, ``eval_ema.safetensors`` — weights and buffers;
* ``optimizer.pt`` — the optimizer's state dict (tensors and numbers only, loaded with ``weights_only=True``);
* ``rng_rank{r}.pt`` — each rank's random-number state (tensors only);
* ``meta.json`` — step, data position, world size, the model configuration and the SHA-256 of every file above.

Writing is atomic: everything goes into ``step_N.tmp`` and a single ``os.replace`` publishes it, so an interrupted
write leaves the previous checkpoints intact and loadable (a leftover ``*.tmp`` is ignored and cleared by the next
save). Loading verifies every hash and loads weights strictly; any corruption or mismatch raises
:class:`CheckpointError` naming the file and the problem — never a partial load. The directory format (hashes,
atomic publish, rotation) is ``tvm_theory.io``'s, shared with the toy trainer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tvm_theory.io import (PREFIX, CheckpointError, latest_checkpoint, publish_checkpoint, read_checkpoint_meta,
                           start_checkpoint)
from tvm_theory.io import list_checkpoints as _list

FORMAT = "tvm-checkpoint-v1"
WEIGHTS = ("model", "target_ema", "eval_ema")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Published checkpoints of a run, oldest first (``*.tmp`` directories are not checkpoints)."""
    return _list(checkpoint_dir(run_dir))


def latest(run_dir: str | os.PathLike) -> Path | None:
    return latest_checkpoint(checkpoint_dir(run_dir))


def _state(module: nn.Module) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save(run_dir: str | os.PathLike, step: int, *, model: nn.Module, target_ema: nn.Module, eval_ema: nn.Module,
         optimizer: torch.optim.Optimizer, rng: dict, meta: dict, keep: int, snapshot_every: int = 0, rank: int = 0,
         world_size: int = 1,
         barrier: Callable[[], None] = lambda: None) -> Path:
    """Write the checkpoint of ``step`` atomically and keep the last ``keep`` checkpoints, and every snapshot (a step
    that is a multiple of ``snapshot_every`` > 0).

    Every rank calls this (collectively): each writes its own ``rng`` state; rank 0 writes the rest, the meta data
    with hashes, and publishes the directory with ``os.replace``. ``meta`` is merged into meta.json.
    """
    if keep < 1:
        raise ValueError(f"keep: expected at least 1 checkpoint to keep, got {keep}")
    tmp = checkpoint_dir(run_dir) / f"{PREFIX}{step:08d}.tmp"
    if rank == 0:
        start_checkpoint(checkpoint_dir(run_dir), step)
    barrier()
    torch.save({k: v.cpu() for k, v in rng.items()}, tmp / f"rng_rank{rank}.pt")
    barrier()
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if rank == 0:
        for name, module in zip(WEIGHTS, (model, target_ema, eval_ema)):
            save_file(_state(module), str(tmp / f"{name}.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        publish_checkpoint(tmp, fmt=FORMAT, step=step, meta={**meta, "world_size": world_size}, keep=keep,
                           snapshot_every=snapshot_every)
    barrier()
    return final


def read_meta(path: str | os.PathLike) -> dict:
    """meta.json of a checkpoint after checking the format and every file's SHA-256."""
    return read_checkpoint_meta(path, FORMAT)


def check_model_config(meta: dict, model_config: dict, path) -> None:
    """Raise :class:`CheckpointError` listing every architecture field that differs from the checkpoint's."""
    saved = meta.get("model_config", {})
    diff = {k: (saved.get(k), model_config.get(k)) for k in set(saved) | set(model_config)
            if saved.get(k) != model_config.get(k)}
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"{path}: the model configuration differs from this run's ({lines})")


def load_weights(path: str | os.PathLike, module: nn.Module, which: str = "eval_ema", *, verify: bool = True) -> dict:
    """Load one set of weights (``model``, ``target_ema`` or ``eval_ema``) strictly into ``module``; returns meta."""
    if which not in WEIGHTS:
        raise ValueError(f"which: expected one of {WEIGHTS}, got {which!r}")
    path = Path(path)
    meta = read_meta(path) if verify else json.loads((path / "meta.json").read_text())
    file = path / f"{which}.safetensors"
    try:
        state = load_file(str(file))
        module.load_state_dict(state, strict=True)
    except Exception as err:
        raise CheckpointError(f"{file}: cannot be loaded into this model ({err})") from err
    return meta


def load(path: str | os.PathLike, *, model: nn.Module, target_ema: nn.Module, eval_ema: nn.Module,
         optimizer: torch.optim.Optimizer, model_config: dict, rank: int = 0, world_size: int = 1,
         meta: dict | None = None) -> tuple[dict, dict | None]:
    """Restore a full training state; returns (meta, this rank's rng state dict, or None when the checkpoint was
    written by a different number of ranks: the random streams cannot carry over, the caller seeds new ones).
    ``meta``: the checkpoint's :func:`read_meta` when the caller has already verified it (every file is hashed
    once, not twice)."""
    path = Path(path)
    meta = read_meta(path) if meta is None else meta
    check_model_config(meta, model_config, path)
    for name, module in zip(WEIGHTS, (model, target_ema, eval_ema)):
        load_weights(path, module, name, verify=False)
    try:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
        rng = (torch.load(path / f"rng_rank{rank}.pt", weights_only=True, map_location="cpu")
               if meta["world_size"] == world_size else None)
    except Exception as err:
        raise CheckpointError(f"{path}: optimizer or RNG state cannot be restored ({err})") from err
    return meta, rng
