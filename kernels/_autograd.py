"""autograd.Function wrappers that make the Triton kernels correct under autograd, ``torch.func.jvp`` and
``torch.autograd.forward_ad``, and under every ``torch.func`` transform (docs/THEORY.md §9; docs/KERNEL.md §6).

``_Attention`` computes O (and the base-2 log-sum-exp, and for fp16/bf16 O's low part, ``_forward``) and
back-propagates through O. Its ``jvp`` returns Ȯ through ``_AttentionTangent``, whose forward runs the tangent kernel
and whose backward is the backward through Ȯ, so a loss that depends on Ȯ sends gradients to q, k, v and to the
tangents q̇, k̇, v̇. On this path (``torch.func.jvp`` of ``attention``) autograd calls the two backward passes
separately: 7 + 18 block products.

``_AttentionWithTangent`` (``attention_jvp``, explicit tangents) computes O and Ȯ in one Function, so its backward
receives (dO, dȮ) together and runs the fused backward (``_backward.backward_fused``: 21 block products, one
pre-pass, one key-side and one query-side launch), or the single pass of the one cotangent given.

Kernels are launched only inside the ``forward`` of a Function: under ``torch.func`` transforms the ``jvp``,
``backward`` and ``vmap`` staticmethods see functorch's wrapped tensors, which have no memory a kernel can read, while
a Function's ``forward`` gets them unwrapped. So ``jvp`` applies ``_AttentionTangent``, and each ``backward`` applies
``_PrimalGrad``, ``_TangentGrad`` or ``_FusedGrad``, whose ``forward`` launches the backward kernels
(:func:`_kernel_grad`): that makes ``torch.func.vjp`` and ``grad`` work through the kernels. Every Function also has a
``vmap`` rule (:func:`_fold_vmap`: the vmapped dimension joins the batch), so ``torch.vmap``, ``jacrev`` and
``jacfwd`` work too. Second derivatives through the backward kernels are not implemented: they raise; so do
forward-mode derivatives of ``_AttentionWithTangent`` (a tangent of Ȯ is a second derivative of attention).
"""
import torch

from . import _backward, _forward

try:  # what torch.autograd.Function.apply calls (torch/autograd/function.py), for _Folded.apply
    from torch._functorch.autograd_function import custom_function_call as _custom_function_call
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers

    _transforms_active = torch._C._are_functorch_transforms_active
except (ImportError, AttributeError):  # another PyTorch layout: fall back to Function.apply
    _custom_function_call = None


def _fold_vmap(apply, info, in_dims, *args):
    """vmap rule shared by the Functions: the vmapped dimension (size V) joins the leading one and the Function is
    applied once to the result (``apply``: its own ``apply``, so transforms outside the vmap still see it), one launch
    for all V: (V, B, H, S, D) → (V·B, H, S, D) and row statistics (V, B·H, S) → (V·B·H, S); an input not
    vmapped is repeated V times; an empty low part (fp32) stays empty; a non-tensor argument (None, the scale) is
    passed as it is. Outputs come back with V in front, a None output (``_FusedGrad``'s missing gradients) as None."""
    size = info.batch_size
    folded = []
    for a, dim in zip(args, in_dims):
        if torch.is_tensor(a):
            a = a.expand(size, *a.shape) if dim is None else a.movedim(dim, 0)
            a = a.reshape(size * a.shape[1], *a.shape[2:]).contiguous()
        folded.append(a)
    outs = apply(*folded)
    unfolded = tuple(None if o is None else o.reshape(size, -1, *o.shape[1:]) if o.numel() else o.new_empty(size, 0)
                     for o in outs)
    return unfolded, tuple(None if o is None else 0 for o in unfolded)


class _Folded(torch.autograd.Function):
    """A Function whose ``vmap`` rule is :func:`_fold_vmap` with its own ``apply``.

    ``apply`` is ``torch.autograd.Function.apply`` less its first step: for a Function with a ``setup_context``,
    PyTorch binds every call's arguments to ``forward``'s signature (``inspect.signature(forward).bind``, to fill in
    default values), 15–26 µs of host time per application on the CPU; the ``torch.func.jvp`` path applies our
    Functions four times per call. Ours take positional arguments only and have no defaults, so the binding changes
    nothing and is skipped; the rest is the same: outside ``torch.func`` transforms, dead functorch wrappers are
    unwrapped and the Function applied; inside, it goes through PyTorch's ``custom_function_call``."""

    @classmethod
    def apply(cls, *args):
        if _custom_function_call is None:
            return super().apply(*args)
        if not _transforms_active():
            return super(torch.autograd.Function, cls).apply(*_unwrap_dead_wrappers(args))
        return _custom_function_call(cls, *args)

    @classmethod
    def vmap(cls, info, in_dims, *args):
        return _fold_vmap(cls.apply, info, in_dims, *args)


def _zeros_if_none(tangent, like):
    return torch.zeros_like(like) if tangent is None else tangent.to(like.dtype).contiguous()


