"""Flash attention with a forward-mode JVP and a backward pass through it (THEORY.md §9)."""
from .attention import attention
from .reference import attention_reference

__all__ = ["attention", "attention_reference"]
