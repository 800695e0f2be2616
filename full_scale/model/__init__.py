"""The semi-Lipschitz Diffusion Transformer (docs/THEORY.md §2, §8): ``dit`` is the network, ``dual`` its
hand-written tangent (forward-mode derivative in s)."""
from .dit import SIZES, DiT, DiTConfig, dit_config

__all__ = ["SIZES", "DiT", "DiTConfig", "dit_config"]
