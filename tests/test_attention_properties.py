"""Reference-free properties of kernels.attention, its autograd integration, errors, and torch.compile (issue 3).

Runs through TRITON_INTERPRET=1 on the CPU (fp32, tiny sizes); the same code runs compiled on a GPU.
"""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.autograd.forward_ad as fwAD  # noqa: E402

from kernels import attention, attention_jvp  # noqa: E402
from kernels.testing import jvp_with_grads, with_grads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, H, SQ, SK, D = 1, 2, 19, 21, 24  # lengths not multiples of the interpreter's 16-wide blocks
ATOL = 2e-5


def triton_attn(q, k, v):
    return attention(q, k, v, backend="triton")


def triton_attn_jvp(q, k, v, tq, tk, tv):
    return attention_jvp(q, k, v, tq, tk, tv, backend="triton")


def rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE)


def qkv(seed=0):
    return rand(B, H, SQ, D, seed=seed), rand(B, H, SK, D, seed=seed + 1), rand(B, H, SK, D, seed=seed + 2)


def assert_same_derivatives(o, to, grads, ref):
    """O bitwise, Ȯ and the six gradients to float32 rounding, against a ``jvp_with_grads`` reference."""
    torch.testing.assert_close(o, ref.o, rtol=0, atol=0)
    torch.testing.assert_close(to, ref.to, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, ref.grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=ATOL)


def test_tangent_is_linear_in_the_tangent():
    primals = qkv(0)
    t1, t2 = qkv(10), qkv(20)
    a, b = 0.7, -1.3
    mixed = tuple(a * x + b * y for x, y in zip(t1, t2))
    to1 = torch.func.jvp(triton_attn, primals, t1)[1]
    to2 = torch.func.jvp(triton_attn, primals, t2)[1]
    tom = torch.func.jvp(triton_attn, primals, mixed)[1]
    torch.testing.assert_close(tom, a * to1 + b * to2, rtol=1e-5, atol=ATOL)


def test_row_shift_of_logits_has_zero_tangent():
    """k̇_j = w for every key shifts row i of the logits by α q_i·w for all j: softmax is unchanged, so Ȯ = 0."""
    q, k, v = qkv(1)
    w = rand(D, seed=7)
    tangents = (torch.zeros_like(q), w.expand_as(k).contiguous(), torch.zeros_like(v))
    o, to = torch.func.jvp(triton_attn, (q, k, v), tangents)
    assert to.abs().max().item() < 1e-5 * o.abs().max().item() * 10


