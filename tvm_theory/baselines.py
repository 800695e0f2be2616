"""One-step baselines beside TVM: MeanFlow and plain flow matching, in the project's conventions (docs/THEORY.md §1–3).

Every objective here is a *step loss* with the signature and return type of
:func:`tvm_theory.loss.tvm_step_loss` — ``step_loss(F, F_target, x0, times, *, x1=None, y=None, cfg=None,
generator=None) -> TVMLoss`` — so a trainer swaps them by name through :data:`OBJECTIVES`. All share the path
x_t = (1 − t) x0 + t x1 (t = 0 data, t = 1 noise), the conditional velocity v = x1 − x0, the network convention
F(x, t, s) = average velocity from t down to s (jump x ↦ x + (s − t) F), and the few-step sampler
:func:`tvm_theory.sampling.sample_few_step`.

* **MeanFlow** (Geng et al. 2025, arXiv 2505.13447). Their u(z, r, t) is our F(z, t, s) with r = s. Their identity
  F(x_t, t, s) = v(x_t, t) − (t − s) d/dt F(x_t, t, s), with d/dt the total derivative along the path
  (d/dt = v·∂_x + ∂_t, s held fixed), is turned into a regression onto a stop-gradient target:

      F_tgt = sg[v − (t − s) · JVP(F, (x_t, t, s), (v, 1, 0))],   Δ = F_θ(x_t, t, s) − F_tgt,

  using the *conditional* v in both the tangent and the target, exactly as published. The JVP's tangent is detached
  (unlike TVM's, docs/THEORY.md §3 item 2); the primal output carries the gradient. Loss per example, with the paper's
  adaptive weighting w = sg[(‖Δ‖² + c)^(−p)] (‖·‖² summed over data dimensions as published, c = 1e-3,
  p = 1 their ImageNet default; p = 0 is the plain squared error):

      loss_i = w_i · mean_dims(Δ_i²).

  The mean over dimensions (project convention, §3 item 6) rescales the published loss by the constant 1/D only.
  Times (:class:`MeanFlowSampler`): two logit-normal(−0.4, 1) draws sorted so that s ≤ t, then s = t for a
  share ``fm_share`` = 0.75 of the examples (their ImageNet setting, "25% of r ≠ t"); at s = t the target is v,
  i.e. flow matching. The MeanFlow target uses the *online* network (stop-gradient), not an EMA copy: the
  ``F_target`` argument is accepted for the common signature and ignored.
* **Flow matching** (conditional, rectified-flow path): u_θ(x, s) = F(x, s, s) regressed onto v at s = s′ drawn
  logit-normal(−0.4, 1) (:class:`FlowMatchingSampler`, the same law as TVM's s′); ``fm_i = mean_dims(u_θ − v)²``.
  It is sampled with Euler steps through :class:`EulerJump` (displacement (s − t) u_θ(x, t)).
* **TVM** is :func:`tvm_theory.loss.tvm_step_loss`; "TVM without the EMA target" is the same loss with the
  trainer's target EMA rate set to 0 (plain stop-gradient).

Class conditioning (``y``, ``cfg``) is implemented for TVM only; the baselines raise ``ValueError`` if given it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .checks import as_batch_time, expand_like
from .loss import CFGConfig, TVMLoss, prepare_batch, tvm_step_loss
from .param import JumpModel, Network, NetworkJump, velocity
from .time_samplers import PairLogitNormalSampler, TimeSample, make_time_sampler


def _no_conditioning(name: str, y, cfg) -> None:
    if y is not None or cfg is not None:
        raise ValueError(f"{name}: class conditioning (y, cfg) is implemented for the TVM objective only")


def _mean_dims_sq(a: Tensor) -> Tensor:
    """Per-example mean over data dimensions of a², shape (B,)."""
    return a.pow(2).flatten(1).mean(1)


# ---- time samplers ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanFlowSampler:
    """MeanFlow's (t, r) sampler in our names (t start, s = r end): two sigmoid(N(mean, std)) draws sorted so that
    s ≤ t, then s ← t for a random share ``fm_share`` of the examples. ``s_fm`` is set to t (unused by MeanFlow)."""

    mean: float = -0.4
    std: float = 1.0
    fm_share: float = 0.75

    def __post_init__(self):
        if not 0.0 <= self.fm_share <= 1.0:
            raise ValueError(f"fm_share: expected a share in [0, 1], got {self.fm_share}")

    def __call__(self, n: int, *, generator=None, device=None, dtype=torch.float32) -> TimeSample:
        pair = PairLogitNormalSampler(self.mean, self.std)(n, generator=generator, device=device, dtype=dtype)
        equal = torch.rand(n, generator=generator, device=device) < self.fm_share
        s = torch.where(equal, pair.t, pair.s)
        return TimeSample(t=pair.t, s=s, s_fm=pair.t)


@dataclass(frozen=True)
class FlowMatchingSampler:
    """Flow matching's single time: s′ ~ sigmoid(N(mean, std)); returned as t = s = s_fm = s′."""

    mean: float = -0.4
    std: float = 1.0

    def __call__(self, n: int, *, generator=None, device=None, dtype=torch.float32) -> TimeSample:
        s_fm = torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, device=device, dtype=dtype))
        return TimeSample(t=s_fm, s=s_fm, s_fm=s_fm)


