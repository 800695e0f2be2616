"""The model's parameterization: average velocity F, displacement f, instantaneous velocity u (docs/THEORY.md §2).

A network ``F(x, t, s, **cond)`` takes a batch x of shape (B, ...) and times t, s of shape (B,). From it:

* displacement   f_θ(x, t, s) = (s − t) F_θ(x, t, s)              — the jump is x ↦ x + f_θ(x, t, s);
* velocity       u_θ(x, s)    = F_θ(x, s, s);
* ∂_s f_θ        = F_θ + (s − t) ∂_s F_θ, one forward-mode JVP with tangent 1 on s and 0 on x and t.

Guidance, with weight w ≥ 1 (a float or a (B,) tensor): the network also receives β = 1/w as the keyword ``beta``.
In the scaled (CFG) parameterization (``scaled=True``, the default; the official configs' ``do_scale_param: true``)
f_θ = (s − t) · w · F_θ(x, t, s, c, β) and u_θ = w · F_θ(x, s, s, c, β); unscaled (``scaled=False``, the official
code with ``do_scale_param: false``) f_θ = (s − t) · F_θ(x, t, s, c, β) and u_θ = F_θ(x, s, s, c, β), so the network
itself outputs the guided velocity, of size ~w (docs/THEORY.md §2). ``w=None`` means the plain parameterization (no
``beta`` keyword is passed; ``scaled`` has no effect).

∂_s F comes from ``torch.func.jvp``, unless the network has a method ``forward_and_ds(x, t, s, **cond)`` returning
(F, ∂_s F) computed another way (the DiT carries its tangent by hand, ``full_scale.model.dit``); its tests check it
against ``torch.func.jvp``. If that method also takes a keyword ``n_tangent`` (then ∂_s F is computed for the first
``n_tangent`` rows only, and the other rows get F alone), the training step's two student calls, (f, ∂_s f) at
(x_t, t, s) and u at (x_{s′}, s′), run as one pass over both batches (:func:`displacement_ds_and_velocity_of`).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Protocol

import torch
from torch import Tensor

from .checks import as_batch_time, expand_like

Network = Callable[..., Tensor]


def guidance_weights(w: float | Tensor | None, x: Tensor) -> Tensor | None:
    """Validated per-example guidance weights of shape (B,) (w ≥ 1), or None for the plain parameterization."""
    if w is None:
        return None
    w = torch.as_tensor(w, dtype=x.dtype, device=x.device)
    if w.ndim == 0:
        w = w.expand(x.shape[0])
    if w.shape != (x.shape[0],):
        raise ValueError(f"w: expected a scalar or shape ({x.shape[0]},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or float(w.min()) < 1.0:
        raise ValueError(f"w: expected finite guidance weights ≥ 1, got min {float(w.min()):.6g}")
    return w


def guided_call(F: Network, x: Tensor, t: Tensor, s: Tensor, w: Tensor | None, cond: dict,
                scaled: bool = True) -> Tensor:
    """G = w · F(x, t, s, c, β = 1/w) (scaled), F(x, t, s, c, β = 1/w) (unscaled), or F(x, t, s, c) when w is None:
    the velocity the parameterization reads from the network (docs/THEORY.md §2)."""
    if w is None:
        return F(x, t, s, **cond)
    out = F(x, t, s, beta=1.0 / w, **cond)
    return expand_like(w, x) * out if scaled else out


def displacement(F: Network, x: Tensor, t, s, w=None, *, scaled: bool = True, **cond) -> Tensor:
    """f_θ(x, t, s) = (s − t) · G, G = [w ·] F_θ(x, t, s, [c, 1/w]) (w only when ``scaled``; docs/THEORY.md §2).
    Satisfies f_θ(x, t, t) = 0."""
    t, s, w = as_batch_time("t", t, x), as_batch_time("s", s, x), guidance_weights(w, x)
    return expand_like(s - t, x) * guided_call(F, x, t, s, w, cond, scaled)


def takes_tangent_rows(F: Network) -> bool:
    """Whether F has its own ``forward_and_ds`` that takes ``n_tangent`` (∂_s F for the first rows only)."""
    own = getattr(F, "forward_and_ds", None)
    return own is not None and _takes_n_tangent(getattr(own, "__func__", own))


@functools.lru_cache(maxsize=None)
def _takes_n_tangent(method: Callable) -> bool:
    """Whether ``method`` has a parameter ``n_tangent``; cached per function, as the training step asks each step."""
    return "n_tangent" in inspect.signature(method).parameters


def guided_call_and_ds(F: Network, x: Tensor, t: Tensor, s: Tensor, w: Tensor | None, cond: dict,
                       scaled: bool = True, n_tangent: int | None = None) -> tuple[Tensor, Tensor]:
    """(G, ∂_s G) for G(s) = [w ·] F(x, t, s, [c, 1/w]) (w only when ``scaled``): one forward-mode JVP in s
    (tangent 1 on s, 0 on x and t), or the network's own ``forward_and_ds``. t, s, w already validated (B,) tensors.
    ``n_tangent``: ∂_s G of the first ``n_tangent`` rows only (G of all rows); needs :func:`takes_tangent_rows`."""
    own = getattr(F, "forward_and_ds", None)
    rows = {} if n_tangent is None else {"n_tangent": n_tangent}
    if rows and not takes_tangent_rows(F):
        raise TypeError("n_tangent: this network's forward_and_ds does not take n_tangent (or it has none)")
    if own is None:
        return torch.func.jvp(lambda s_: guided_call(F, x, t, s_, w, cond, scaled), (s,), (torch.ones_like(s),))
    if w is None:
        return own(x, t, s, **cond, **rows)
    value, ds = own(x, t, s, beta=1.0 / w, **cond, **rows)
    if not scaled:
        return value, ds
    we = expand_like(w, x)
    return we * value, we[:ds.shape[0]] * ds


def displacement_and_ds(F: Network, x: Tensor, t, s, w=None, *, scaled: bool = True, **cond
                        ) -> tuple[Tensor, Tensor]:
    """(f_θ(x, t, s), ∂_s f_θ(x, t, s)) from one JVP of the network in s (docs/THEORY.md §2):

    f_θ = (s − t) G, ∂_s f_θ = G + (s − t) ∂_s G, G = [w ·] F_θ(x, t, s, [c, 1/w]) (w only when ``scaled``).
    Gradients flow through both outputs, the tangent included (§3, item 2).
    """
    t, s, w = as_batch_time("t", t, x), as_batch_time("s", s, x), guidance_weights(w, x)
    return displacement_and_ds_of(F, x, t, s, w, cond, scaled)


def displacement_and_ds_of(F: Network, x: Tensor, t: Tensor, s: Tensor, w: Tensor | None, cond: dict,
                           scaled: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`displacement_and_ds` for (B,) tensors t, s, w that the caller has validated: no checks, so no host
    synchronisation (the training loss validates its batch once, in ``tvm_theory.loss.prepare_batch``)."""
    return _displacement_and_ds(*guided_call_and_ds(F, x, t, s, w, cond, scaled), t, s)


