"""A run folder: saving a run, resuming it (exactly, or on another number of ranks, or refusing a changed
configuration), starting from other weights, one writer at a time, and never a checkpoint of a diverged model.

The guarantees are listed in :mod:`full_scale.train`'s docstring and tested in tests/test_fs_reliability.py and
tests/test_fs_runs.py.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from tvm_theory.io import RunFolderBusy, RunLock

from . import checkpoint
from .config import Config
from .distributed import Dist, agree
from .run import Run, batch_geometry

# Keys a resume does not compare: train.steps may always change (extending a run is what resume is for), and
# train.init_from says only how a new run starts (the checkpoint's weights supersede it; the run keeps the value it
# started with, so a resume need not repeat --init-from).
RESUME_IGNORES = ("train.steps", "train.init_from")

# Keys a resumed run may change when they are named in ``allow_config_change``: how the run is watched, saved, fed
# and computed, never what it optimizes.
SAFE_CHANGES = ("log.every", "log.lipschitz_every", "log.lipschitz_probes", "log.lipschitz_iters", "log.tensorboard",
                "checkpoint.every", "checkpoint.keep", "checkpoint.snapshot_every", "checkpoint.final", "data.root",
                "data.num_workers", "model.attention_backend", "train.compile", "train.compile_mode",
                "train.attention_in_graph", "train.activation_checkpointing", "train.ddp_split_graphs",
                "train.fused_adamw", "train.fused_ema", "train.update_in_stream", "train.nan_policy",
                "train.max_nan_skips", "sample.nfe", "sample.weight", "sample.per_class", "sample.seed", "eval.vae",
                "eval.batch_size", "eval.every", "eval.grid_classes", "eval.grid_per_class", "eval.fid_reference",
                "eval.fid_samples", "eval.inception")


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
    changes = {k: v for k, v in config_changes(saved, cfg).items() if k not in RESUME_IGNORES}
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
                                rank=run.dist.rank, world_size=run.dist.world_size, meta=meta)
    run.step, run.epoch, run.position = meta["step"], meta["epoch"], meta["position"]
    run.log.resume_at(run.step)
    keep_init_from(run, meta["config"].get("train", {}).get("init_from"))
    if rng is not None:
        set_rng_state(rng, run.gen, run.dist.device)
    else:
        change_world_size(run, meta)
    if changes:
        run.log.log({"event": "config_change", "step": run.step,
                     "changes": {k: {"checkpoint": a, "now": b} for k, (a, b) in changes.items()}})
    return last


def keep_init_from(run: Run, started_from: str | None) -> None:
    """On resume, ``run.cfg`` takes the ``train.init_from`` the run started with (its provenance, saved again with every
    checkpoint and in config.yaml); a different non-empty value given now is ignored, and logged as such."""
    given = run.cfg.train.init_from
    if given == started_from:
        return
    if given:
        run.log.log({"event": "init_from_ignored", "step": run.step, "given": given, "started_from": started_from})
    run.cfg = run.cfg.override({"train.init_from": started_from})


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
        checkpoint.check_model_config(checkpoint.read_meta(path), run.model.cfg.to_dict(), path)  # hashes, once
        for name, module in zip(checkpoint.WEIGHTS, nets):
            checkpoint.load_weights(path, module, name, verify=False)
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