# ---- step losses --------------------------------------------------------------------------------------------------
def meanflow_step_loss(F: Network, F_target: Network | None, x0: Tensor, times: TimeSample, *, x1=None, y=None,
                       cfg: CFGConfig | None = None, generator=None, adaptive_p: float = 1.0,
                       adaptive_c: float = 1e-3) -> TVMLoss:
    """MeanFlow's loss (module docstring): Δ = F_θ(x_t, t, s) − sg[v − (t − s) dF/dt], one JVP with tangent
    (v, 1, 0) on (x, t, s); loss_i = sg[(‖Δ_i‖² + c)^(−p)] · mean_dims(Δ_i²).

    The returned :class:`TVMLoss` puts the examples with s < t under ``terminal`` (the average-velocity identity)
    and those with s = t under ``fm`` (flow matching), so the trainer logs the two parts as it does for TVM.
    ``F_target`` is ignored (MeanFlow's target is the online network under stop-gradient).
    """
    _no_conditioning("meanflow_step_loss", y, cfg)
    if not (adaptive_p >= 0 and adaptive_c > 0):
        raise ValueError(f"adaptive_p, adaptive_c: expected p ≥ 0 and c > 0, got {adaptive_p}, {adaptive_c}")
    batch = prepare_batch(x0, times, x1=x1, generator=generator)
    s = batch.s

    def F_along_path(x: Tensor, t: Tensor) -> Tensor:
        return F(x, t, s)

    F_val, dF_dt = torch.func.jvp(F_along_path, (batch.x_t, batch.t), (batch.v, torch.ones_like(batch.t)))
    target = (batch.v - expand_like(batch.t - s, batch.v) * dF_dt).detach()
    delta = F_val - target
    weight = (delta.detach().pow(2).flatten(1).sum(1) + adaptive_c).pow(-adaptive_p)
    per_example = weight * _mean_dims_sq(delta)
    active = (s < batch.t).to(per_example.dtype)
    terminal, fm = active * per_example, (1 - active) * per_example
    return TVMLoss(loss=per_example.mean(), terminal=terminal.mean().detach(), fm=fm.mean().detach(),
                   terminal_per_example=terminal.detach(), fm_per_example=fm.detach())


def fm_step_loss(F: Network, F_target: Network | None, x0: Tensor, times: TimeSample, *, x1=None, y=None,
                 cfg: CFGConfig | None = None, generator=None) -> TVMLoss:
    """Conditional flow matching: fm_i = mean_dims(u_θ(x_{s′}, s′) − v)² with u_θ(x, s) = F(x, s, s); terminal ≡ 0.
    ``F_target`` is ignored."""
    _no_conditioning("fm_step_loss", y, cfg)
    batch = prepare_batch(x0, times, x1=x1, generator=generator)
    fm = _mean_dims_sq(velocity(F, batch.x_fm, batch.s_fm) - batch.v)
    zeros = torch.zeros_like(fm)
    return TVMLoss(loss=fm.mean(), terminal=zeros.sum(), fm=fm.mean().detach(), terminal_per_example=zeros,
                   fm_per_example=fm.detach())


# ---- sampling -----------------------------------------------------------------------------------------------------
class EulerJump:
    """A flow-matching network seen as a :class:`~tvm_theory.param.JumpModel` whose jump is one Euler step:
    f(x, t, s) = (s − t) u_θ(x, t), ∂_s f = u_θ(x, t), velocity u_θ(x, s) = F(x, s, s). With it,
    :func:`tvm_theory.sampling.sample_few_step` is the N-step Euler solver of the learned ODE."""

    def __init__(self, F: Network):
        self.F = F

    def displacement_and_ds(self, x: Tensor, t, s) -> tuple[Tensor, Tensor]:
        t, s = as_batch_time("t", t, x), as_batch_time("s", s, x)
        u = velocity(self.F, x, t)
        return expand_like(s - t, x) * u, u

    def displacement(self, x: Tensor, t, s) -> Tensor:
        return self.displacement_and_ds(x, t, s)[0]

    def velocity(self, x: Tensor, s) -> Tensor:
        return velocity(self.F, x, s)


# ---- registry -----------------------------------------------------------------------------------------------------
StepLoss = Callable[..., TVMLoss]

OBJECTIVES: dict[str, StepLoss] = {"tvm": tvm_step_loss, "meanflow": meanflow_step_loss, "fm": fm_step_loss}
_SAMPLERS = {"meanflow": MeanFlowSampler, "fm": FlowMatchingSampler}
_JUMPS: dict[str, Callable[[Network], JumpModel]] = {"tvm": NetworkJump, "meanflow": NetworkJump, "fm": EulerJump}


def _check_objective(name: str) -> None:
    if name not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {name!r}")


def make_objective(name: str, time_sampler: str = "gap") -> tuple[StepLoss, Callable[..., TimeSample]]:
    """(step loss, time sampler) of objective ``name``. TVM uses the named ``time_sampler`` (gap* by default);
    MeanFlow and flow matching use their own published samplers and ignore it."""
    _check_objective(name)
    sampler = make_time_sampler(time_sampler) if name == "tvm" else _SAMPLERS[name]()
    return OBJECTIVES[name], sampler


def jump_model(name: str, F: Network) -> JumpModel:
    """The :class:`~tvm_theory.param.JumpModel` through which objective ``name``'s network is sampled: its own
    jumps for TVM and MeanFlow, Euler steps of u_θ for flow matching."""
    _check_objective(name)
    return _JUMPS[name](F)
