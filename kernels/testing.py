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


def jvp_with_grads(fn, primals, tangents, g1, g2, dtype=None) -> AttentionDerivatives:
    """Run ``torch.func.jvp(fn, primals, tangents)`` and back-propagate ⟨G1, O⟩ + ⟨G2, Ȯ⟩ to all six inputs.

    Inputs are cast to ``dtype`` (default: unchanged) and made leaves; the loss is accumulated in float64.
    """
    leaves = [x.detach().to(dtype or x.dtype).requires_grad_() for x in (*primals, *tangents)]
    o, to = torch.func.jvp(fn, tuple(leaves[:3]), tuple(leaves[3:]))
    loss = (o.double() * g1.double()).sum() + (to.double() * g2.double()).sum()
    grads = torch.autograd.grad(loss, leaves)
    return AttentionDerivatives(o.detach(), to.detach(), tuple(g.detach() for g in grads))


def relative_errors(result: AttentionDerivatives, reference: AttentionDerivatives, floor: float = 0.0) -> dict:
    """‖x − x_ref‖ / max(‖x_ref‖, floor·√numel) for each of the eight outputs, computed in float64.

    ``floor`` is an RMS below which an output counts as cancelled (see the tests for when that happens). The two
    may be on different devices (a GPU result against a CPU reference).
    """
    return {name: ((a.double().to(b.device) - b.double()).norm()
                   / max(b.double().norm().item(), floor * b.numel() ** 0.5)).item()
            for name, a, b in zip(NAMES, result.as_list(), reference.as_list())}
