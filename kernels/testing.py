"""Helpers shared by the tests and the benchmark: the full set of attention derivatives in one call."""
from dataclasses import dataclass

import torch


@dataclass
class AttentionDerivatives:
    """O, its tangent Ȯ, and the gradients of ⟨G1, O⟩ + ⟨G2, Ȯ⟩ with respect to q, k, v, q̇, k̇, v̇."""

    o: torch.Tensor
    to: torch.Tensor
    grads: tuple

    def as_list(self):
        return [self.o, self.to, *self.grads]


NAMES = ("O", "tO", "dq", "dk", "dv", "dtq", "dtk", "dtv")


def with_grads(fn, inputs, g1, g2, dtype=None) -> AttentionDerivatives:
    """(O, Ȯ) = ``fn(q, k, v, q̇, k̇, v̇)`` (``attention_jvp``'s signature) and the gradients of ⟨G1, O⟩ + ⟨G2, Ȯ⟩
    with respect to all six inputs.

    Inputs are cast to ``dtype`` (default: unchanged) and made leaves; the loss is accumulated in float64. G1 or G2
    None leaves its term out of the loss, so that output's backward receives no gradient at all (not zeros); a
    gradient that autograd leaves undefined (an input the loss does not reach) is returned as zeros.
    """
    if g1 is None and g2 is None:
        raise ValueError("with_grads: G1 and G2 are both None (no loss to differentiate)")
    leaves = [x.detach().to(dtype or x.dtype).requires_grad_() for x in inputs]
    o, to = fn(*leaves)
    loss = sum((y.double() * g.double()).sum() for y, g in ((o, g1), (to, g2)) if g is not None)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return AttentionDerivatives(o.detach(), to.detach(),
                                tuple(torch.zeros_like(x) if g is None else g.detach() for g, x in zip(grads, leaves)))


def jvp_with_grads(fn, primals, tangents, g1, g2, dtype=None) -> AttentionDerivatives:
    """:func:`with_grads` of ``torch.func.jvp(fn, primals, tangents)``: O, Ȯ and the gradients of
    ⟨G1, O⟩ + ⟨G2, Ȯ⟩ to the primals and the tangents."""
    return with_grads(lambda q, k, v, tq, tk, tv: torch.func.jvp(fn, (q, k, v), (tq, tk, tv)), (*primals, *tangents),
                      g1, g2, dtype)


def relative_errors(result: AttentionDerivatives, reference: AttentionDerivatives, floor: float = 0.0) -> dict:
    """‖x − x_ref‖ / max(‖x_ref‖, floor·√numel) for each of the eight outputs, computed in float64.

    ``floor`` is an RMS below which an output counts as cancelled (see the tests for when that happens). The two
    may be on different devices (a GPU result against a CPU reference).
    """
    return {name: ((a.double().to(b.device) - b.double()).norm()
                   / max(b.double().norm().item(), floor * b.numel() ** 0.5)).item()
            for name, a, b in zip(NAMES, result.as_list(), reference.as_list())}
