"""Digits end to end in one command: train → sample (1, 2, 4, … jumps) → evaluate.

    python -m full_scale.pipeline --out runs/digits [--steps N] [--set section.key=value ...]

Trains (or resumes) the ``tiny-digits`` preset, samples ``sample.per_class`` digits of every class from the
evaluation EMA for each N in ``sample.nfe``, scores them with the cached digits classifier (accuracy of the
conditioned class, Fréchet distance in its feature space, pixel W2 to the held-out digits, each with its floor;
``full_scale.data.digits``) and writes ``eval.json`` beside the samples.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tvm_theory.cli import DefaultsHelpFormatter

from . import sample, train
from .data import digits


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m full_scale.pipeline", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--preset", default="tiny-digits")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None, help="training steps (overrides train.steps)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="start from these weights (a checkpoint folder or .safetensors file; default: random)")
    p.add_argument("--cache-dir", default=None, help="where the digits classifier is cached (default: "
                   "$TVM_THEORY_CACHE or ~/.cache/tvm_theory)")
    args = p.parse_args(argv)
    cfg = train.config_from_args(args)
    if cfg.data.kind != "digits":
        raise ValueError(f"--preset: the pipeline scores digits; {args.preset!r} has data.kind={cfg.data.kind!r}"
                         " (use full_scale.train, full_scale.sample and full_scale.evaluation for latents)")
    if cfg.guidance.mode == "none":
        raise ValueError("guidance.mode: the pipeline scores class-conditional samples; use constant or random")

    train.train(cfg, args.out)
    written = sample.main(["--run", args.out])

    classifier = digits.load_classifier(args.cache_dir)
    results = {}
    for path in written:
        if path.suffix != ".npz":
            continue
        data = np.load(path)
        scores = digits.evaluate(torch.from_numpy(data["samples"]), torch.from_numpy(data["labels"]), classifier)
        results[f"{int(data['n_steps'])}-step"] = {**scores, "weight": float(data["weight"]),
                                                   "train_step": int(data["step"])}
    out = Path(args.out) / "eval.json"
    out.write_text(json.dumps(results, indent=2))
    for name, r in results.items():
        print(f"{name}: accuracy {r['accuracy']:.3f} (chance 0.100, classifier on held-out digits "
              f"{r['classifier_held_out_accuracy']:.3f}); Fréchet {r['frechet']:.2f} (floor {r['frechet_floor']:.2f}); "
              f"W2 {r['w2']:.3f} (floor {r['w2_floor']:.3f})")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
