"""Certified against local Lipschitz constants of the 2-D toy students (docs/THEORY.md §6; issue 8, item 4).

The same Jacobian probe as the full-scale Lipschitz ablation (``full_scale.experiments.lipschitz_ablation``), on
MLPs whose certified constant is known: the product of the spectral norms of the linears times the activation's
Lipschitz constant (:func:`tvm_theory.analysis.probes.certified_vs_local`). Called by the ablation for its report.
"""
from __future__ import annotations

import tempfile

import torch

from tvm_theory.analysis.probes import certified_vs_local, path_probes
from tvm_theory.analysis.testbeds import make_testbed

from .train import TrainConfig, build_model, train


def toy_certified_vs_local(steps: int = 400, seed: int = 0) -> dict:
    """Issue item 4: the same Jacobian probe on 2-D toy MLPs, whose certified constant is known (product of spectral
    norms, docs/THEORY.md §6): ``toy.train`` fits the ring of 8 Gaussians for ``steps`` steps (0: left at initialization)
    with an unconstrained MLP and with a spectrally normalized one (``mlp-sn``, cap 4); the trained student is probed
    at 512 path points x_s = (1 − s) x0 + s ε (x0 from the test bed) for s ∈ {0.05, 0.25, 0.5, 0.75, 0.95}, 100 power
    iterations. Returns, per model, the certified constant, the largest local estimate and their ratio (≥ 1)."""
    gen = torch.Generator().manual_seed(seed)
    s_grid = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    bed = make_testbed("ring8")
    x0 = bed.sample(512, gen).float()
    probes = path_probes(x0, torch.randn(x0.shape, generator=gen), s_grid)

    def compare(model: torch.nn.Module) -> dict:
        model.eval()
        r = certified_vs_local(model, model.linears, model.act_lipschitz, model.x_dim, probes, s_grid, n_iter=100,
                               tol=1e-6, generator=torch.Generator().manual_seed(seed))
        return {"log10_certified": r.log10_certified, "local_max": float(r.local_max.max()),
                "local_max_per_s": r.local_max.tolist(), "log10_certified_over_local": r.log10_ratio}

    out = {"testbed": "ring8", "steps": steps}
    for name in ("mlp", "mlp-sn"):
        cfg = TrainConfig(testbed="ring8", steps=max(steps, 1), seed=seed, model=name)
        if steps == 0:
            torch.manual_seed(seed)
            out[name] = compare(build_model(cfg, bed.dim))
            continue
        found = {}
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, tmp, hook_steps=[steps], hook=lambda step, ema, student: found.update(compare(student)) or {},
                  resume=False, progress=False)
        out[name] = found
    return out