def test_permuting_keys_and_values_together_changes_nothing():
    q, k, v = qkv(2)
    tq, tk, tv = qkv(12)
    perm = torch.randperm(SK, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    o, to = torch.func.jvp(triton_attn, (q, k, v), (tq, tk, tv))
    op, top = torch.func.jvp(triton_attn, (q, k[:, :, perm], v[:, :, perm]), (tq, tk[:, :, perm], tv[:, :, perm]))
    torch.testing.assert_close(op, o, rtol=1e-5, atol=ATOL)
    torch.testing.assert_close(top, to, rtol=1e-5, atol=ATOL)


def test_plain_call_equals_primal_of_jvp_call():
    primals, tangents = qkv(3), qkv(13)
    o_plain = triton_attn(*primals)
    o_jvp = torch.func.jvp(triton_attn, primals, tangents)[0]
    assert torch.equal(o_plain, o_jvp)


def test_zero_tangent_cotangent_gives_ordinary_gradients():
    """With dȮ = 0 the gradients equal plain attention's, and the tangents get zero gradient."""
    primals, tangents = qkv(4), qkv(14)
    g1, zero = rand(B, H, SQ, D, seed=30), torch.zeros(B, H, SQ, D, device=DEVICE)
    through_jvp = jvp_with_grads(triton_attn, primals, tangents, g1, zero).grads
    leaves = [x.clone().requires_grad_() for x in primals]
    plain = torch.autograd.grad(triton_attn(*leaves), leaves, g1)
    for a, b in zip(through_jvp[:3], plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=ATOL)
    for g in through_jvp[3:]:
        assert g.abs().max().item() == 0.0


def test_gradients_add_over_the_two_cotangents():
    """∇(⟨G1, O⟩ + ⟨G2, Ȯ⟩) = ∇⟨G1, O⟩ + ∇⟨G2, Ȯ⟩ (the primal and tangent backward passes compose)."""
    primals, tangents = qkv(5), qkv(15)
    g1, g2 = rand(B, H, SQ, D, seed=31), rand(B, H, SQ, D, seed=32)
    zero = torch.zeros_like(g1)
    both = jvp_with_grads(triton_attn, primals, tangents, g1, g2).grads
    first = jvp_with_grads(triton_attn, primals, tangents, g1, zero).grads
    second = jvp_with_grads(triton_attn, primals, tangents, zero, g2).grads
    for a, b, c in zip(both, first, second):
        torch.testing.assert_close(a, b + c, rtol=1e-5, atol=ATOL)


def test_fused_backward_equals_the_sum_of_the_two_single_passes():
    """attention_jvp's backward with both cotangents (one fused pass) equals the pass through O with G1 alone plus
    the pass through Ȯ with G2 alone (each of those is the fused Function's fallback when the other output gets no
    gradient), to float32 rounding."""
    inputs = (*qkv(5), *qkv(15))
    g1, g2 = rand(B, H, SQ, D, seed=31), rand(B, H, SQ, D, seed=32)
    both = with_grads(triton_attn_jvp, inputs, g1, g2).grads
    first = with_grads(triton_attn_jvp, inputs, g1, None).grads
    second = with_grads(triton_attn_jvp, inputs, None, g2).grads
    for a, b, c in zip(both, first, second):
        torch.testing.assert_close(a, b + c, rtol=1e-5, atol=ATOL)


class _LaunchLog:
    """Records the backward kernels launched (name and PRIMAL/TANGENT flags), delegating every launch."""

    FLAGS = ("PRIMAL", "TANGENT")

    def __init__(self, monkeypatch):
        from kernels import _backward

        self.launches = []
        for name in ("_row_sums_kernel", "_kv_kernel", "_kv_tangent_kernel", "_q_kernel"):
            monkeypatch.setattr(_backward, name, self._recording(name, getattr(_backward, name)))

    def _recording(self, name, kernel):
        log = self.launches

        class Recording:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    log.append((name, *(f for f in _LaunchLog.FLAGS if kwargs.get(f))))
                    return kernel[grid](*args, **kwargs)
                return launch
        return Recording()


PRE_PASS, FUSED = ("_row_sums_kernel", "PRIMAL", "TANGENT"), ("_kv_tangent_kernel", "PRIMAL")
PASS_O = [("_row_sums_kernel", "PRIMAL"), ("_kv_kernel",), ("_q_kernel", "PRIMAL")]
PASS_TO = [("_row_sums_kernel", "TANGENT"), ("_kv_tangent_kernel",), ("_q_kernel", "TANGENT")]


@pytest.mark.parametrize("mode", ["backward", "func_grad"])
@pytest.mark.parametrize("cotangents, expected", [
    ("both", [PRE_PASS, FUSED, ("_q_kernel", "PRIMAL", "TANGENT")]),
    ("O", PASS_O),
    ("tO", PASS_TO),
])
def test_attention_jvp_backward_launches_one_pass(monkeypatch, mode, cotangents, expected):
    """A plain ``backward()`` through ``attention_jvp`` (the kernels called directly) and ``torch.func.grad`` of it
    (through the ``_FusedGrad`` Function) launch one pass: the fused pre-pass, key-side and query-side kernels when
    O and Ȯ both get a gradient, the single pass of the one that does otherwise; never the two single passes."""
    inputs = [x.clone().requires_grad_(mode == "backward") for x in (*qkv(3), *qkv(13))]
    g1, g2 = rand(B, H, SQ, D, seed=40), rand(B, H, SQ, D, seed=41)

    def loss(*x):
        o, to = triton_attn_jvp(*x)
        return {"both": (o * g1).sum() + (to * g2).sum(), "O": (o * g1).sum(), "tO": (to * g2).sum()}[cotangents]

    log = _LaunchLog(monkeypatch)
    if mode == "backward":
        loss(*inputs).backward()
        grads = [x.grad for x in inputs]
    else:
        grads = torch.func.grad(loss, argnums=tuple(range(6)))(*inputs)
    assert log.launches == expected
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:3])


