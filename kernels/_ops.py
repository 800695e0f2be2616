"""The attention kernels as ``torch.library`` custom operators, which ``torch.compile`` keeps inside its graphs:
``attention(..., in_graph=True)`` and ``attention_jvp(..., in_graph=True)`` (docs/KERNEL.md §7).

The default calls go through the autograd Functions of ``_autograd`` and break the compiled graph, because Dynamo may
ignore a Function's custom ``jvp`` inside a compiled region (PyTorch #192985). Dynamo traces a custom operator as one
node, its shapes given by the ``register_fake`` functions, so a compiled transformer block stays one graph, which
CUDA graphs can record without copying the attention's outputs into their input buffers. Reverse mode is registered
(``register_autograd``) and runs the same backward kernels, as operators too, so that AOTAutograd's backward graph
holds them. There is no forward-mode rule, and PyTorch would give these operators a zero or missing tangent under
forward AD without an error, so the public functions refuse forward AD and every ``torch.func`` transform on this path
(``attention._refuse_transforms``). The operators serve callers that carry tangents by hand (the DiT's ``Block.jvp``).

  kernels::attention_fwd      (q, k, v, α) → (O, O_lo, lse₂)
  kernels::attention_bwd      (q, k, v, O, O_lo, lse₂, dO, α) → (dQ, dK, dV)
  kernels::attention_jvp_fwd  (q, k, v, q̇, k̇, v̇, α) → (O, Ȯ, O_lo, lse₂, Ȯ_lo, μ)
  kernels::attention_jvp_bwd  (q, k, v, O, O_lo, lse₂, μ, q̇, k̇, v̇, Ȯ, Ȯ_lo, dO or None, G, α) → six gradients

O_lo, lse₂, Ȯ_lo and μ are saved for the backward; gradients that reach them are dropped (the Functions mark them
non-differentiable).
"""
import torch
from torch import Tensor

from . import _backward, _forward
from ._autograd import _SECOND_ORDER


def _stats_like(q: Tensor) -> Tensor:
    """A row statistic (lse₂ or μ) of q's rows: fp32 (B·H, S_q)."""
    batch, heads, seq_q, _ = q.shape
    return q.new_empty((batch * heads, seq_q), dtype=torch.float32)


@torch.library.custom_op("kernels::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _forward.forward(q, k, v, scale)


@attention_fwd.register_fake
def _(q, k, v, scale):
    o = torch.empty_like(q)
    return o, _forward._low_part(o), _stats_like(q)


@torch.library.custom_op("kernels::attention_bwd", mutates_args=())
def attention_bwd(q: Tensor, k: Tensor, v: Tensor, o: Tensor, o_lo: Tensor, lse: Tensor, do: Tensor,
                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _backward.backward_primal(q, k, v, o, o_lo, lse, do, scale)


@attention_bwd.register_fake
def _(q, k, v, o, o_lo, lse, do, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.custom_op("kernels::attention_jvp_fwd", mutates_args=())
def attention_jvp_fwd(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                      scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward.forward_and_tangent(q, k, v, tq, tk, tv, scale)


@attention_jvp_fwd.register_fake
def _(q, k, v, tq, tk, tv, scale):
    o, to = torch.empty_like(q), torch.empty_like(q)
    return o, to, _forward._low_part(o), _stats_like(q), _forward._low_part(to), _stats_like(q)


@torch.library.custom_op("kernels::attention_jvp_bwd", mutates_args=())
def attention_jvp_bwd(q: Tensor, k: Tensor, v: Tensor, o: Tensor, o_lo: Tensor, lse: Tensor, mu: Tensor,
                      tq: Tensor, tk: Tensor, tv: Tensor, to: Tensor, to_lo: Tensor, do: Tensor | None, g: Tensor,
                      scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _backward.backward_fused(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, do, g, scale)


@attention_jvp_bwd.register_fake
def _(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, do, g, scale):
    return tuple(torch.empty_like(x) for x in (q, k, v, tq, tk, tv))


def _setup_fwd(ctx, inputs, output):
    q, k, v, scale = inputs
    o, o_lo, lse = output
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, o, o_lo, lse)


def _backward_fwd(ctx, do, _do_lo, _dlse):
    q, k, v, o, o_lo, lse = ctx.saved_tensors
    return (*attention_bwd(q, k, v, o, o_lo, lse, do.contiguous(), ctx.scale), None)


def _setup_jvp_fwd(ctx, inputs, output):
    q, k, v, tq, tk, tv, scale = inputs
    o, to, o_lo, lse, to_lo, mu = output
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, tq, tk, tv, o, o_lo, lse, to, to_lo, mu)


def _backward_jvp_fwd(ctx, do, g, _do_lo, _dlse, _dto_lo, _dmu):
    """One fused pass through O and Ȯ (docs/KERNEL.md §3); without G (Ȯ unused) the pass through O alone."""
    q, k, v, tq, tk, tv, o, o_lo, lse, to, to_lo, mu = ctx.saved_tensors
    if g is None:
        if do is None:
            return (None,) * 7
        return (*attention_bwd(q, k, v, o, o_lo, lse, do.contiguous(), ctx.scale), None, None, None, None)
    return (*attention_jvp_bwd(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo,
                               None if do is None else do.contiguous(), g.contiguous(), ctx.scale), None)


def _no_second_order(ctx, *grads):
    raise RuntimeError(_SECOND_ORDER)


attention_fwd.register_autograd(_backward_fwd, setup_context=_setup_fwd)
attention_jvp_fwd.register_autograd(_backward_jvp_fwd, setup_context=_setup_jvp_fwd)
attention_bwd.register_autograd(_no_second_order, setup_context=lambda ctx, inputs, output: None)
attention_jvp_bwd.register_autograd(_no_second_order, setup_context=lambda ctx, inputs, output: None)
