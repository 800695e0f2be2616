"""The TVM objective: the exact per-(t, s) objective and the practical training loss (docs/THEORY.md §3).

Exact objective (Eq. 9), 0 ≤ s ≤ t ≤ 1, used by the bounds:

    L^{t,s}(θ) = E‖∂_s f_θ(x_t, t, s) − u_θ(x_t + f_θ(x_t, t, s), s)‖² + E‖u_θ(x_s, s) − v‖².

Practical loss, in three steps so that the student's part can run inside a DDP-wrapped module's forward:

1. :func:`prepare_batch` — noise, path points, label dropout and guidance weights (no network, no gradient);
2. :func:`student_forward` — the student's f, ∂_s f (one JVP) and its velocity at the flow-matching point;
3. :func:`tvm_loss` — the targets from the EMA copy (no gradient; with guidance both target velocities come from
   one call of the target network on the two inputs stacked) and the weighted terms:

    terminal_i = 1[s_i < t_i] · (1/w_i²) · mean_dims ‖∂_s f_θ(x_t, t, s) − u_tgt(x̂_s, s, c, w)‖²,
                 x̂_s = x_t + f_θ(x_t, t, s) (detached);
    fm_i       = (1/w_i²) · mean_dims ‖u_θ(x_{s′}, s′, c, w) − [w v + (1 − w) u_tgt(x_{s′}, s′, ∅, 1)]‖²;
    loss       = mean_i (terminal_i + fm_i).

Here f_θ, ∂_s f_θ and u_θ are read from the network in the scaled parameterization (u_θ = w·F_θ, the default) or,
with ``CFGConfig(scaled=False)``, the unscaled one (u_θ = F_θ; docs/THEORY.md §2); the targets and the weights 1/w²
are the same in both, as in the official code with and without ``do_scale_param``.
Without guidance (``cfg=None``) w ≡ 1, no β or label is passed and the flow-matching target is v.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import check_same_shape, expand_like
from .param import Network, displacement_ds_and_velocity_of, guided_call
from .path import interpolate
from .time_samplers import TimeSample


@dataclass(frozen=True)
class CFGConfig:
    """Class conditioning with the scaled (CFG) parameterization (docs/THEORY.md §2, §3 item 5).

    weight: constant guidance weight w ≥ 1 (used when ``weight_range`` is None).
    weight_range: (w_min, w_max) for random guidance, β = 1/w ~ U(1/w_max, 1/w_min).
    label_dropout: probability that a label is replaced by ``null_class`` (and its w set to 1).
    null_class: the label index of the unconditional ("null") class.
    scaled: the scaled parameterization u_θ = w·F_θ(·, β = 1/w) (True) or the unscaled u_θ = F_θ(·, β = 1/w).
    """

    null_class: int
    weight: float = 1.0
    weight_range: tuple[float, float] | None = None
    label_dropout: float = 0.1
    scaled: bool = True

    def __post_init__(self):
        if not self.weight >= 1.0:
            raise ValueError(f"weight: expected a guidance weight ≥ 1, got {self.weight}")
        if self.weight_range is not None:
            lo, hi = self.weight_range
            if not 1.0 <= lo <= hi:
                raise ValueError(f"weight_range: expected 1 ≤ w_min ≤ w_max, got {self.weight_range}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout: expected a probability in [0, 1], got {self.label_dropout}")


@dataclass(frozen=True)
class TVMBatch:
    """Everything the student and the target need for one step; all detached. Times and w are (B,). Made and
    validated by :func:`prepare_batch`; the loss functions trust it (no checks, no host synchronisation)."""

    x_t: Tensor
    t: Tensor
    s: Tensor
    x_fm: Tensor
    s_fm: Tensor
    v: Tensor
    w: Tensor | None = None  # None: plain parameterization
    y: Tensor | None = None  # labels after dropout
    scaled: bool = True  # with w: u_θ = w·F_θ (scaled) or F_θ (unscaled), docs/THEORY.md §2


@dataclass(frozen=True)
class StudentOutput:
    """f_θ(x_t, t, s), ∂_s f_θ(x_t, t, s) and u_θ(x_{s′}, s′); gradients flow through all three."""

    f: Tensor
    dfds: Tensor
    u_fm: Tensor


@dataclass(frozen=True)
class TVMLoss:
    """The scalar loss and its parts; per-example terms are (B,) and detached."""

    loss: Tensor
    terminal: Tensor
    fm: Tensor
    terminal_per_example: Tensor
    fm_per_example: Tensor


def _mean_sq(a: Tensor) -> Tensor:
    """Per-example mean over data dimensions of a², shape (B,)."""
    return a.pow(2).flatten(1).mean(1)


def prepare_batch(x0: Tensor, times: TimeSample, *, x1: Tensor | None = None, y: Tensor | None = None,
                  cfg: CFGConfig | None = None, generator: torch.Generator | None = None) -> TVMBatch:
    """Draw noise (unless given), build x_t, x_{s′}, v and apply label dropout and guidance weights.

    Validates the batch once (finite x0 and x1, times in [0, 1] with s ≤ t, one host synchronisation); the student
    and target calls of :func:`student_forward` and :func:`tvm_loss` then run unchecked.
    """
    if x1 is None:
        x1 = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    check_same_shape("x0", x0, "x1", x1)
    _check_batch(x0, x1, times)
    x_t, x_fm = interpolate(x0, x1, times.t), interpolate(x0, x1, times.s_fm)
    w = None
    if cfg is not None:
        if y is None or y.shape != (x0.shape[0],):
            raise ValueError(f"y: expected labels of shape ({x0.shape[0]},) with cfg, got {None if y is None else tuple(y.shape)}")
        n = x0.shape[0]
        drop = torch.rand(n, generator=generator, device=x0.device) < cfg.label_dropout
        y = torch.where(drop, torch.full_like(y, cfg.null_class), y)
        if cfg.weight_range is None:
            w = torch.full((n,), cfg.weight, device=x0.device, dtype=x0.dtype)
        else:
            lo, hi = 1.0 / cfg.weight_range[1], 1.0 / cfg.weight_range[0]
            beta = lo + (hi - lo) * torch.rand(n, generator=generator, device=x0.device, dtype=x0.dtype)
            w = 1.0 / beta
        w = torch.where(drop, torch.ones_like(w), w)
    elif y is not None:
        raise ValueError("y: labels were given but cfg is None; pass a CFGConfig for class conditioning")
    return TVMBatch(x_t=x_t, t=times.t, s=times.s, x_fm=x_fm, s_fm=times.s_fm, v=x1 - x0, w=w, y=y,
                    scaled=cfg is None or cfg.scaled)


def _check_batch(x0: Tensor, x1: Tensor, times: TimeSample) -> None:
    n = x0.shape[0]
    for name, tau in (("times.t", times.t), ("times.s", times.s), ("times.s_fm", times.s_fm)):
        if tau.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},) to match the batch, got {tuple(tau.shape)}")
    tau = torch.stack([times.t, times.s, times.s_fm]).to(x0.dtype)
    ok = torch.stack([torch.isfinite(x0).all(), torch.isfinite(x1).all(), ((tau >= 0) & (tau <= 1)).all(),
                      (times.s <= times.t).all()])
    if not bool(ok.all()):  # the one synchronisation; the messages below are computed only on failure
        problems = [msg for good, msg in zip(ok.tolist(), (
            "x0: expected finite values", "x1: expected finite values",
            f"times: expected t, s, s_fm in [0, 1], got range [{float(tau.min()):.6g}, {float(tau.max()):.6g}]",
            "times: expected s ≤ t for every example")) if not good]
        raise ValueError("; ".join(problems))


def _cond(y: Tensor | None) -> dict:
    return {} if y is None else {"y": y}


def student_forward(F: Network, batch: TVMBatch) -> StudentOutput:
    """The student's part of a step: (f, ∂_s f) at (x_t, t, s) by one JVP, and u_θ at (x_{s′}, s′); one call of F
    when it takes tangent rows (:func:`~tvm_theory.param.displacement_ds_and_velocity_of`), else two.

    This is the function a distributed trainer calls inside its DDP-wrapped module's forward.
    """
    f, dfds, u_fm = displacement_ds_and_velocity_of(F, batch.x_t, batch.t, batch.s, batch.x_fm, batch.s_fm, batch.w,
                                                    _cond(batch.y), batch.scaled)
    return StudentOutput(f=f, dfds=dfds, u_fm=u_fm)


def tvm_loss(batch: TVMBatch, student: StudentOutput, F_target: Network, *, null_class: int | None = None) -> TVMLoss:
    """Practical TVM loss from the student's outputs and the target network (an EMA copy; no gradient)."""
    with torch.no_grad():
        x_hat = batch.x_t + student.f.detach()
        if batch.w is None:
            u_terminal, fm_target = guided_call(F_target, x_hat, batch.s, batch.s, None, _cond(batch.y)), batch.v
        else:
            if null_class is None:
                raise ValueError("null_class: required for the guided flow-matching target (cfg is set)")
            # One call of the target on both inputs: (x̂_s, s, c, w) and (x_{s′}, s′, ∅, w = 1) (at w = 1 the
            # scaled and unscaled velocities agree).
            n, s_both = x_hat.shape[0], torch.cat([batch.s, batch.s_fm])
            u = guided_call(F_target, torch.cat([x_hat, batch.x_fm]), s_both, s_both,
                            torch.cat([batch.w, torch.ones_like(batch.w)]),
                            {"y": torch.cat([batch.y, torch.full_like(batch.y, null_class)])}, batch.scaled)
            u_terminal, u_uncond = u[:n], u[n:]
            we = expand_like(batch.w, batch.v)
            fm_target = we * batch.v + (1 - we) * u_uncond
    weight = 1.0 if batch.w is None else batch.w.pow(-2)
    active = (batch.s < batch.t).to(student.dfds.dtype)
    terminal = active * weight * _mean_sq(student.dfds - u_terminal)
    fm = weight * _mean_sq(student.u_fm - fm_target)
    return TVMLoss(loss=(terminal + fm).mean(), terminal=terminal.mean().detach(), fm=fm.mean().detach(),
                   terminal_per_example=terminal.detach(), fm_per_example=fm.detach())


