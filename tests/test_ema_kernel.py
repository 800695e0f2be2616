"""kernels.ema.lerp_two_ (both EMAs in one pass) against float64 truth and against the two ``torch._foreach_lerp_``
calls it replaces: on a GPU when there is one, else in the Triton interpreter (tests/conftest.py sets it)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernels import ema
from kernels.ema import BLOCK, lerp_two_

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Sizes around the chunk length: empty, shorter than a chunk, whole chunks, a whole chunk plus a ragged tail.
SIZES = st.sampled_from([0, 1, 5, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 3])
WEIGHTS = st.sampled_from([0.0, 1e-4, 0.01, 0.3, 0.5, 0.7, 0.99, 1.0])


def exact_lerp(e: torch.Tensor, theta: torch.Tensor, w: float) -> torch.Tensor:
    """e + w (θ − e) in float64, from the tensors' stored values."""
    e, theta = e.double(), theta.double()
    return e + w * (theta - e)


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` at |x| (at least the smallest normal's)."""
    info = torch.finfo(dtype)
    exponent = torch.floor(torch.log2(x.abs().clamp_min(info.tiny)))
    return torch.exp2(exponent) * info.eps


GUARD = 64  # elements after each tensor, in the same allocation: a write past its end would change them


def tensors(shapes, dtype, gen, guard: float):
    """Random tensors, each the start of a buffer whose last ``GUARD`` elements are ``guard``."""
    out = []
    for rows, cols in shapes:
        buf = torch.cat([torch.randn(rows * cols, generator=gen).mul_(4), torch.full((GUARD,), guard)]).to(dtype)
        out.append(buf.to(DEVICE)[:rows * cols].view(rows, cols))
    return out


def guard_of(t: torch.Tensor) -> torch.Tensor:
    return t._base[-GUARD:]


@given(shapes=st.lists(st.tuples(SIZES, st.sampled_from([1, 3])), min_size=1, max_size=5),
       dtype=st.sampled_from(DTYPES), w_a=WEIGHTS, w_b=WEIGHTS, seed=st.integers(0, 2**16))
def test_lerp_two_matches_float64_and_foreach(shapes, dtype, w_a, w_b, seed):
    """Each result is within one unit in the last place of its dtype of the float64 lerp, plus float32's error
    bound for computing it (ε₃₂·(|e| + |θ|): θ − e, the product and the sum each rounded once), and so is
    ``torch._foreach_lerp_``'s; the weights are untouched, and nothing after a tensor's end is written."""
    gen = torch.Generator().manual_seed(seed)
    params = tensors(shapes, dtype, gen, guard=-4096.0)
    ema_a, ema_b = tensors(shapes, dtype, gen, guard=8192.0), tensors(shapes, dtype, gen, guard=8192.0)
    bound = [ulp(exact_lerp(e, p, w), dtype) + torch.finfo(torch.float32).eps * (e.double().abs() + p.double().abs())
             for es, w in ((ema_a, w_a), (ema_b, w_b)) for e, p in zip(es, params)]
    truth = [exact_lerp(e, p, w) for es, w in ((ema_a, w_a), (ema_b, w_b)) for e, p in zip(es, params)]
    foreach_a, foreach_b = [a.clone() for a in ema_a], [b.clone() for b in ema_b]
    torch._foreach_lerp_(foreach_a, params, w_a)
    torch._foreach_lerp_(foreach_b, params, w_b)
    kept = [p.clone() for p in params]
    lerp_two_(ema_a, ema_b, params, w_a, w_b)
    assert all(bool((guard_of(e) == 8192).all()) for e in ema_a + ema_b)  # nothing written past a tensor's end
    for got, foreach, exact, tol in zip(ema_a + ema_b, foreach_a + foreach_b, truth, bound):
        assert got.dtype == dtype
        assert bool(((got.double() - exact).abs() <= tol).all())
        assert bool(((foreach.double() - exact).abs() <= tol).all())
    assert all(torch.equal(p, k) for p, k in zip(params, kept))


@given(shapes=st.lists(st.tuples(SIZES, st.sampled_from([1, 3])), min_size=1, max_size=4),
       dtype=st.sampled_from(DTYPES), w_a=WEIGHTS, w_b=WEIGHTS, seed=st.integers(0, 2**16))
def test_a_set_skip_flag_writes_nothing_and_a_clear_one_changes_nothing(shapes, dtype, w_a, w_b, seed):
    """``skip`` = 1 (a step that turned out not finite): both averages stay bit for bit, even with non-finite
    weights; ``skip`` = 0: bit for bit the call without a flag."""
    gen = torch.Generator().manual_seed(seed)
    params = tensors(shapes, dtype, gen, guard=-4096.0)
    ema_a, ema_b = tensors(shapes, dtype, gen, guard=8192.0), tensors(shapes, dtype, gen, guard=8192.0)
    before = [e.clone() for e in ema_a + ema_b]
    nan_params = [torch.full_like(p, float("nan")) for p in params]
    lerp_two_(ema_a, ema_b, nan_params, w_a, w_b, skip=torch.ones((), device=DEVICE))
    assert all(torch.equal(e, b) for e, b in zip(ema_a + ema_b, before))
    plain_a, plain_b = [a.clone() for a in ema_a], [b.clone() for b in ema_b]
    lerp_two_(plain_a, plain_b, params, w_a, w_b)
    lerp_two_(ema_a, ema_b, params, w_a, w_b, skip=torch.zeros((), device=DEVICE))
    assert all(torch.equal(e, p) for e, p in zip(ema_a + ema_b, plain_a + plain_b))


def test_lerp_two_updates_parameters_of_modules_like_two_ema_updates():
    """The trainer's call: module parameters (generators), weights 1 − rate, float32: equal to ``ema_update``
    twice to one float32 unit."""
    from toy.models import MLP
    from tvm_theory.ema import ema_update
    torch.manual_seed(0)
    model, a, b, ref_a, ref_b = (MLP(2, 64, 3, 4).to(DEVICE) for _ in range(5))
    ref_a.load_state_dict(a.state_dict())
    ref_b.load_state_dict(b.state_dict())
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        lerp_two_(a.parameters(), b.parameters(), model.parameters(), 1 - 0.99, 1 - 0.9999)
        ema_update(ref_a, model, 0.99)
        ema_update(ref_b, model, 0.9999)
    pairs = [*zip(a.parameters(), ref_a.parameters()), *zip(b.parameters(), ref_b.parameters())]
    for got, ref in pairs:
        torch.testing.assert_close(got, ref, rtol=2.5e-7, atol=1e-7)
        assert not torch.equal(got, torch.zeros_like(got))


def test_a_new_set_of_tensors_gets_a_new_plan():
    """Plans are cached on addresses: the same tensors reuse theirs, new tensors (new addresses) get a checked one
    (a stale plan would write into freed memory)."""
    ema._PLANS.clear()
    p, a, b = torch.ones(7, device=DEVICE), torch.zeros(7, device=DEVICE), torch.zeros(7, device=DEVICE)
    lerp_two_([a], [b], [p], 0.5, 0.25)
    lerp_two_([a], [b], [p], 0.5, 0.25)
    assert len(ema._PLANS) == 1
    torch.testing.assert_close(a, torch.full((7,), 0.75, device=DEVICE))
    torch.testing.assert_close(b, torch.full((7,), 1 - 0.75**2, device=DEVICE))
    p2, a2, b2 = torch.full((3,), 2.0, device=DEVICE), torch.zeros(3, device=DEVICE), torch.zeros(3, device=DEVICE)
    lerp_two_([a2], [b2], [p2], 1.0, 0.5)
    assert len(ema._PLANS) == 2
    torch.testing.assert_close(a2, p2)
    torch.testing.assert_close(b2, torch.ones(3, device=DEVICE))


def test_lerp_two_rejects_bad_input():
    torch.set_default_device(DEVICE)
    try:
        _rejects_bad_input()
    finally:
        torch.set_default_device(None)


def _rejects_bad_input():
    p, a, b = torch.ones(16), torch.zeros(16), torch.zeros(16)
    with pytest.raises(ValueError, match="weight_a"):
        lerp_two_([a], [b], [p], 1.5, 0.1)
    with pytest.raises(ValueError, match="weight_b"):
        lerp_two_([a], [b], [p], 0.1, -0.1)
    with pytest.raises(ValueError, match="ema_b: expected 1 tensors"):
        lerp_two_([a], [], [p], 0.1, 0.1)
    with pytest.raises(ValueError, match=r"ema_a\[0\]: expected \(16,\)"):
        lerp_two_([torch.zeros(4, 4)], [b], [p], 0.1, 0.1)
    with pytest.raises(ValueError, match=r"ema_b\[0\].*torch.bfloat16"):
        lerp_two_([a], [b.bfloat16()], [p], 0.1, 0.1)
    with pytest.raises(TypeError, match=r"params\[0\]: expected one of"):
        lerp_two_([a.double()], [b.double()], [p.double()], 0.1, 0.1)
    with pytest.raises(ValueError, match=r"ema_a\[0\]: expected a contiguous"):
        lerp_two_([torch.zeros(4, 4).t()], [torch.zeros(4, 4)], [torch.ones(4, 4)], 0.1, 0.1)
    with pytest.raises(ValueError, match=r"params\[0\]: expected data at an address that is a multiple of 16"):
        lerp_two_([a[:15]], [b[:15]], [torch.ones(17)[1:16]], 0.1, 0.1)
    with pytest.raises(ValueError, match="skip: expected one element"):
        lerp_two_([a], [b], [p], 0.1, 0.1, skip=torch.zeros(2))
    lerp_two_([], [], [], 0.1, 0.1)  # nothing to do


def test_the_switch_refuses_the_cpu_without_the_interpreter(monkeypatch):
    from full_scale.config import load_config
    from full_scale.run import use_fused_ema
    cfg = load_config("tiny-digits", ["train.fused_ema=true"])
    monkeypatch.setattr(ema._config, "INTERPRET", True)
    assert use_fused_ema(cfg, torch.device("cpu")) is True
    assert use_fused_ema(load_config("tiny-digits", []), torch.device("cpu")) is False  # auto: CUDA only
    assert use_fused_ema(load_config("tiny-digits", []), torch.device("cuda")) is True
    monkeypatch.setattr(ema._config, "INTERPRET", False)
    with pytest.raises(ValueError, match="train.fused_ema"):
        use_fused_ema(cfg, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        lerp_two_([torch.zeros(2)], [torch.zeros(2)], [torch.ones(2)], 0.5, 0.5)
