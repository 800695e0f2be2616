"""`python -m toy.guided`: the few-step bound for a guided (CFG) target on ring8 with one class per mode.

docs/THEORY.md §10, proofs/README.md §9.6. ring8 is a mixture of 8 Gaussians; class c is mode c, so p0(· | c) =
N(μ_c, 0.3² I) and both u(x, t) and u(x, t | c) are exact. A class-conditional MLP F_θ(x, t, s, c, β) is trained with
the practical TVM loss (``tvm_theory.loss.tvm_step_loss`` with ``CFGConfig``: label dropout 10%, constant w, guided
flow-matching target w v + (1 − w) u_EMA(x, s′, ∅), terminal target from the EMA copy, the 1/w² weight, gap*
times). The theorem is then applied to the GUIDED field u^w = u + w(u(· | c) − u) and its flow ψ^w
(:class:`tvm_theory.analysis.testbeds.guided.GuidedMixture`), with u_θ = w F_θ(x, s, s, c, 1/w):

    W2(N-step samples of class c, p^w_0) ≤ D_N ≤ (a)_N,   p^w_0 = ψ^w(·, 1, 0)#N(0, I),

where B(σ) is taken under p^w_σ = ψ^w(·, 1, σ)#N(0, I) (the flow's own samples), not under the class interpolant the
loss samples from; for w = 1 the two coincide. Also reported: B under the class interpolant (what the loss's
flow-matching term measures, up to the EMA), and W2(p^w_0, p0(· | c)) — how far the guided law is from the class
data. Writes OUT/guided.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tvm_theory.analysis.fewstep import few_step_report, few_step_sensitivity, uniform_grid
from tvm_theory.analysis.lipschitz import certified_mlp_lipschitz
from tvm_theory.analysis.testbeds import ring
from tvm_theory.analysis.testbeds.guided import GuidedMixture
from tvm_theory.analysis.transport import w2
from tvm_theory.ema import ema_update
from tvm_theory.io import atomic_write_text
from tvm_theory.loss import CFGConfig, tvm_step_loss
from tvm_theory.param import displacement, displacement_and_ds, velocity
from tvm_theory.time_samplers import GapSampler

from .models import SILU_LIPSCHITZ, sinusoidal_embedding

K_SIGMA = 3.0


class CondMLP(nn.Module):
    """F_θ(x, t, s, y, β): an MLP of [x, e(t), e(t − s), embed(y), β] (x first, so the certificate reads the
    first D input columns); y = n_classes is the null class."""

    act_lipschitz = SILU_LIPSCHITZ

    def __init__(self, n_classes: int, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 16,
                 max_freq: float = 30.0):
        super().__init__()
        self.x_dim, self.emb_dim, self.max_freq = dim, emb_dim, max_freq
        self.label = nn.Embedding(n_classes + 1, emb_dim)
        sizes = [dim + 3 * emb_dim + 1] + [hidden] * depth + [dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x, t, s, y, beta):
        h = torch.cat([x, sinusoidal_embedding(t, self.emb_dim, self.max_freq),
                       sinusoidal_embedding(t - s, self.emb_dim, self.max_freq), self.label(y),
                       beta.to(x.dtype)[:, None]], dim=1)
        for layer in self.layers[:-1]:
            h = nn.functional.silu(layer(h))
        return self.layers[-1](h)

    def log10_lipschitz(self, w: float) -> float:
        """log10 of a certified x-Lipschitz constant of u_θ = w F(·, s, s, c, 1/w) (product of spectral norms)."""
        return certified_mlp_lipschitz(list(self.layers), self.act_lipschitz, self.x_dim).log10_value + math.log10(w)


class ClassJump:
    """A :class:`~tvm_theory.param.JumpModel` for one class c at guidance w (labels sized to each batch)."""

    def __init__(self, net, w: float, cls: int):
        self.net, self.w, self.cls = net, w, cls

    def _y(self, x):
        return torch.full((x.shape[0],), self.cls, dtype=torch.long, device=x.device)

    def displacement(self, x, t, s):
        return displacement(self.net, x, t, s, self.w, y=self._y(x))

    def displacement_and_ds(self, x, t, s):
        return displacement_and_ds(self.net, x, t, s, self.w, y=self._y(x))

    def velocity(self, x, s):
        return velocity(self.net, x, s, self.w, y=self._y(x))


def train_guided(w: float, *, steps: int = 2000, seed: int = 0, batch: int = 512, lr: float = 2e-3,
                 hidden: int = 128, depth: int = 3, progress: bool = False):
    """Train F_θ on ring8 with the practical guided TVM loss at constant w; return the evaluation-EMA network."""
    bed = ring()
    k = bed.n_components
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = CondMLP(k, hidden=hidden, depth=depth)
    target, ev = copy.deepcopy(net), copy.deepcopy(net)
    for m in (target, ev):
        m.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    cfg = CFGConfig(null_class=k, weight=w, label_dropout=0.1)
    sampler = GapSampler()
    t0 = time.perf_counter()
    for step in range(steps):
        warm = min(1.0, (step + 1) / 100)
        cos = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for grp in opt.param_groups:
            grp["lr"] = lr * warm * cos
        y = torch.multinomial(bed.weights, batch, replacement=True, generator=g)
        x0 = (bed.means[y] + 0.3 * torch.randn(batch, 2, generator=g, dtype=torch.float64)).float()
        loss = tvm_step_loss(net, target, x0, sampler(batch, generator=g), y=y, cfg=cfg, generator=g).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(target, net, 0.99)
        ema_update(ev, net, min(0.999, (2 + step) / (11 + step)))
        if progress and (step + 1) % 250 == 0:
            print(f"  w={w} step {step + 1}: loss {float(loss):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return ev.double().eval()


@torch.no_grad()
def evaluate(net, w: float, cls: int, *, steps=(1, 2, 4), n: int = 1000, n_sens: int = 96, points_total: int = 129,
             seed: int = 0) -> dict:
    """The few-step ladder against the guided flow for class ``cls`` (see the module docstring)."""
    mix = ring()
    ref = GuidedMixture(mix, cls, w)
    g = torch.Generator().manual_seed(50_000 + seed)
    x1 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    sol = ref.flow_with_error(x1, 1.0, 0.0)
    z0, z0_err = sol.x, float(sol.err.pow(2).mean().sqrt())
    cls_data = ref.conditional.sample(n, g)
    out = {"class": cls, "w": w, "n": n, "psi_ode_rms": z0_err,
           "log10_L_certified": net.log10_lipschitz(w),
           # how far the guided law is from the class data (w = 1: only the finite-sample floor)
           "w2_guided_law_to_class_data": w2(z0, cls_data),
           "w2_floor_class_data": w2(ref.conditional.sample(n, g), cls_data), "per_N": {}}
    jump = ClassJump(net, w, cls)
    L = 10.0 ** min(out["log10_L_certified"], 300)
    jump_lip = lambda t, s: 1.0 + (t - s) * L  # noqa: E731  (x ↦ x + (s − t) w F: 1 + (t − s)·w·Lip F)
    for N in steps:
        pts = max(3, (points_total - 1) // N + 1) | 1
        rep = few_step_report(jump, ref, N, L=L, x1=x1, z0=z0, z0_err=z0_err, points=pts, b_from="flow",
                              generator=torch.Generator().manual_seed(60_000 + seed + N), n_boot=200, seed=seed,
                              jump_lipschitz=jump_lip)
        rep_loss = few_step_report(jump, ref, N, L=L, x1=x1, z0=z0, z0_err=z0_err, points=pts, b_from="path",
                                   generator=torch.Generator().manual_seed(60_000 + seed + N), n_boot=200,
                                   seed=seed, compute_w2=False)
        sens = few_step_sensitivity(jump, ref.velocity, x1[:n_sens], uniform_grid(N), z0[:n_sens])
        b_flow = float(np.mean(np.concatenate(rep.B)))
        b_path = float(np.mean(np.concatenate(rep_loss.B)))
        out["per_N"][str(N)] = {
            "w2_emp": rep.w2.value, "w2_emp_err": rep.w2.err(K_SIGMA), "paired_rmse": rep.D.value,
            "paired_rmse_err": rep.D.err(K_SIGMA),
            "log10_bound_a_certified": rep.bounds_log10["bound_a"].value,
            "log10_bound_a_certified_err": rep.bounds_log10["bound_a"].err(K_SIGMA),
            "core": rep.bounds["core"].value, "core_err": rep.bounds["core"].err(K_SIGMA),
            "verdict_D_N<=(a)_N_certified": rep.comparisons["D_N<=(a)_N"].verdict,
            "log10_bound_v_certified": rep.bounds_log10["bound_v"].value,
            "log10_bound_v_certified_err": rep.bounds_log10["bound_v"].err(K_SIGMA),
            "verdict_D_N<=(v)_N_certified": rep.comparisons["D_N<=(v)_N"].verdict,
            "verdict_W2<=D_N": rep.comparisons["W2<=D_N"].verdict,
            "bound_sensitivity": sens.bound, "bound_sensitivity_err": sens.quad_err + sens.ode_err,
            "sensitivity_identity_rel": sens.identity_rel, "sensitivity_paired_rmse": sens.paired_rmse,
            "mean_B_under_guided_flow": b_flow, "mean_B_under_class_interpolant": b_path,
            "b_reference_ode_rms": rep.b_ode_err,
            "w2_to_class_data": w2(sample_n(jump, x1, N), cls_data)}
    return out


def sample_n(jump, x1, n):
    from tvm_theory.sampling import sample_few_step
    return sample_few_step(jump, x1, n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m toy.guided", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/guided")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--weights", default="1,2")
    p.add_argument("--classes", default="0")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--n-sens", type=int, default=96)
    p.add_argument("--points", type=int, default=129, help="σ-nodes in all (split over the jumps)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"schema": "toy.guided/1", "testbed": "ring8 (class = mode)", "steps": args.steps, "runs": []}
    for w in (float(v) for v in args.weights.split(",")):
        t0 = time.perf_counter()
        net = train_guided(w, steps=args.steps, seed=args.seed, hidden=args.hidden, progress=True)
        for c in (int(v) for v in args.classes.split(",")):
            r = evaluate(net, w, c, n=args.n, n_sens=args.n_sens, points_total=args.points, seed=args.seed)
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            result["runs"].append(r)
            for N, e in r["per_N"].items():
                print(f"w={w} class {c} N={N}: W2 {e['w2_emp']:.4f} ± {e['w2_emp_err']:.4f}, D_N {e['paired_rmse']:.4f}, "
                      f"sensitivity {e['bound_sensitivity']:.4f}, (a)_N certified 10^{e['log10_bound_a_certified']:.1f}, (v)_N "
                      f"10^{e['log10_bound_v_certified']:.1f} "
                      f"({e['verdict_D_N<=(a)_N_certified']}); B flow {e['mean_B_under_guided_flow']:.4f} vs "
                      f"interpolant {e['mean_B_under_class_interpolant']:.4f}; W2 to class data "
                      f"{e['w2_to_class_data']:.4f}", flush=True)
            print(f"w={w}: W2(guided law, class data) = {r['w2_guided_law_to_class_data']:.4f} (floor "
                  f"{r['w2_floor_class_data']:.4f})", flush=True)
    atomic_write_text(out / "guided.json", json.dumps(result, indent=1))
    print(f"report: {out / 'guided.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
