"""Which of verify's diagnostics count: one rule, used by the report, its figures and the GPU study's rows."""
from __future__ import annotations

SENS_IDENTITY_MAX = 0.5  # the sensitivity integral counts only where its identity check closes to 50% of the error


def sensitivity_resolved(identity_rel: float) -> bool:
    """Whether the directional sensitivity integral's own identity check closes to ``SENS_IDENTITY_MAX`` of the paired
    error it reconstructs. Beyond that the quadrature in σ has not resolved the path (e.g. where a multimodal flow
    splits mass, docs/THEORY.md §6.1) and the integral is not the quantity it names."""
    return identity_rel <= SENS_IDENTITY_MAX


def resolved_sensitivity(theorem: dict) -> float | None:
    """The directional sensitivity integral ∫‖∂_xψ ρ‖ of a ``theorem`` entry of verify.json, or None where it is not
    resolved (:func:`sensitivity_resolved`)."""
    sens = theorem["sensitivity_directional"]
    return sens["bound"] if sensitivity_resolved(sens["identity_rel"]) else None
