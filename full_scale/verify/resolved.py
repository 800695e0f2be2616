"""Which of verify's diagnostics count: one rule, used by the report, its figures and the GPU study's rows."""
from __future__ import annotations

SENS_IDENTITY_MAX = 0.5  # the sensitivity integral counts only where its identity check closes to 50% of the error


def resolved_sensitivity(theorem: dict) -> float | None:
    """The directional sensitivity integral ∫‖∂_xψ ρ‖ of a ``theorem`` entry of verify.json, or None when its own
    identity check misses by more than ``SENS_IDENTITY_MAX`` (relative to the paired error it reconstructs): then the
    quadrature in σ has not resolved the path (e.g. where a multimodal flow splits mass, docs/THEORY.md §6.1) and the
    value is not the quantity it names."""
    sens = theorem["sensitivity_directional"]
    return sens["bound"] if sens["identity_rel"] <= SENS_IDENTITY_MAX else None
