"""autograd.Function wrappers that make the Triton kernels correct under autograd, ``torch.func.jvp`` and
``torch.autograd.forward_ad`` (THEORY.md §9; structure from /work/shared/KERNEL_NOTES.md).

``_Attention`` computes O (and the base-2 log-sum-exp) and back-propagates through O. Its ``jvp`` returns Ȯ through
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
        o, lse = output
        ctx.scale = scale
        ctx.set_materialize_grads(False)  # no zero-filled gradients for lse (or an unused O)
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.save_for_forward(q, k, v, o, lse)

    @staticmethod
    def backward(ctx, do, _dlse):
        if do is None:
            return None, None, None, None
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward.backward_primal(q, k, v, o, lse, do.contiguous(), ctx.scale)
        return dq, dk, dv, None

    @staticmethod
    def jvp(ctx, tq, tk, tv, _tscale):
        q, k, v, o, lse = ctx.saved_tensors
        tq, tk, tv = _zeros_if_none(tq, q), _zeros_if_none(tk, k), _zeros_if_none(tv, v)
        to, _mu = _AttentionTangent.apply(q, k, v, o.detach(), lse.detach(), tq, tk, tv, ctx.scale)
        return to, None


class _AttentionTangent(torch.autograd.Function):
    """Ȯ(q, k, v, q̇, k̇, v̇) given the primal pass's O and lse (treated as constants: the backward accounts for O's
    dependence on q, k, v itself)."""

    @staticmethod
    def forward(q, k, v, o, lse, tq, tk, tv, scale):
        return _forward.tangent(q, k, v, o, lse, tq, tk, tv, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, o, lse, tq, tk, tv, scale = inputs
        to, mu = output
        ctx.scale = scale
        ctx.set_materialize_grads(False)  # no zero-filled gradients for μ (or an unused Ȯ)
        ctx.mark_non_differentiable(mu)
        ctx.save_for_backward(q, k, v, o, lse, tq, tk, tv, to, mu)

    @staticmethod
    def backward(ctx, g, _dmu):
        if g is None:
            return (None,) * 9
        q, k, v, o, lse, tq, tk, tv, to, mu = ctx.saved_tensors
        dq, dk, dv, dtq, dtk, dtv = _backward.backward_tangent(q, k, v, o, lse, mu, tq, tk, tv, to, g.contiguous(),
                                                               ctx.scale)
        return dq, dk, dv, None, None, dtq, dtk, dtv, None
