"""Few-step class-conditional sampling from a trained run (docs/THEORY.md §3), from the evaluation EMA by default.

    python -m full_scale.sample --run runs/digits [--nfe 1 2 4] [--weight 1.5] [--per-class 10] [--out DIR]
    torchrun --nproc_per_node 8 -m full_scale.sample --run runs/in256 --nfe 1 2 --per-class 50 --vae VAE \
        --decode-dtype bf16          # each rank samples a share; rank 0 writes (the same numbers as one process)

For each N in ``--nfe``: x starts as N(0, I) noise (the same noise for every N), and N jumps on the grid
linspace(1, 0, N + 1) with x ← x + (t_{k+1} − t_k) · w · F_θ(x, t_k, t_{k+1}, c, 1/w) give the samples. Writes
``samples_{N}step.npz`` (``samples`` float32 (n, C, H, W), ``labels``, ``n_steps``, ``weight``) and, for pixel data or
with ``--vae`` for latents, a PNG grid ``samples_{N}step.png`` with one row per class.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from tvm_theory.cli import DefaultsHelpFormatter
from tvm_theory.param import NetworkJump
from tvm_theory.sampling import sample_few_step

from . import checkpoint
from .config import Config
from .data import DATASETS
from .distributed import Dist, chunk, gather_rows, setup, teardown
from .model import DiT


def load_run(run: str | Path, which: str = "eval_ema", ckpt: str | Path | None = None,
             device: str | torch.device = "cpu") -> tuple[DiT, Config, dict]:
    """(model in eval mode with the chosen weights, the run's resolved config, the checkpoint's meta)."""
    run = Path(run)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"--run: {run} has no config.yaml; is it a full_scale.train run directory?")
    cfg = Config.from_dict(yaml.safe_load(cfg_path.read_text()))
    path = Path(ckpt) if ckpt is not None else checkpoint.latest(run)
    if path is None:
        raise FileNotFoundError(f"--run: {run} has no checkpoints yet")
    with torch.device(device):
        model = DiT(cfg.model.dit())
    meta = checkpoint.load_weights(path, model, which)
    checkpoint.check_model_config(meta, model.cfg.to_dict(), path)
    model.set_attention_backend(cfg.model.attention_backend)
    return model.eval().requires_grad_(False), cfg, meta


@torch.no_grad()
def generate(model: DiT, labels: torch.Tensor | None, n_steps: int, weight: float | None, *, n: int | None = None,
             seed: int = 0, batch_size: int = 256, d: Dist = Dist(), progress: bool = False,
             scaled: bool = True) -> torch.Tensor:
    """Samples (n, C, H, W) on the CPU: class-conditional with guidance ``weight`` when ``labels`` (n,) are given,
    in the scaled or unscaled parameterization as the model was trained (``scaled``, the run's ``guidance.scaled``;
    docs/THEORY.md §2), unconditional (null class, plain parameterization) when ``labels`` is None.

    The noise of all n samples is drawn from ``seed`` first; with several processes (``d``) each generates its
    contiguous share and every rank receives them all in order, so the result does not depend on the rank count."""
    cfg = model.cfg
    n = len(labels) if labels is not None else n
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.randn((n, cfg.in_channels, cfg.input_size, cfg.input_size), generator=gen)
    lo, hi = chunk(n, d.rank, d.world_size)
    out = []
    for i in tqdm(range(lo, hi, batch_size), desc=f"{n_steps}-step samples", disable=not (progress and d.main),
                  file=sys.stderr):
        j = min(i + batch_size, hi)
        cond = {} if labels is None else {"y": labels[i:j].to(device)}
        jump = NetworkJump(model, w=weight if labels is not None else None, scaled=scaled, **cond)
        out.append(sample_few_step(jump, x1[i:j].to(device), n_steps).float())
    mine = torch.cat(out) if out else x1.new_empty((0, *x1.shape[1:])).to(device)
    return gather_rows(mine, n, d.world_size).cpu()


def grid_png(path: Path, images: np.ndarray, rows: int, scale: int = 4, pad: int = 1) -> None:
    """Save uint8 images (n, H, W, C) as a rows × (n / rows) grid with ``pad`` grey pixels between cells, upscaled
    ``scale``× (nearest neighbour)."""
    n, h, w, c = images.shape
    cols = n // rows
    cells = np.full((rows, cols, h + pad, w + pad, c), 128, dtype=np.uint8)
    cells[:, :, :h, :w] = images[: rows * cols].reshape(rows, cols, h, w, c)
    grid = cells.transpose(0, 2, 1, 3, 4).reshape(rows * (h + pad), cols * (w + pad), c)[:-pad or None, :-pad or None]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Pixel data in [−1, 1] (n, C, H, W) → uint8 (n, H, W, C)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python -m full_scale.sample", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="a full_scale.train run directory")
    p.add_argument("--checkpoint", default=None, help="a checkpoint directory (default: the run's latest)")
    p.add_argument("--weights", default="eval_ema", choices=checkpoint.WEIGHTS)
    p.add_argument("--nfe", type=int, nargs="+", default=None,
                   help="numbers of jumps N, one network evaluation each (default: sample.nfe)")
    p.add_argument("--weight", type=float, default=None, help="guidance weight w ≥ 1 (default: sample.weight)")
    p.add_argument("--per-class", type=int, default=None, help="samples per class (default: sample.per_class)")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="classes to sample (default: all)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: sample.seed)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per forward (default: eval.batch_size)")
    p.add_argument("--vae", default=None, help="latents only: VAE source to decode a PNG grid (full_scale.data.vae; "
                   "default: eval.vae)")
    p.add_argument("--decode-dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="precision of the VAE decoder (bf16/fp16 on GPUs: faster, ±1 grey level)")
    p.add_argument("--out", default=None, help="output directory (default: RUN/samples)")
    args = p.parse_args(argv)

    d = setup()
    device = d.device
    try:
        model, cfg, meta = load_run(args.run, args.weights, args.checkpoint, device)
    except (FileNotFoundError, ValueError, checkpoint.CheckpointError) as err:
        p.error(str(err))
    given = {"sample.nfe": args.nfe, "sample.weight": args.weight, "sample.per_class": args.per_class,
             "sample.seed": args.seed, "eval.batch_size": args.batch_size, "eval.vae": args.vae}
    try:  # the run's sample and eval sections with the flags given, validated like the config
        cfg = cfg.override({k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        p.error(str(err))
    num_classes = model.cfg.num_classes
    if args.classes is not None and not all(0 <= c < num_classes for c in args.classes):
        p.error(f"--classes: expected classes in [0, {num_classes - 1}], got {args.classes}")
    sc = cfg.sample
    steps, weight, per_class, seed = list(sc.nfe), sc.weight, sc.per_class, sc.seed
    batch_size, vae_source = cfg.eval.batch_size, cfg.eval.vae
    out = Path(args.out) if args.out else Path(args.run) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    conditional = cfg.guidance.mode != "none"
    classes = args.classes if args.classes is not None else list(range(num_classes))
    labels = torch.tensor(classes).repeat_interleave(per_class) if conditional else None
    n = len(classes) * per_class

    decode = None
    if DATASETS[cfg.data.kind].pixels:
        decode = to_uint8
    elif vae_source:
        from .data.latents import manifest_stats
        from .data.vae import decode_latents, load_vae
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.decode_dtype]
        vae, stats = load_vae(vae_source, device=device, dtype=dtype), manifest_stats(cfg.data.root)
        decode = lambda z: decode_latents(vae, z, stats)  # noqa: E731

    written = []
    for n_steps in steps:
        x = generate(model, labels, n_steps, weight, n=n, seed=seed, batch_size=batch_size, d=d, progress=True,
                     scaled=cfg.guidance.scaled)
        if not d.main:
            continue
        stem = out / f"samples_{n_steps}step"
        np.savez(stem.with_suffix(".npz"), samples=x.numpy(), labels=(labels if labels is not None else
                 torch.full((n,), -1)).numpy(), n_steps=n_steps, weight=weight, step=meta["step"])
        written.append(stem.with_suffix(".npz"))
        if decode is not None:
            grid_png(stem.with_suffix(".png"), decode(x), rows=len(classes) if conditional else 1)
            written.append(stem.with_suffix(".png"))
        print(f"{n_steps}-step samples: {stem}.npz" + (" and .png" if decode is not None else
                                                       " (pass --vae to decode latents to a PNG grid)"))
    teardown(d)
    return written


if __name__ == "__main__":
    main()
