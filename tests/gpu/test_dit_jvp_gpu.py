"""GPU checks of the trainer's fast path (marked `gpu`, skipped without CUDA). Issue 10.

DiT.forward_and_ds with the Triton attention (eager and with compiled blocks, where the kernel runs between graphs)
against the same function with the reference attention and against float64 torch.func.jvp, values, tangents and
the gradients of ⟨G1, F⟩ + ⟨G2, ∂_s F⟩ to every parameter. Relative Frobenius errors per tensor; fp32 → 1e-4
(the decisive check: a wrong gradient shows as ≥ 1e-2); bf16 autocast → 0.15, a sanity bound only (bf16 rounding
alone gave up to 6% on small-norm gradients in a CPU run of this file).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from full_scale.models import DiT, dit_config  # noqa: E402

pytestmark = pytest.mark.gpu


SIZES = {"small": dict(input_size=8, hidden_size=32, depth=2, num_heads=2),  # wrong CPU-inductor gradients here
         "d64": dict(input_size=16, hidden_size=128, depth=2, num_heads=2),
         "xl-block": dict(input_size=32, hidden_size=1152, depth=2, num_heads=18)}  # DiT-XL/2's block, 256 tokens


def model_and_inputs(seed=0, size="d64"):
    torch.manual_seed(seed)
    cfg = SIZES[size]
    model = DiT(dit_config(in_channels=4, patch_size=2, num_classes=10, lipschitz=True, **cfg)).cuda()
    with torch.no_grad():  # non-zero adaLN and output layers
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    side = cfg["input_size"]
    x = torch.randn(4, 4, side, side, device="cuda", generator=g)
    t = torch.rand(4, device="cuda", generator=g)
    s = t * torch.rand(4, device="cuda", generator=g)
    y = torch.randint(0, 11, (4,), device="cuda", generator=g)
    return model, (x, t, s, y), torch.randn_like(x), torch.randn_like(x)


def derivatives(model, inputs, g1, g2, autocast=False):
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        value, ds = model.forward_and_ds(*inputs)
    ((value.double() * g1).sum() + (ds.double() * g2).sum()).backward()
    return [value.detach().double(), ds.detach().double(), *(p.grad.double().clone() for p in model.parameters())]


def max_rel_error(got, ref):
    return max(float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in zip(got, ref))


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("autocast", [False, True])
def test_triton_eager_and_compiled_blocks_match_the_reference(autocast, size):
    """The check the trainer's default path (compiled blocks, Triton attention) needs on GPUs: its gradients, not
    only its values, against eager blocks with the reference attention (inductor's CPU code failed exactly this)."""
    torch._dynamo.reset()
    model, inputs, g1, g2 = model_and_inputs(size=size)
    with model.attention_backend("reference"):
        ref = derivatives(model, inputs, g1, g2, autocast)
    with model.attention_backend("triton"):
        eager = derivatives(model, inputs, g1, g2, autocast)
        model.compile_blocks(dynamic=False)
        compiled = derivatives(model, inputs, g1, g2, autocast)
    tol = 0.15 if autocast else 1e-4
    assert max_rel_error(eager, ref) < tol
    assert max_rel_error(compiled, ref) < tol


def test_manual_jvp_on_gpu_matches_float64_func_jvp():
    model, inputs, g1, g2 = model_and_inputs(3)
    with model.attention_backend("triton"):
        got = derivatives(model, inputs, g1, g2)
    model64 = model.double()
    x, t, s, y = inputs
    x, t, s = x.double(), t.double(), s.double()
    with model64.attention_backend("reference"):
        model64.zero_grad()
        value, ds = torch.func.jvp(lambda s_: model64(x, t, s_, y), (s,), (torch.ones_like(s),))
        ((value * g1.double()).sum() + (ds * g2.double()).sum()).backward()
    ref = [value.detach(), ds.detach(), *(p.grad.clone() for p in model64.parameters())]
    assert max_rel_error(got, ref) < 1e-3  # fp32 run (TF32 as configured) against float64