def test_fused_backward_without_any_cotangent_is_refused():
    from kernels import _backward

    q, k, v = qkv(0)
    with pytest.raises(ValueError, match="dO and G are both None"):
        _backward.backward_fused(q, k, v, q, q[:0], None, None, q, k, v, q, q[:0], None, None, 0.2)


def test_func_jvp_backward_still_runs_the_two_single_passes(monkeypatch):
    """``torch.func.jvp`` of ``attention`` keeps O's and Ȯ's backward in two Functions (kernels/_autograd.py): two
    passes. This documents the path that is not fused (docs/KERNEL.md §1)."""
    g1, g2 = rand(B, H, SQ, D, seed=42), rand(B, H, SQ, D, seed=43)
    leaves = [x.clone().requires_grad_() for x in (*qkv(4), *qkv(14))]
    o, to = torch.func.jvp(triton_attn, tuple(leaves[:3]), tuple(leaves[3:]))
    log = _LaunchLog(monkeypatch)
    ((o * g1).sum() + (to * g2).sum()).backward()
    assert sorted(log.launches) == sorted(PASS_O + PASS_TO)


def test_forward_ad_matches_func_jvp_including_gradients():
    primals, tangents = qkv(6), qkv(16)
    g1, g2 = rand(B, H, SQ, D, seed=33), rand(B, H, SQ, D, seed=34)
    ref = jvp_with_grads(triton_attn, primals, tangents, g1, g2)
    leaves = [x.clone().requires_grad_() for x in (*primals, *tangents)]
    with fwAD.dual_level():
        out = triton_attn(*(fwAD.make_dual(leaves[i], leaves[i + 3]) for i in range(3)))
        o, to = fwAD.unpack_dual(out)
        grads = torch.autograd.grad((o * g1).sum() + (to * g2).sum(), leaves)
    assert_same_derivatives(o, to, grads, ref)


def test_none_tangents_equal_zero_tangents():
    """forward_ad with a dual only for k (q̇ and v̇ are None) equals explicit zero tangents."""
    q, k, v = qkv(7)
    tk = rand(B, H, SK, D, seed=40)
    with fwAD.dual_level():
        to_none = fwAD.unpack_dual(triton_attn(q, fwAD.make_dual(k, tk), v)).tangent
    to_zero = torch.func.jvp(triton_attn, (q, k, v), (torch.zeros_like(q), tk, torch.zeros_like(v)))[1]
    torch.testing.assert_close(to_none, to_zero, rtol=1e-6, atol=1e-6)


def test_non_contiguous_inputs():
    """q, k, v as views of one packed (B, S, 3, H, D) tensor, the usual transformer layout."""
    packed = rand(B, SK, 3, H, D, seed=8)
    tpacked = rand(B, SK, 3, H, D, seed=9)
    views = packed.permute(2, 0, 3, 1, 4)
    tviews = tpacked.permute(2, 0, 3, 1, 4)
    assert not views[0].is_contiguous()
    got = torch.func.jvp(triton_attn, tuple(views), tuple(tviews))
    want = torch.func.jvp(triton_attn, tuple(x.contiguous() for x in views), tuple(x.contiguous() for x in tviews))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_runtime_batch_size():
    """Different batch sizes in a row give each batch element the same result as alone (no shape baked in)."""
    q, k, v = (torch.cat([x, 2 * x], 0) for x in qkv(9))
    both = triton_attn(q, k, v)
    torch.testing.assert_close(both[1:], triton_attn(q[1:], k[1:], v[1:]), rtol=0, atol=0)


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v: (q[0], k, v), "q must be 4-D"),
    (lambda q, k, v: (q, k.double(), v), "share a dtype"),
    (lambda q, k, v: (q, k[:, :, :5], v), "k and v must have the same shape"),
    (lambda q, k, v: (q[..., :8], k[..., :8], v[..., :8]), "16 <= D <= 128"),
    (lambda q, k, v: (q.repeat(1, 1, 1, 11), k.repeat(1, 1, 1, 11), v.repeat(1, 1, 1, 11)), "16 <= D <= 128"),
    (lambda q, k, v: (q[:, :1], k, v), "must agree in B, H and D"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), "Triton backend supports"),
])
def test_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        triton_attn(*bad(*qkv(0)))


