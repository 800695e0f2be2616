"""Flash attention with a forward-mode JVP and a backward pass through it (docs/THEORY.md §9)."""
from .attention import attention, attention_jvp, transforms_active
from .reference import attention_reference, attention_reference_jvp

__all__ = ["attention", "attention_jvp", "attention_reference", "attention_reference_jvp", "transforms_active"]
