"""``kernels.attention`` and ``attention_jvp`` with ``in_graph=True``: the kernels as ``torch.library`` custom operators
(kernels/_ops.py), which ``torch.compile`` keeps inside its graph (docs/KERNEL.md §7).

Checked on the CPU interpreter (fp32) and on a GPU alike: the same values and gradients as the default path (the
autograd Functions), with either output unused; ``torch.library.opcheck`` of the four operators (schema, fake
tensors, autograd registration, AOT dispatch); one Dynamo graph without a break (``fullgraph=True``), where the
default path breaks; and a clear error under forward AD and ``torch.func`` transforms, where PyTorch would give a
custom operator a zero tangent without one.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kernels import _ops, attention, attention_jvp  # noqa: E402
from kernels.testing import with_grads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(seed, b=1, h=2, sq=24, sk=19, d=24, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, h, sq, d), (b, h, sk, d), (b, h, sk, d)] * 2
    return [torch.randn(s, generator=g).to(DEVICE).requires_grad_(requires_grad) for s in shapes]


def _jvp_call(in_graph):
    return lambda *xs: attention_jvp(*xs, backend="triton", in_graph=in_graph)


def _plain_call(in_graph):
    """attention(q, k, v) in with_grads' (O, Ȯ) form: the second output is a placeholder that no loss term uses."""
    return lambda q, k, v, *tangents: (attention(q, k, v, backend="triton", in_graph=in_graph), q.sum() * 0)


@settings(max_examples=6)
@given(b=st.integers(1, 2), h=st.integers(1, 2), sq=st.integers(1, 40), sk=st.integers(1, 40),
       d=st.sampled_from([16, 24, 40]), unused=st.sampled_from(["none", "O", "tO"]), seed=st.integers(0, 2 ** 16))
def test_in_graph_equals_the_default_path(b, h, sq, sk, d, unused, seed):
    """O, Ȯ and the six gradients of ⟨G1, O⟩ + ⟨G2, Ȯ⟩ (one term left out when an output is unused: the fused
    backward, or the pass through O or Ȯ alone), and the plain call's O and gradients, equal the Functions' within
    fp32 rounding (the same kernels run; the operators may get a zero cotangent where the Functions get none)."""
    inputs = _inputs(seed, b, h, sq, sk, d)
    g = torch.Generator().manual_seed(seed + 1)
    g1, g2 = (torch.randn(b, h, sq, d, generator=g).to(DEVICE) for _ in range(2))
    g1, g2 = (None if unused == "O" else g1), (None if unused == "tO" else g2)
    for call, cotangents in ((_jvp_call, (g1, g2)), (_plain_call, (g1 if g1 is not None else g2, None))):
        want = with_grads(call(False), inputs, *cotangents).as_list()
        got = with_grads(call(True), inputs, *cotangents).as_list()
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_the_operators_pass_opcheck():
    q, k, v, tq, tk, tv = _inputs(0, requires_grad=True)
    o, to, o_lo, lse, to_lo, mu = _ops.attention_jvp_fwd(q, k, v, tq, tk, tv, 0.3)
    plain = _ops.attention_fwd(q, k, v, 0.3)
    detached = [x.detach() for x in (q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo)]
    do, g = torch.randn_like(o), torch.randn_like(o)
    cases = [
        (torch.ops.kernels.attention_fwd.default, (q, k, v, 0.3)),
        (torch.ops.kernels.attention_jvp_fwd.default, (q, k, v, tq, tk, tv, 0.3)),
        (torch.ops.kernels.attention_bwd.default, (*detached[:3], plain[0].detach(), plain[1].detach(),
                                                    plain[2].detach(), do, 0.3)),
        (torch.ops.kernels.attention_jvp_bwd.default, (*detached, do, g, 0.3)),
        (torch.ops.kernels.attention_jvp_bwd.default, (*detached, None, g, 0.3)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def _block(in_graph):
    """Attention with explicit tangents and a plain call beside it, as the DiT's Block.jvp makes them."""
    def fn(q, k, v, tq, tk, tv):
        o, to = attention_jvp(q, k, v, tq, tk, tv, backend="triton", in_graph=in_graph)
        o2 = attention(2 * q, k, v, backend="triton", in_graph=in_graph)
        return torch.tanh(o) * 2, to + 1, o2.square()
    return fn


def test_one_graph_without_a_break_and_the_same_derivatives():
    """fullgraph=True compiles the in-graph calls (Dynamo and AOTAutograd, backend aot_eager: no C compiler) and the
    results equal eager; the default calls break the graph, so fullgraph=True refuses them."""
    torch._dynamo.reset()
    inputs = _inputs(3, requires_grad=True)

    def derivatives(fn):
        outs = fn(*inputs)
        loss = sum((y * torch.cos(torch.arange(y.numel(), device=DEVICE).view_as(y))).sum() for y in outs)
        return [*outs, *torch.autograd.grad(loss, inputs)]

    eager = derivatives(_block(True))
    compiled = derivatives(torch.compile(_block(True), backend="aot_eager", fullgraph=True))
    for x, y in zip(compiled, eager):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(eager, derivatives(_block(False))):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="(?i)disable|skip"):
        torch.compile(_block(False), backend="aot_eager", fullgraph=True)(*inputs)


@pytest.mark.parametrize("transform", ["func.jvp", "forward_ad", "vmap", "func.grad"])
@pytest.mark.parametrize("plain", [True, False])
def test_forward_ad_and_transforms_raise(transform, plain):
    """Under forward AD PyTorch gives a custom operator without a forward rule a zero (torch.func.jvp) or missing
    (forward_ad) tangent and no error; the in-graph path refuses forward AD and every torch.func transform."""
    q, k, v, tq, tk, tv = _inputs(5)

    def f(q):
        if plain:
            return attention(q, k, v, backend="triton", in_graph=True)
        return attention_jvp(q, k, v, tq, tk, tv, backend="triton", in_graph=True)[1]

    with pytest.raises(RuntimeError, match="reverse mode only"):
        if transform == "func.jvp":
            torch.func.jvp(f, (q,), (tq,))
        elif transform == "forward_ad":
            with torch.autograd.forward_ad.dual_level():
                f(torch.autograd.forward_ad.make_dual(q, tq))
        elif transform == "vmap":
            torch.vmap(f)(q[None])
        else:
            torch.func.grad(lambda q: f(q).sum())(q)


def test_the_reference_backend_ignores_in_graph():
    q, k, v, tq, tk, tv = _inputs(7)
    torch.testing.assert_close(attention(q, k, v, backend="reference", in_graph=True),
                               attention(q, k, v, backend="reference"), rtol=0, atol=0)
    for x, y in zip(attention_jvp(q, k, v, tq, tk, tv, backend="reference", in_graph=True),
                    attention_jvp(q, k, v, tq, tk, tv, backend="reference")):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