def _displacement_and_ds(value: Tensor, ds: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """f = (s − t)·G and ∂_s f = G + (s − t)·∂_s G from G and ∂_s G (docs/THEORY.md §2)."""
    gap = expand_like(s - t, value)
    return gap * value, value + gap * ds


def displacement_ds_and_velocity_of(F: Network, x: Tensor, t: Tensor, s: Tensor, x2: Tensor, s2: Tensor,
                                    w: Tensor | None, cond: dict, scaled: bool = True
                                    ) -> tuple[Tensor, Tensor, Tensor]:
    """(f_θ(x, t, s), ∂_s f_θ(x, t, s), u_θ(x2, s2)) with the same w and conditioning for both batches (the
    student's part of the training loss, docs/THEORY.md §3). A network that :func:`takes_tangent_rows` gets one call
    on the stacked rows [x; x2] at times [(t, s); (s2, s2)] with the tangent on the first B rows (one pass through its
    layers: the DiT runs the two row sets side by side in each compiled block); any other network gets the two calls.
    Inputs as for :func:`displacement_and_ds_of`."""
    if not takes_tangent_rows(F):
        f, dfds = displacement_and_ds_of(F, x, t, s, w, cond, scaled)
        return f, dfds, guided_call(F, x2, s2, s2, w, cond, scaled)
    n = x.shape[0]

    def stacked(a: Tensor | None) -> Tensor | None:
        return None if a is None else torch.cat([a, a])

    value, ds = guided_call_and_ds(F, torch.cat([x, x2]), torch.cat([t, s2]), torch.cat([s, s2]), stacked(w),
                                   {k: stacked(v) for k, v in cond.items()}, scaled, n_tangent=n)
    return (*_displacement_and_ds(value[:n], ds, t, s), value[n:])


def velocity(F: Network, x: Tensor, s, w=None, *, scaled: bool = True, **cond) -> Tensor:
    """u_θ(x, s) = [w ·] F_θ(x, s, s, [c, 1/w]) (w only when ``scaled``) — the model's instantaneous velocity
    (docs/THEORY.md §2)."""
    s, w = as_batch_time("s", s, x), guidance_weights(w, x)
    return guided_call(F, x, s, s, w, cond, scaled)


class JumpModel(Protocol):
    """What the bounds and the sampler need of a model: its jump, the jump's s-derivative and its velocity.

    Implemented by :class:`NetworkJump` for a network F and by closed-form models in the test beds.
    """

    def displacement(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor: ...

    def displacement_and_ds(self, x: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]: ...

    def velocity(self, x: Tensor, s: Tensor) -> Tensor: ...


class NetworkJump:
    """A network F bound to a guidance weight, its parameterization (``scaled``) and conditioning, seen as a
    :class:`JumpModel`."""

    def __init__(self, F: Network, w: float | Tensor | None = None, *, scaled: bool = True, **cond):
        self.F, self.w, self.scaled, self.cond = F, w, scaled, cond

    def displacement(self, x, t, s):
        return displacement(self.F, x, t, s, self.w, scaled=self.scaled, **self.cond)

    def displacement_and_ds(self, x, t, s):
        return displacement_and_ds(self.F, x, t, s, self.w, scaled=self.scaled, **self.cond)

    def velocity(self, x, s):
        return velocity(self.F, x, s, self.w, scaled=self.scaled, **self.cond)
