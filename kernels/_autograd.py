"""autograd.Function wrappers that make the Triton kernels correct under autograd, ``torch.func.jvp`` and
``torch.autograd.forward_ad`` (docs/THEORY.md §9; structure from docs/KERNEL.md).

``_Attention`` computes O (and the base-2 log-sum-exp, and for fp16/bf16 O's low part, ``_forward``) and
back-propagates through O. Its ``jvp`` returns Ȯ through
``_AttentionTangent``, whose forward runs the tangent kernel and whose backward is the backward through Ȯ, so a loss
that depends on Ȯ sends gradients to q, k, v and to the tangents q̇, k̇, v̇. Kernels are launched only inside
``forward``/``backward`` (a launch inside ``jvp`` fails on functorch's wrapped tensors).
"""
import torch

from . import _backward, _forward


def _zeros_if_none(tangent, like):
    return torch.zeros_like(like) if tangent is None else tangent.to(like.dtype).contiguous()


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(q, k, v, scale):
        return _forward.forward(q, k, v, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        o, o_lo, lse = output
        ctx.scale = scale
        ctx.set_materialize_grads(False)  # no zero-filled gradients for lse, O_lo (or an unused O)
        ctx.mark_non_differentiable(o_lo, lse)
        ctx.save_for_backward(q, k, v, o, o_lo, lse)
        ctx.save_for_forward(q, k, v, o, o_lo, lse)

    @staticmethod
    def backward(ctx, do, _do_lo, _dlse):
        if do is None:
            return None, None, None, None
        q, k, v, o, o_lo, lse = ctx.saved_tensors
        dq, dk, dv = _backward.backward_primal(q, k, v, o, o_lo, lse, do.contiguous(), ctx.scale)
        return dq, dk, dv, None

    @staticmethod
    def jvp(ctx, tq, tk, tv, _tscale):
        q, k, v, o, o_lo, lse = ctx.saved_tensors
        tq, tk, tv = _zeros_if_none(tq, q), _zeros_if_none(tk, k), _zeros_if_none(tv, v)
        to, _to_lo, _mu = _AttentionTangent.apply(q, k, v, o.detach(), o_lo.detach(), lse.detach(), tq, tk, tv,
                                                  ctx.scale)
        return to, None, None


class _AttentionTangent(torch.autograd.Function):
    """Ȯ(q, k, v, q̇, k̇, v̇) given the primal pass's O, O_lo and lse (treated as constants: the backward accounts for
    O's dependence on q, k, v itself)."""

    @staticmethod
    def forward(q, k, v, o, o_lo, lse, tq, tk, tv, scale):
        return _forward.tangent(q, k, v, o, o_lo, lse, tq, tk, tv, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, o, o_lo, lse, tq, tk, tv, scale = inputs
        to, to_lo, mu = output
        ctx.scale = scale
        ctx.set_materialize_grads(False)  # no zero-filled gradients for Ȯ_lo, μ (or an unused Ȯ)
        ctx.mark_non_differentiable(to_lo, mu)
        ctx.save_for_backward(q, k, v, o, o_lo, lse, tq, tk, tv, to, to_lo, mu)

    @staticmethod
    def backward(ctx, g, _dto_lo, _dmu):
        if g is None:
            return (None,) * 10
        q, k, v, o, o_lo, lse, tq, tk, tv, to, to_lo, mu = ctx.saved_tensors
        dq, dk, dv, dtq, dtk, dtv = _backward.backward_tangent(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo,
                                                               g.contiguous(), ctx.scale)
        return dq, dk, dv, None, None, None, dtq, dtk, dtv, None