def test_bad_backend_and_scale():
    q, k, v = qkv(0)
    with pytest.raises(ValueError, match="backend must be one of"):
        attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="scale must be finite"):
        attention(q, k, v, scale=float("nan"))


def test_auto_backend_on_cpu_is_the_reference():
    q, k, v = (x.cpu() for x in qkv(0))
    assert torch.equal(attention(q, k, v), attention(q, k, v, backend="reference"))


class _Block(torch.nn.Module):
    """Pre-norm transformer block (attention + MLP) whose attention backend is a parameter."""

    def __init__(self, width=48, heads=2, backend="triton"):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                       torch.nn.Linear(2 * width, width))

    def forward(self, x):  # x: (B, S, width)
        b, s, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v, backend=self.backend).transpose(1, 2).reshape(b, s, w)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


def _block_jvp_grads(block, x, tx, g1, g2, compile_backend=None):
    params = dict(block.named_parameters())
    fn = lambda p, inp: torch.func.functional_call(block, p, (inp,))  # noqa: E731
    if compile_backend is not None:
        fn = torch.compile(fn, backend=compile_backend)
    y, ty = torch.func.jvp(lambda inp: fn(params, inp), (x,), (tx,))
    loss = (y * g1).sum() + (ty * g2).sum()
    return y, ty, torch.autograd.grad(loss, list(params.values()))


def test_transformer_block_matches_reference_backend():
    torch.manual_seed(0)
    block = _Block().to(DEVICE)
    x, tx, g1, g2 = (rand(2, SQ, 48, seed=50 + i) for i in range(4))
    got = _block_jvp_grads(block, x, tx, g1, g2)
    block.backend = "reference"
    want = _block_jvp_grads(block, x, tx, g1, g2)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=ATOL)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=ATOL)
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compiled_block_tangents_match_eager():
    """torch.compile must not silently change tangents (PyTorch #192985): the kernel call is kept out of the
    compiled graph. aot_eager runs Dynamo and AOTAutograd without needing a C++ compiler."""
    torch.manual_seed(1)
    block = _Block().to(DEVICE)
    x, tx, g1, g2 = (rand(2, SQ, 48, seed=60 + i) for i in range(4))
    eager = _block_jvp_grads(block, x, tx, g1, g2)
    compiled = _block_jvp_grads(block, x, tx, g1, g2, compile_backend="aot_eager")
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    from kernels import _config

    monkeypatch.setattr(_config, "INTERPRET", False)
    q, k, v = (x.cpu() for x in qkv(0))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(q, k, v, backend="triton")