class _Attention(_Folded):
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
        dq, dk, dv = _kernel_grad(_PrimalGrad, q, k, v, o, o_lo, lse, do.contiguous(), ctx.scale)
        return dq, dk, dv, None

    @staticmethod
    def jvp(ctx, tq, tk, tv, _tscale):
        q, k, v, o, o_lo, lse = ctx.saved_tensors
        tq, tk, tv = _zeros_if_none(tq, q), _zeros_if_none(tk, k), _zeros_if_none(tv, v)
        to, _to_lo, _mu = _AttentionTangent.apply(q, k, v, o.detach(), o_lo.detach(), lse.detach(), tq, tk, tv,
                                                  ctx.scale)
        return to, None, None


class _AttentionTangent(_Folded):
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
        dq, dk, dv, dtq, dtk, dtv = _kernel_grad(_TangentGrad, q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo,
                                                 g.contiguous(), ctx.scale)
        return dq, dk, dv, None, None, None, dtq, dtk, dtv, None


class _AttentionWithTangent(_Folded):
    """(O, Ȯ, O_lo, lse, Ȯ_lo, μ)(q, k, v, q̇, k̇, v̇): the forward and tangent kernels in one Function, for explicit
    tangents (``attention_jvp``). Its backward gets both upstream gradients (dO, dȮ) at once and runs the fused
    backward, ``_backward.backward_fused`` (docs/KERNEL.md §3): the gradients of ⟨dO, O⟩ + ⟨dȮ, Ȯ⟩ to all six
    inputs in one pass instead of the two of ``_Attention`` and ``_AttentionTangent``. O_lo, lse, Ȯ_lo and μ are
    not differentiable."""

    @staticmethod
    def forward(q, k, v, tq, tk, tv, scale):
        return _forward.forward_and_tangent(q, k, v, tq, tk, tv, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, tq, tk, tv, scale = inputs
        o, to, o_lo, lse, to_lo, mu = output
        ctx.scale = scale
        ctx.set_materialize_grads(False)  # an unused O or Ȯ sends None, not zeros: the fused pass drops its terms
        ctx.mark_non_differentiable(o_lo, lse, to_lo, mu)
        ctx.save_for_backward(q, k, v, tq, tk, tv, o, o_lo, lse, to, to_lo, mu)

    @staticmethod
    def backward(ctx, do, g, _do_lo, _dlse, _dto_lo, _dmu):
        if do is None and g is None:
            return (None,) * 7
        q, k, v, tq, tk, tv, o, o_lo, lse, to, to_lo, mu = ctx.saved_tensors
        grads = _kernel_grad(_FusedGrad, q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo,
                             None if do is None else do.contiguous(), None if g is None else g.contiguous(), ctx.scale)
        return (*grads, None)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_FORWARD_OF_TANGENT)


_SECOND_ORDER = ("kernels.attention: second derivatives through the Triton backward are not implemented "
                 "(backend='reference' has them)")
_FORWARD_OF_TANGENT = ("kernels.attention_jvp: forward-mode derivatives of (O, Ȯ) are not implemented in the Triton "
                       "backend (Ȯ's would be second derivatives of attention; backend='reference' has them)")


def _kernel_grad(function, *args):
    """``function``'s backward kernel on ``args``: through the Function when the backward itself may be recorded or
    transformed (grad mode on, as with ``create_graph=True``, or functorch's wrapped tensors in ``args``), else the
    kernel directly (a plain ``backward()``: no Function needed, and its host time saved)."""
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor  # no public test for "inside a torch.func transform"
    if torch.is_grad_enabled() or any(torch.is_tensor(a) and wrapped(a) for a in args):
        return function.apply(*args)
    return function.forward(*args)


class _KernelGrad(_Folded):
    """A backward kernel as a Function of its inputs (module docstring): its ``forward`` runs ``kernel`` on plain
    tensors; it has no derivative of its own."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_SECOND_ORDER)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_SECOND_ORDER)


class _PrimalGrad(_KernelGrad):
    """(dQ, dK, dV) of ⟨dO, O⟩: ``_backward.backward_primal``."""

    @staticmethod
    def forward(q, k, v, o, o_lo, lse, do, scale):
        return _backward.backward_primal(q, k, v, o, o_lo, lse, do, scale)


class _TangentGrad(_KernelGrad):
    """(dQ, dK, dV, dQ̇, dK̇, dV̇) of ⟨G, Ȯ⟩: ``_backward.backward_tangent``."""

    @staticmethod
    def forward(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, g, scale):
        return _backward.backward_tangent(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, g, scale)


class _FusedGrad(_KernelGrad):
    """(dQ, dK, dV, dQ̇, dK̇, dV̇) of ⟨dO, O⟩ + ⟨G, Ȯ⟩ in one pass, dO or G possibly None (then (dQ̇, dK̇, dV̇) are
    None without G): ``_backward.backward_fused``."""

    @staticmethod
    def forward(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, do, g, scale):
        return _backward.backward_fused(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, do, g, scale)
