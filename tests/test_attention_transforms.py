"""kernels.attention under every torch.func transform, against the float64 reference attention (docs/THEORY.md §9).

The Triton backend runs its kernels only inside Functions' ``forward`` (kernels/_autograd.py), so ``vjp``, ``grad``,
``jacrev``, ``jacfwd``, ``vmap`` and their compositions (the gradient of a JVP's tangent, what a TVM loss needs) see
plain tensors in the kernels. Runs through TRITON_INTERPRET=1 on the CPU (fp32, tiny ragged sizes).
"""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import attention, attention_jvp  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=2e-5, atol=2e-5)  # fp32 kernels against float64 math on the same inputs


def tri(q, k, v):
    return attention(q, k, v, backend="triton")


def ref(q, k, v):
    return attention(q.double(), k.double(), v.double(), backend="reference")


def close(got, want):
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(a.double(), b.double(), **TOL)


shapes = st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 20), st.integers(1, 20),
                   st.sampled_from([16, 24]))  # (B, H, S_q, S_k, D), ragged against 16-wide blocks


def inputs(shape, seed, n=3):
    b, h, sq, sk, d = shape
    g = torch.Generator().manual_seed(seed)
    dims = [(b, h, sq, d), (b, h, sk, d), (b, h, sk, d)] * (n // 3) + [(b, h, sq, d)] * (n % 3)
    return [torch.randn(*s, generator=g).to(DEVICE) for s in dims]


@settings(max_examples=12, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_vjp_grad_and_the_gradient_of_a_jvp_tangent(shape, seed):
    q, k, v, tq, tk, tv, g = inputs(shape, seed, n=7)
    o, pull = torch.func.vjp(tri, q, k, v)
    o64, pull64 = torch.func.vjp(ref, q, k, v)
    close(o, o64)
    close(pull(g), pull64(g.double()))
    close(torch.func.grad(lambda q: (tri(q, k, v) * g).sum())(q),
          torch.func.grad(lambda q: (ref(q, k, v) * g.double()).sum())(q.double()))

    def tangent_loss(f, dtype):  # ⟨g, Ȯ⟩ as a function of (q, k, v): the TVM loss's shape of use
        def loss(q, k, v):
            _, to = torch.func.jvp(f, (q, k, v), (tq.to(dtype), tk.to(dtype), tv.to(dtype)))
            return (to * g.to(dtype)).sum()
        return loss

    close(torch.func.grad(tangent_loss(tri, torch.float32), argnums=(0, 1, 2))(q, k, v),
          torch.func.grad(tangent_loss(ref, torch.float64), argnums=(0, 1, 2))(q.double(), k.double(), v.double()))


@settings(max_examples=6, deadline=None)
@given(shape=st.tuples(st.just(1), st.integers(1, 2), st.integers(1, 6), st.integers(1, 6), st.just(16)),
       seed=st.integers(0, 2**16))
def test_jacrev_and_jacfwd(shape, seed):  # small: a Jacobian's rows (up to 192 for jacfwd) join the batch
    q, k, v = inputs(shape, seed)
    want = torch.func.jacrev(lambda q: ref(q, k, v).sum(-1))(q.double())
    close(torch.func.jacrev(lambda q: tri(q, k, v).sum(-1))(q), want)
    close(torch.func.jacfwd(lambda v: tri(q, k, v).sum(-1))(v),
          torch.func.jacfwd(lambda v: ref(q, k, v).sum(-1))(v.double()))


@settings(max_examples=8, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), n=st.integers(1, 3), dim=st.integers(0, 4))
def test_vmap_over_any_dimension_and_unbatched_inputs(shape, seed, n, dim):
    q, k, v = inputs(shape, seed)
    qs = torch.stack([q * (i + 1) for i in range(n)], dim=dim)  # a vmapped q; k, v shared
    got = torch.vmap(tri, in_dims=(dim, None, None))(qs, k, v)
    close(got, torch.stack([ref(q * (i + 1), k, v) for i in range(n)]))
    o, to = torch.vmap(lambda q: torch.func.jvp(tri, (q, k, v), (q, k, v)), in_dims=dim)(qs)
    for i in range(n):
        o_i, to_i = torch.func.jvp(ref, (q * (i + 1), k, v), (q * (i + 1), k, v))
        close((o[i], to[i]), (o_i, to_i.double()))


def test_second_derivatives_through_the_kernels_say_they_are_not_implemented():
    q, k, v = (x.requires_grad_() for x in inputs((1, 1, 5, 7, 16), 0))
    (gq,) = torch.autograd.grad(tri(q, k, v).pow(2).sum(), q, create_graph=True)  # first order: still exact
    close(gq, torch.autograd.grad(ref(q, k, v).pow(2).sum(), q)[0])
    with pytest.raises(RuntimeError, match="second derivatives through the Triton backward are not implemented"):
        torch.autograd.grad(gq.sum(), k)
    with pytest.raises(RuntimeError, match="second derivatives through the Triton backward are not implemented"):
        torch.func.hessian(lambda q: tri(q, k.detach(), v.detach()).sum())(q.detach())


def tri_jvp(*x):
    return attention_jvp(*x, backend="triton")


def ref_jvp(*x):
    return attention_jvp(*(a.double() for a in x), backend="reference")


@settings(max_examples=8, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), n=st.integers(1, 3))
def test_explicit_tangent_call_under_vjp_grad_and_vmap(shape, seed, n):
    """attention_jvp's one Function for O and Ȯ (fused backward) under torch.func: ``vjp`` with both cotangents,
    ``grad`` of a loss of Ȯ alone and of O alone (the backward then gets None for the other output), ``vmap`` of the
    call and ``vmap`` of such a ``grad`` (the backward Function's vmap rule with None gradients: dq̇, dk̇, dv̇ = 0)."""
    x, g = inputs(shape, seed, n=8)[:6], inputs(shape, seed + 1, n=8)[6:]
    x64, g64 = [a.double() for a in x], [a.double() for a in g]
    out, pull = torch.func.vjp(tri_jvp, *x)
    out64, pull64 = torch.func.vjp(ref_jvp, *x64)
    close(out, out64)
    close(pull(tuple(g)), pull64(tuple(g64)))
    every = tuple(range(6))
    for i in (0, 1):
        loss = lambda f, gi: lambda *a: (f(*a)[i] * gi).sum()  # noqa: E731
        close(torch.func.grad(loss(tri_jvp, g[i]), argnums=every)(*x),
              torch.func.grad(loss(ref_jvp, g64[i]), argnums=every)(*x64))
    scaled = torch.stack([x[0] * (j + 1) for j in range(n)])  # a vmapped q; the rest shared
    dims = (0, *(None,) * 5)
    close(torch.vmap(tri_jvp, in_dims=dims)(scaled, *x[1:]),
          tuple(torch.stack(o) for o in zip(*(ref_jvp(q, *x64[1:]) for q in scaled.double()))))
    o_loss = lambda *a: (tri_jvp(*a)[0] * g[0]).sum()  # noqa: E731
    got = torch.vmap(torch.func.grad(o_loss, argnums=every), in_dims=dims)(scaled, *x[1:])
    for j, q in enumerate(scaled.double()):
        want = torch.func.grad(lambda *a: (ref_jvp(*a)[0] * g64[0]).sum(), argnums=every)(q, *x64[1:])
        close(tuple(a[j] for a in got), want)
        assert all(a[j].abs().max() == 0 for a in got[3:])


def test_derivatives_of_the_explicit_tangent_call_that_are_not_implemented_say_so():
    """Forward mode through attention_jvp (Ȯ's tangent is a second derivative of attention) and a second backward
    through its fused backward raise clear errors."""
    x = inputs((1, 1, 5, 7, 16), 0, n=6)
    with pytest.raises(RuntimeError, match="forward-mode derivatives of \\(O, Ȯ\\) are not implemented"):
        torch.func.jvp(lambda q: tri_jvp(q, *x[1:]), (x[0],), (x[0],))
    leaves = [a.requires_grad_() for a in x]
    o, to = tri_jvp(*leaves)
    (gq,) = torch.autograd.grad((o * to).sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives through the Triton backward are not implemented"):
        torch.autograd.grad(gq.sum(), leaves[1])