@pytest.mark.parametrize("explicit", [False, True], ids=["func_jvp", "attention_jvp"])
def test_split_and_one_program_key_side_backward_agree(explicit):
    """The tangent KV kernel's two layouts (one program for dK, dK̇, dV, dV̇, or two programs per key block) agree,
    launched with the same block sizes, warps and stages (kernels._config.pinned; lengths of two blocks each), in the
    pass through Ȯ (``torch.func.jvp``'s second pass) and in the fused pass through O and Ȯ (``attention_jvp``)."""
    from kernels import _config

    if _config.AUTOTUNE:
        pytest.skip("KERNELS_AUTOTUNE=1: autotuned kernels take no pinned configuration")
    configs = _config.TUNED["_kv_tangent_kernel"]
    layout = lambda c: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)  # noqa: E731
    split_config = next(c for c in configs if c.kwargs["SPLIT"])
    one_config = next(c for c in configs if not c.kwargs["SPLIT"] and layout(c) == layout(split_config))
    sq, sk = split_config.kwargs["BLOCK_M"] + 13, split_config.kwargs["BLOCK_N"] + 6
    inputs = (rand(B, H, sq, D, seed=11), rand(B, H, sk, D, seed=12), rand(B, H, sk, D, seed=13),
              rand(B, H, sq, D, seed=21), rand(B, H, sk, D, seed=22), rand(B, H, sk, D, seed=23))
    g1, g2 = rand(B, H, sq, D, seed=70), rand(B, H, sq, D, seed=71)
    run = ((lambda: with_grads(triton_attn_jvp, inputs, g1, g2)) if explicit
           else (lambda: jvp_with_grads(triton_attn, inputs[:3], inputs[3:], g1, g2)))
    with _config.pinned(configs, split_config):
        split = run()
    with _config.pinned(configs, one_config):
        one = run()
    for a, b in zip(split.grads, one.grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("max_grid_y", [2, 3])
def test_heads_folded_onto_the_grid_z_axis_give_the_same_results(monkeypatch, max_grid_y):
    """B·H programs beyond the grid's y limit fold onto z (CUDA allows 65535 on y): with the limit lowered to 2 or 3
    for B·H = 5 (3 z slices, the last part-empty), O, Ȯ and all six gradients equal the unfolded launch's."""
    from kernels import _config

    shape_q, shape_k = (1, 5, SQ, D), (1, 5, SK, D)
    primals = rand(*shape_q, seed=80), rand(*shape_k, seed=81), rand(*shape_k, seed=82)
    tangents = rand(*shape_q, seed=83), rand(*shape_k, seed=84), rand(*shape_k, seed=85)
    g1, g2 = rand(*shape_q, seed=86), rand(*shape_q, seed=87)
    plain = jvp_with_grads(triton_attn, primals, tangents, g1, g2)
    monkeypatch.setattr(_config, "MAX_GRID_Y", max_grid_y)
    assert _config.grid_bh(5) == (max_grid_y, -(-5 // max_grid_y))
    folded = jvp_with_grads(triton_attn, primals, tangents, g1, g2)
    torch.testing.assert_close(folded.o, plain.o, rtol=0, atol=0)
    torch.testing.assert_close(folded.to, plain.to, rtol=0, atol=0)
    for a, b in zip(folded.grads, plain.grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loss_of_the_tangent_alone():
    """Back-propagating only through Ȯ (O unused: its backward receives no gradient) equals G1 = 0."""
    primals, tangents = qkv(8), qkv(18)
    g2 = rand(B, H, SQ, D, seed=72)
    leaves = [x.clone().requires_grad_() for x in (*primals, *tangents)]
    _, to = torch.func.jvp(triton_attn, tuple(leaves[:3]), tuple(leaves[3:]))
    alone = torch.autograd.grad(to, leaves, g2)
    with_zero = jvp_with_grads(triton_attn, primals, tangents, torch.zeros_like(g2), g2).grads
    for a, b in zip(alone, with_zero):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_explicit_tangent_call_equals_func_jvp_including_gradients(backend):
    """attention_jvp(q, k, v, q̇, k̇, v̇) gives the same O, Ȯ and gradients (to all six inputs) as
    torch.func.jvp through attention (the path the functorch trainer takes)."""
    primals, tangents = qkv(9), qkv(19)
    g1, g2 = rand(B, H, SQ, D, seed=35), rand(B, H, SQ, D, seed=36)
    ref = jvp_with_grads(lambda q, k, v: attention(q, k, v, backend=backend), primals, tangents, g1, g2)
    leaves = [x.clone().requires_grad_() for x in (*primals, *tangents)]
    o, to = attention_jvp(*leaves, backend=backend)
    grads = torch.autograd.grad((o.double() * g1.double()).sum() + (to.double() * g2.double()).sum(), leaves)
    assert_same_derivatives(o, to, grads, ref)


def test_explicit_tangent_call_rejects_mismatched_tangents():
    q, k, v = qkv(10)
    with pytest.raises(ValueError, match="tk must be a tensor of shape"):
        attention_jvp(q, k, v, q, q, v, backend="triton")


def test_closed_form_reference_jvp_equals_func_jvp_of_the_reference_in_float64():
    """kernels.reference.attention_reference_jvp (docs/THEORY.md §9 closed form) against torch.func.jvp of
    attention_reference, values, tangents and gradients, float64."""
    from kernels import attention_reference, attention_reference_jvp
    primals = [x.double().cpu() for x in qkv(11)]
    tangents = [x.double().cpu() for x in qkv(21)]
    g1, g2 = rand(B, H, SQ, D, seed=37).double().cpu(), rand(B, H, SQ, D, seed=38).double().cpu()
    ref = jvp_with_grads(lambda q, k, v: attention_reference(q, k, v, 0.3), primals, tangents, g1, g2)
    leaves = [x.clone().requires_grad_() for x in (*primals, *tangents)]
    o, to = attention_reference_jvp(*leaves, 0.3)
    grads = torch.autograd.grad((o * g1).sum() + (to * g2).sum(), leaves)
    for a, b in zip([o, to, *grads], [ref.o, ref.to, *ref.grads]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_functions_skip_the_per_call_signature_binding(monkeypatch):
    """Our Functions' ``apply`` (kernels/_autograd.py ``_Folded``) does not go through
    ``torch.autograd.Function.apply``, which binds every call's arguments to ``forward``'s signature (host time), on
    any path: plain autograd, ``torch.func.jvp`` (and its backward), ``forward_ad``, ``attention_jvp`` under
    ``torch.func.grad`` (the backward's ``_FusedGrad``) and ``vmap``. If a PyTorch version moved the internals it
    calls, it falls back to ``Function.apply`` and this fails."""
    from kernels import _autograd

    through_function_apply = []
    original = torch.autograd.Function.__dict__["apply"].__func__

    def recording(cls, *args, **kwargs):
        through_function_apply.append(cls.__name__)
        return original(cls, *args, **kwargs)

    q, k, v = (x.requires_grad_() for x in qkv(20))
    tq, tk, tv = qkv(21)
    g1, g2 = rand(B, H, SQ, D, seed=22), rand(B, H, SQ, D, seed=23)
    monkeypatch.setattr(torch.autograd.Function, "apply", classmethod(recording))
    torch.autograd.grad(triton_attn(q, k, v), (q, k, v), g1)
    o, to = torch.func.jvp(triton_attn, (q, k, v), (tq, tk, tv))
    torch.autograd.grad((o, to), (q, k, v), (g1, g2))
    with fwAD.dual_level():
        fwAD.unpack_dual(triton_attn(fwAD.make_dual(q, tq), k, v))
    torch.func.grad(lambda *x: (triton_attn_jvp(*x)[1] * g2).sum(), argnums=(0, 3))(q.detach(), k, v, tq, tk, tv)
    torch.vmap(triton_attn, in_dims=(0, None, None))(torch.stack([q.detach(), tq]), k, v)
    ours = {name for name, x in vars(_autograd).items() if isinstance(x, type) and issubclass(x, _autograd._Folded)}
    assert not ours & set(through_function_apply), through_function_apply
    monkeypatch.setattr(_autograd, "_custom_function_call", None)  # the fallback does go through it
    triton_attn(q, k, v)
    assert through_function_apply[-1] == "_Attention"


def test_function_apply_fallback_gives_the_same_derivatives(monkeypatch):
    """With the PyTorch internals behind ``_Folded.apply``'s fast path absent, ``torch.autograd.Function.apply``
    itself runs, with the same results: ``torch.func.jvp`` + gradients, and ``vjp`` (its pullback called outside the
    transform, on functorch's dead wrappers)."""
    from kernels import _autograd

    primals, tangents = qkv(24), qkv(25)
    g1, g2 = rand(B, H, SQ, D, seed=26), rand(B, H, SQ, D, seed=27)
    fast = jvp_with_grads(triton_attn, primals, tangents, g1, g2)
    fast_pull = torch.func.vjp(triton_attn, *primals)[1](g1)
    monkeypatch.setattr(_autograd, "_custom_function_call", None)
    slow = jvp_with_grads(triton_attn, primals, tangents, g1, g2)
    slow_pull = torch.func.vjp(triton_attn, *primals)[1](g1)
    for a, b in zip((*fast.as_list(), *fast_pull), (*slow.as_list(), *slow_pull)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_host_side_cdiv_and_next_power_of_2_equal_triton():
    """kernels._config's plain-Python ``cdiv`` and ``next_power_of_2`` (host code calls them instead of Triton's
    constexpr functions, which cost ~2 µs a call) give Triton's values."""
    import triton

    from kernels import _config

    for n in range(1, 1100):
        assert _config.next_power_of_2(n) == triton.next_power_of_2(n), n
        for b in (1, 7, 16, 32, 64, 128, 65535):
            assert _config.cdiv(n, b) == triton.cdiv(n, b), (n, b)
    assert _config.cdiv(65535**2, 65535) == 65535 and _config.next_power_of_2(2**40 + 1) == 2**41


# kernels._config.head_split's docstring examples and the edges of its rule: D → (HEAD_BLOCK, TAIL_BLOCK).
HEAD_SPLITS = {1: (16, 0), 8: (16, 0), 16: (16, 0), 17: (32, 0), 24: (32, 0), 32: (32, 0), 33: (32, 16),
               40: (32, 16), 48: (32, 16), 49: (64, 0), 64: (64, 0), 65: (64, 16), 72: (64, 16), 80: (64, 16),
               81: (64, 32), 96: (64, 32), 97: (128, 0), 112: (128, 0), 128: (128, 0)}


@pytest.mark.parametrize("d, expected", HEAD_SPLITS.items())
def test_head_split_examples(d, expected):
    from kernels import _config

    assert _config.head_split(d) == expected


@pytest.mark.parametrize("d", [1, 16, 24, 32, 40, 48, 64, 72, 80, 96, 100, 112, 128])
def test_static_head_dim_compiles_in_what_triton_does_not_specialize(d):
    """HEAD_DIM is D for a D that is not a multiple of 16 (Triton specializes only multiples of 16 of an integer
    argument, so the compiler would not know such a row stride's alignment), 0 otherwise: D = 64 and 128 keep the
    runtime ``head_dim`` and their code."""
    from kernels import _config

    assert _config.static_head_dim(d) == (0 if d % 16 == 0 else d)


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 128))
def test_head_split_rule(d):
    """The head is the largest power of two ≤ D (at least 16) and the tail the next power of two ≥ the rest (at
    least 16), used only when the two tiles are narrower than the padded one (``head_block``); else one padded tile.
    Every tile is a power of two ≥ 16 (``tl.dot``) and the tiles cover D."""
    from kernels import _config

    head, tail = _config.head_split(d)
    padded = _config.head_block(d)
    power_of_2_from_16 = lambda n: n >= 16 and n & (n - 1) == 0  # noqa: E731
    assert power_of_2_from_16(head) and head + tail >= d
    if tail:
        assert power_of_2_from_16(tail) and head + tail < padded
        assert head <= d < 2 * head and tail == max(16, _config.next_power_of_2(d - head))
    else:
        assert head == padded
        largest = max(16, 1 << (d.bit_length() - 1))
        rest = d - largest
        assert rest <= 0 or largest + max(16, _config.next_power_of_2(rest)) >= padded