def tvm_step_loss(F: Network, F_target: Network, x0: Tensor, times: TimeSample, *, x1=None, y=None,
                  cfg: CFGConfig | None = None, generator=None) -> TVMLoss:
    """All three steps in one call (single process; a DDP trainer calls them separately)."""
    batch = prepare_batch(x0, times, x1=x1, y=y, cfg=cfg, generator=generator)
    return tvm_loss(batch, student_forward(F, batch), F_target, null_class=None if cfg is None else cfg.null_class)


def exact_objective_terms(model, x_t: Tensor, t, s, x_s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example terms of Eq. 9 for a :class:`~tvm_theory.param.JumpModel` (no stop-gradient, no weights):

    terminal_i = ‖∂_s f_θ(x_t, t, s) − u_θ(x_t + f_θ(x_t, t, s), s)‖²,  fm_i = ‖u_θ(x_s, s) − v‖²  (sums over dims).
    Their means over x_t ~ p_t and (x_s, v) are A_t(s) and B(s) + σ²(s) (docs/THEORY.md §5).
    """
    f, dfds = model.displacement_and_ds(x_t, t, s)
    terminal = (dfds - model.velocity(x_t + f, s)).pow(2).flatten(1).sum(1)
    fm = (model.velocity(x_s, s) - v).pow(2).flatten(1).sum(1)
    return terminal, fm
