"""kernels.ema.lerp_two_ over every parameter of DiT-XL/2 (marked `gpu`, skipped without CUDA): 678 M float32 weights
in 331 k chunks of 2048, the trainer's two rates, against two ``torch._foreach_lerp_`` calls on the same GPU.

Each result may be off the exact lerp by one float32 unit plus float32's error bound for computing it, ε₃₂·(|e| + |θ|)
(tests/test_ema_kernel.py checks that bound against float64 on small tensors), so the two results may differ by twice
that: 2·(ε₃₂·|foreach| + ε₃₂·(|e| + |θ|)) per element."""
import pytest
import torch

from full_scale.model import DiT, dit_config
from kernels.ema import lerp_two_

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lerp_two_over_dit_xl_matches_two_foreach_lerps():
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = [p.shape for p in DiT(dit_config("DiT-XL/2")).parameters()]
    params = [torch.randn(s, device="cuda") for s in shapes]
    ema_a = [torch.randn_like(p) for p in params]
    ema_b = [torch.randn_like(p) for p in params]
    bound_a = [torch.finfo(torch.float32).eps * (e.abs() + p.abs()) for e, p in zip(ema_a, params)]
    bound_b = [torch.finfo(torch.float32).eps * (e.abs() + p.abs()) for e, p in zip(ema_b, params)]
    ref_a, ref_b = [e.clone() for e in ema_a], [e.clone() for e in ema_b]
    torch._foreach_lerp_(ref_a, params, 1 - 0.99)
    torch._foreach_lerp_(ref_b, params, 1 - 0.9999)
    lerp_two_(ema_a, ema_b, params, 1 - 0.99, 1 - 0.9999)
    worst = 0.0  # largest |fused − foreach| as a fraction of the bound
    for got, ref, bound in zip(ema_a + ema_b, ref_a + ref_b, bound_a + bound_b):
        allowed = 2 * (bound + torch.finfo(torch.float32).eps * ref.abs())
        worst = max(worst, float(((got - ref).abs() / allowed).max()))
    print(f"{sum(p.numel() for p in params) / 1e6:.1f} M weights; largest difference {worst:.3g} of the bound")
    assert worst <= 1.0
