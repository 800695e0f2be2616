"""Network-agnostic probes of the bound's Lipschitz ingredients during training (docs/THEORY.md §5 (A3), §6, §8).

Three measurements that apply to any network F(x, t, s, **cond) in the convention of :mod:`tvm_theory.param`:

* :func:`velocity_jacobian_norms` — ‖∂_x u_θ(x, s_k)‖₂ at probe points x on a grid of s, by the batched power
  iteration of :func:`tvm_theory.analysis.lipschitz.local_lipschitz` (one JVP and one VJP per iteration). Every value is
  a LOWER estimate of the local Jacobian norm, and their maximum a lower estimate of L(s_k) (§6: never a certificate).
* :func:`ds_norms` — ‖∂_s F̃_θ(x, t, s)‖₂ per example, F̃ = [w ·] F(x, t, s, [β = 1/w]), by one forward-mode JVP with
  tangent 1 on s and 0 on x and t (the quantity the gap embedding controls, §2 and §8).
* :class:`NormRecorder` — forward hooks that record the row RMS, sqrt(mean over the last dimension of h²), of the
  outputs of the modules whose qualified names match given regular expressions (e.g. a DiT's adaLN modulation and
  block outputs, the activation norms of §8 that blow up without its changes).

:class:`ProbeSet` bundles a fixed probe batch (data, noise, labels, s-grid and (t, s) pairs) and runs all three in
one call, cheap enough to run every N training steps. :func:`certified_vs_local` compares the power-iteration
estimate with the certified constant of an MLP (§6: certified ≥ true ≥ local).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..checks import as_batch_time, check_finite, check_same_shape, check_time
from .lipschitz import certified_mlp_lipschitz, local_lipschitz
from ..param import Network, guidance_weights, guided_call_and_ds, velocity
from ..path import interpolate


@dataclass(frozen=True)
class JacobianNorms:
    """Power-iteration estimates of ‖∂_x u_θ(x, s)‖₂ over probes and an s-grid (LOWER estimates, docs/THEORY.md §6).

    s_grid: (K,) the values of s.
    per_point: (K, B) σ̂ at probe i for s_k.
    per_s_max: (K,) max over probes at each s — the local L(s_k), a lower estimate of the true L(s_k).
    median, max: over all K·B estimates.
    iterations: the most power iterations any s needed.
    rel_change: the largest relative change of any σ̂ in its last iteration (convergence indicator).
    """

    s_grid: Tensor
    per_point: Tensor
    per_s_max: Tensor
    median: float
    max: float
    iterations: int
    rel_change: float


def path_probes(x0: Tensor, noise: Tensor, s_grid: Tensor) -> list[Tensor]:
    """Probe points on the path at each s: [(1 − s_k) x0 + s_k · noise for k] (docs/THEORY.md §1), each (B, ...)."""
    check_same_shape("x0", x0, "noise", noise)
    if s_grid.ndim != 1 or s_grid.numel() == 0:
        raise ValueError(f"s_grid: expected a non-empty 1-D tensor of times, got shape {tuple(s_grid.shape)}")
    check_time("s_grid", s_grid)
    return [interpolate(x0, noise, float(s)) for s in s_grid]


def velocity_jacobian_norms(F: Network, probes: Sequence[Tensor], s_grid: Tensor, *, w=None, n_iter: int = 20,
                            tol: float = 1e-3, generator: torch.Generator | None = None,
                            **cond) -> JacobianNorms:
    """‖∂_x u_θ(x, s_k)‖₂ at each probe of ``probes[k]`` (B, ...) for each s_k of ``s_grid`` (docs/THEORY.md §5 (A3)).

    u_θ(x, s) = [w ·] F(x, s, s, **cond, [β = 1/w]) (:func:`tvm_theory.param.velocity`). All K·B probes, flattened
    to (K·B, D), run as one batch through :func:`tvm_theory.analysis.lipschitz.local_lipschitz` (v ← JᵀJ v / ‖JᵀJ v‖,
    σ̂ = ‖J v‖ ≤ ‖J‖₂), for ``n_iter`` iterations or until each σ̂ changes by less than ``tol`` (relative). Its
    per-row argument carries the row indices, so that each row keeps its own s_k and conditioning while converged
    rows drop out. ``cond`` (e.g. ``y``) holds per-example tensors of the probes' batch size B.
    """
    if len(probes) != s_grid.numel():
        raise ValueError(f"probes: expected one probe set per s in s_grid ({s_grid.numel()}), got {len(probes)}")
    K, B, shape = len(probes), probes[0].shape[0], probes[0].shape[1:]
    if any(p.shape != probes[0].shape for p in probes):
        raise ValueError(f"probes: expected equal shapes, got {[tuple(p.shape) for p in probes]}")
    for key, v in cond.items():
        if not (torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == B):
            raise ValueError(f"{key}: expected a per-example tensor of batch size {B}")
    x = torch.cat([p.flatten(1) for p in probes])  # (K·B, D), probe set k in rows k·B … (k + 1)·B − 1
    s_rows = s_grid.to(x).repeat_interleave(B)
    cond_rows = {k: v.repeat(K, *([1] * (v.ndim - 1))) for k, v in cond.items()}

    def u(flat: Tensor, rows: Tensor) -> Tensor:
        sub = {k: v[rows] for k, v in cond_rows.items()}
        return velocity(F, flat.view(-1, *shape), s_rows[rows], w, **sub).flatten(1)

    res = local_lipschitz(u, x, s=torch.arange(K * B, device=x.device), n_iter=n_iter, tol=tol, generator=generator)
    per_point = res.per_point.view(K, B).cpu()
    return JacobianNorms(s_grid=s_grid.detach().cpu(), per_point=per_point, per_s_max=per_point.max(dim=1).values,
                         median=float(per_point.median()), max=float(per_point.max()), iterations=res.iterations,
                         rel_change=res.rel_change)


def ds_norms(F: Network, x: Tensor, t, s, *, w=None, **cond) -> Tensor:
    """Per-example ‖∂_s F̃_θ(x, t, s)‖₂ over all non-batch dimensions, (B,) (docs/THEORY.md §2, §8).

    F̃ = [w ·] F(x, t, s, **cond, [β = 1/w]) is the average velocity the jump uses, f_θ = (s − t) F̃. One forward-mode
    JVP with tangent 1 on s (0 on x and t; :func:`~tvm_theory.param.guided_call_and_ds`) gives ∂_s F̃ exactly.
    """
    t, s, wb = as_batch_time("t", t, x), as_batch_time("s", s, x), guidance_weights(w, x)
    with torch.enable_grad():
        _, dF = guided_call_and_ds(F, x, t, s, wb, cond)
    out = dF.detach().flatten(1).norm(dim=1)
    check_finite("∂_s F norms", out)
    return out


class NormRecorder:
    """Forward hooks recording the row RMS of module outputs, for modules whose names match ``patterns``.

    ``patterns`` are regular expressions matched in full against the qualified names of ``module.named_modules()``
    (e.g. ``r"blocks\\.\\d+\\.modulation"``). For each call of a matched module, every tensor output h (tuple outputs
    element by element, named ``name[i]``) contributes rms_r = sqrt(mean_j h[r, j]²) for each row r of its last
    dimension j. Use as a context manager; hooks are removed on exit. :meth:`summary` gives, per output, the mean and
    max of rms_r over all rows and calls, and the number of rows seen.
    """

    def __init__(self, module: nn.Module, patterns: Sequence[str]):
        if isinstance(patterns, str) or not patterns:
            raise ValueError(f"patterns: expected a non-empty list of regular expressions, got {patterns!r}")
        compiled = [re.compile(p) for p in patterns]
        self.modules = [(name, m) for name, m in module.named_modules()
                        if any(c.fullmatch(name) for c in compiled)]
        if not self.modules:
            raise ValueError(f"patterns: {list(patterns)} match no module name of {type(module).__name__}")
        self._rows: dict[str, list[Tensor]] = {}
        self._handles: list = []

    def _hook(self, name: str) -> Callable:
        def record(module, inputs, output):
            outs = output if isinstance(output, (tuple, list)) else (output,)
            for i, h in enumerate(outs):
                if torch.is_tensor(h) and h.is_floating_point() and h.ndim >= 1:
                    key = name if len(outs) == 1 else f"{name}[{i}]"
                    rows = h.detach().float().pow(2).mean(dim=-1).sqrt().flatten().cpu()
                    self._rows.setdefault(key, []).append(rows)
        return record

    def __enter__(self) -> "NormRecorder":
        self._rows.clear()
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def rows(self, key: str) -> Tensor:
        """All recorded row RMS values of one output key, concatenated over calls."""
        if key not in self._rows:
            raise KeyError(f"key: no output recorded under {key!r}; recorded: {sorted(self._rows)}")
        return torch.cat(self._rows[key])

    def summary(self) -> dict[str, dict]:
        """{key: {"rms_mean", "rms_max", "rows"}} for every recorded output."""
        out = {}
        for key in self._rows:
            r = self.rows(key)
            out[key] = {"rms_mean": float(r.mean()), "rms_max": float(r.max()), "rows": int(r.numel())}
        return out


@dataclass
class ProbeSet:
    """A fixed probe batch for measuring a network every N steps (docs/THEORY.md §5, §8).

    x0: (B, ...) data points; noise: (B, ...) standard normal draws; y: (B,) labels or None (unconditional);
    s_grid: (K,) values of s for the Jacobian norms (probes on the path at each s_k);
    t, s: (B,) time pairs for ‖∂_s F‖ at x_t = (1 − t) x0 + t · noise (e.g. drawn from the training time sampler);
    patterns: module-name regular expressions for :class:`NormRecorder` (empty: no norm recording).
    """

    x0: Tensor
    noise: Tensor
    y: Tensor | None
    s_grid: Tensor
    t: Tensor
    s: Tensor
    patterns: Sequence[str] = ()

    def __post_init__(self):
        check_same_shape("x0", self.x0, "noise", self.noise)
        if self.y is not None and self.y.shape != self.x0.shape[:1]:
            raise ValueError(f"y: expected shape ({self.x0.shape[0]},), got {tuple(self.y.shape)}")
        self.t = as_batch_time("t", self.t, self.x0)
        self.s = as_batch_time("s", self.s, self.x0)
        if bool((self.s > self.t).any()):
            raise ValueError("t, s: expected s ≤ t for every pair (jumps go from noise towards data)")
        self.probes = path_probes(self.x0, self.noise, self.s_grid)

    def to(self, device) -> "ProbeSet":
        move = lambda v: None if v is None else v.to(device)  # noqa: E731
        return ProbeSet(move(self.x0), move(self.noise), move(self.y), move(self.s_grid), move(self.t),
                        move(self.s), self.patterns)

    def measure(self, F: nn.Module, *, w=None, n_iter: int = 20, tol: float = 1e-3, seed: int = 0) -> dict:
        """All probes of ``F`` in eval mode (restored afterwards), as a flat dict of floats:

        lip_median, lip_max (and lip_max_s{k} per s_k), lip_rel_change — :func:`velocity_jacobian_norms`;
        ds_median, ds_max — :func:`ds_norms` at (x_t, t, s); and for each recorded output key ``k`` of
        :class:`NormRecorder` (one forward of u_θ over all path probes), ``rms_mean/k`` and ``rms_max/k``.
        """
        was_training = F.training
        F.eval()
        cond = {} if self.y is None else {"y": self.y}
        gen = torch.Generator(self.x0.device).manual_seed(seed)
        try:
            jac = velocity_jacobian_norms(F, self.probes, self.s_grid, w=w, n_iter=n_iter, tol=tol, generator=gen,
                                          **cond)
            ds = ds_norms(F, interpolate(self.x0, self.noise, self.t), self.t, self.s, w=w, **cond)
            out = {"lip_median": jac.median, "lip_max": jac.max, "lip_rel_change": jac.rel_change,
                   "ds_median": float(ds.median()), "ds_max": float(ds.max())}
            out.update({f"lip_max_s{k}": float(v) for k, v in enumerate(jac.per_s_max)})
            if self.patterns:
                xs = torch.cat(self.probes)
                ss = self.s_grid.repeat_interleave(self.x0.shape[0])
                with torch.no_grad(), NormRecorder(F, self.patterns) as rec:
                    velocity(F, xs, ss, w, **{k: v.repeat(len(self.probes)) for k, v in cond.items()})
                for key, v in rec.summary().items():
                    out[f"rms_mean/{key}"], out[f"rms_max/{key}"] = v["rms_mean"], v["rms_max"]
        finally:
            F.train(was_training)
        return out


@dataclass(frozen=True)
class CertifiedVsLocal:
    """Certified (upper) vs power-iteration (lower) x-Lipschitz constants of an MLP on an s-grid (docs/THEORY.md §6).

    log10_certified: log10 of the certificate (the same for every s).
    local_max: (K,) the largest local estimate at each s_k.
    log10_ratio: log10(certified / max_k local_max) ≥ 0 up to the power iteration's error — the looseness.
    """

    log10_certified: float
    local_max: Tensor
    log10_ratio: float


def certified_vs_local(F: Network, linears: Sequence[nn.Linear], act_lipschitz: float, x_dim: int,
                       probes: Sequence[Tensor], s_grid: Tensor, **kwargs) -> CertifiedVsLocal:
    """How close the local estimate comes to the certified constant for an MLP F (docs/THEORY.md §6 and §6.1).

    Certified: :func:`tvm_theory.analysis.lipschitz.certified_mlp_lipschitz` (product of spectral norms). Local:
    :func:`velocity_jacobian_norms` of u_θ(·, s) = F(·, s, s) over ``probes`` at ``s_grid`` (``kwargs`` go to it).
    """
    cert = certified_mlp_lipschitz(linears, act_lipschitz, x_dim)
    jac = velocity_jacobian_norms(F, probes, s_grid, **kwargs)
    local = float(jac.per_s_max.max())
    ratio = cert.log10_value - math.log10(local) if local > 0 else math.inf
    return CertifiedVsLocal(log10_certified=cert.log10_value, local_max=jac.per_s_max, log10_ratio=ratio)
