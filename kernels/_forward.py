"""Triton forward kernels: plain flash attention (O, lse) and the tangent pass (tO, μ). docs/THEORY.md §9.

Notation (docs/THEORY.md §9): α = scale, P = softmax_row(α QKᵀ), O = PV, T = α(Q̇Kᵀ + QK̇ᵀ), μ_i = Σ_j P_ij T_ij,
Ȯ = P V̇ + (P ⊙ (T − μ1ᵀ)) V = Σ_j P_ij (T_ij V_j + V̇_j) − μ_i O_i.

All tensors are contiguous (B, H, S, D); the statistics lse and μ are fp32 (B·H, S_q). lse is stored in base 2
(log₂ Σ_j 2^{α log₂e S_ij}) so the kernels can use ``exp2``. Nothing S²-sized is stored.

For fp16/bf16 inputs O and Ȯ are also kept as a second, low part: O_lo = round(O_acc − round(O_acc)), so that
O_hi + O_lo equals the fp32 accumulator to about u² (u the unit roundoff). The backward needs the row sums
δ = rowsum(dO∘O) consistent with the P and dP it recomputes in fp32 (Σ_j P_ij(dP_ij − δ_i) = 0, the softmax's
shift invariance); from the rounded O alone δ is off by ~u|dO||O|, which the gradients of nearly cancelling sums
(QK-norm weights: Σ_j dK_j = 0 exactly) amplify to O(1) relative errors in bf16 (issue 10). The low part costs one
more half-precision tensor per saved O or Ȯ; for fp32 inputs there is none.
"""
import torch
import triton
import triton.language as tl

from . import _config
from ._config import INTERPRET, SMALL, cdiv, cfg, head_block, launch_meta, seq_bucket, tuned

LOG2E = 1.4426950408889634
KERNELS = ("_fwd_kernel", "_tangent_kernel")  # the kernels this module launches, by name (benchmarks)

_FWD_CONFIGS = [cfg(128, 64, 8, 2), cfg(128, 64, 4, 3), cfg(64, 64, 4, 3), cfg(64, 32, 4, 3), cfg(128, 128, 8, 2),
                cfg(*SMALL)]
_JVP_CONFIGS = [cfg(128, 64, 8, 2), cfg(64, 64, 4, 3), cfg(64, 32, 4, 3), cfg(128, 32, 8, 2), cfg(64, 64, 4, 2),
                cfg(*SMALL)]


@triton.jit
def _load_rows(base, offs_s, offs_d, seq, head_dim, HEAD_BLOCK: tl.constexpr, UPCAST: tl.constexpr):
    """Load a (len(offs_s), HEAD_BLOCK) tile of a contiguous (S, D) matrix, zero outside it."""
    mask = (offs_s[:, None] < seq) & (offs_d[None, :] < head_dim)
    x = tl.load(base + offs_s[:, None] * head_dim + offs_d[None, :], mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_rows(base, x, offs_s, offs_d, seq, head_dim):
    mask = (offs_s[:, None] < seq) & (offs_d[None, :] < head_dim)
    tl.store(base + offs_s[:, None] * head_dim + offs_d[None, :], x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _store_hi_lo(base, base_lo, x, offs_s, offs_d, seq, head_dim, LOW: tl.constexpr):
    """Store fp32 ``x`` in the output dtype and, if LOW, its rounding residual x − round(x) at ``base_lo``."""
    _store_rows(base, x, offs_s, offs_d, seq, head_dim)
    if LOW:
        _store_rows(base_lo, x - x.to(base.dtype.element_ty).to(tl.float32), offs_s, offs_d, seq, head_dim)


@triton.jit
def _load_hi_lo(base, base_lo, offs_s, offs_d, seq, head_dim, HEAD_BLOCK: tl.constexpr, LOW: tl.constexpr):
    """fp32 tile of a tensor stored by :func:`_store_hi_lo`: hi + lo if LOW, else hi."""
    x = _load_rows(base, offs_s, offs_d, seq, head_dim, HEAD_BLOCK, True)
    if LOW:
        x += _load_rows(base_lo, offs_s, offs_d, seq, head_dim, HEAD_BLOCK, True)
    return x


@tuned(_FWD_CONFIGS)
@triton.jit
def _fwd_kernel(Q, K, V, O, O_LO, LSE, qk_scale, seq_q, seq_k, head_dim, SEQ_BUCKET, n_bh,
                HEAD_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                UPCAST: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """Online-softmax forward for one query block: O = softmax(αQKᵀ)V (and O_lo if LOW) and lse₂ per row."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(2).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    if bh >= n_bh:  # the folded grid's last z slice may hold more programs than heads
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_BLOCK)
    q_base = bh * seq_q * head_dim
    k_base = bh * seq_k * head_dim
    q = _load_rows(Q + q_base, offs_m, offs_d, seq_q, head_dim, HEAD_BLOCK, UPCAST)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_BLOCK], tl.float32)
    for start_n in range(0, seq_k, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + k_base, cols, offs_d, seq_k, head_dim, HEAD_BLOCK, UPCAST)
        v = _load_rows(V + k_base, cols, offs_d, seq_k, head_dim, HEAD_BLOCK, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        if start_n + BLOCK_N > seq_k:  # only the ragged last key block needs the mask
            s = tl.where(cols[None, :] < seq_k, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    _store_hi_lo(O + q_base, O_LO + q_base, acc, offs_m, offs_d, seq_q, head_dim, LOW)
    tl.store(LSE + bh * seq_q + offs_m, m_i + tl.log2(l_i), mask=offs_m < seq_q)


@tuned(_JVP_CONFIGS)
@triton.jit
def _tangent_kernel(Q, K, V, O, O_LO, LSE, TQ, TK, TV, TO, TO_LO, MU, qk_scale, scale, seq_q, seq_k, head_dim,
                    SEQ_BUCKET, n_bh, HEAD_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    UPCAST: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """Tangent of attention for one query block, given the saved lse: μ = Σ_j P T and Ȯ = Σ_j P(T V + V̇) − μ O
    (O = O_hi + O_lo if LOW; Ȯ's low part stored likewise).

    P = 2^{α log₂e S − lse₂} is exact (already normalized), so no rescaling is needed.
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(2).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    if bh >= n_bh:  # the folded grid's last z slice may hold more programs than heads
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_BLOCK)
    q_base = bh * seq_q * head_dim
    k_base = bh * seq_k * head_dim
    q = _load_rows(Q + q_base, offs_m, offs_d, seq_q, head_dim, HEAD_BLOCK, UPCAST)
    tq = _load_rows(TQ + q_base, offs_m, offs_d, seq_q, head_dim, HEAD_BLOCK, UPCAST)
    lse = tl.load(LSE + bh * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    mu = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_BLOCK], tl.float32)
    for start_n in range(0, seq_k, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + k_base, cols, offs_d, seq_k, head_dim, HEAD_BLOCK, UPCAST)
        tk = _load_rows(TK + k_base, cols, offs_d, seq_k, head_dim, HEAD_BLOCK, UPCAST)
        v = _load_rows(V + k_base, cols, offs_d, seq_k, head_dim, HEAD_BLOCK, UPCAST)
        tv = _load_rows(TV + k_base, cols, offs_d, seq_k, head_dim, HEAD_BLOCK, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        if start_n + BLOCK_N > seq_k:  # only the ragged last key block needs the mask
            s = tl.where(cols[None, :] < seq_k, s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        t = tl.dot(tq, tl.trans(k), input_precision=PREC)
        t = tl.dot(q, tl.trans(tk), t, input_precision=PREC) * scale
        pt = p * t
        mu += tl.sum(pt, 1)
        acc = tl.dot(pt.to(v.dtype), v, acc, input_precision=PREC)
        acc = tl.dot(p.to(v.dtype), tv, acc, input_precision=PREC)
    o = _load_hi_lo(O + q_base, O_LO + q_base, offs_m, offs_d, seq_q, head_dim, HEAD_BLOCK, LOW)
    acc = acc - mu[:, None] * o
    _store_hi_lo(TO + q_base, TO_LO + q_base, acc, offs_m, offs_d, seq_q, head_dim, LOW)
    tl.store(MU + bh * seq_q + offs_m, mu, mask=offs_m < seq_q)


def _common(q, k, configs):
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    meta = dict(HEAD_BLOCK=head_block(head_dim), UPCAST=INTERPRET,
                PREC="ieee" if q.dtype == torch.float32 else "tf32",
                **launch_meta(configs, q.dtype == torch.float32))
    bucket = seq_bucket(max(seq_q, seq_k))
    grid = lambda m: (cdiv(seq_q, m["BLOCK_M"]), *_config.grid_bh(batch * heads))  # noqa: E731
    return batch, heads, seq_q, seq_k, head_dim, bucket, meta, grid


def has_low_part(dtype: torch.dtype) -> bool:
    """Whether outputs of this dtype carry a low part (fp16, bf16)."""
    return dtype != torch.float32


def _low_part(x):
    """An uninitialised tensor like ``x`` for its low part, or a (0,)-shaped one when there is none (fp32)."""
    return torch.empty_like(x) if has_low_part(x.dtype) else x.new_empty(0)


def low_part_arg(x, x_lo):
    """The kernel argument for ``x``'s low part: ``x_lo``, or ``x`` itself when there is none (the kernels never read
    or write it then, and an empty tensor's null pointer would not be accepted as an argument)."""
    return x_lo if has_low_part(x.dtype) else x


def forward(q, k, v, scale):
    """O, O_lo and lse₂ for contiguous q (B,H,Sq,D), k, v (B,H,Sk,D). Returns (O like q, O_lo like q or an empty
    tensor for fp32, lse fp32 (B·H, Sq))."""
    batch, heads, seq_q, seq_k, head_dim, bucket, meta, grid = _common(q, k, _FWD_CONFIGS)
    low = has_low_part(q.dtype)
    o = torch.empty_like(q)
    o_lo = _low_part(o)
    lse = torch.empty((batch * heads, seq_q), device=q.device, dtype=torch.float32)
    _fwd_kernel[grid](q, k, v, o, low_part_arg(o, o_lo), lse, scale * LOG2E, seq_q, seq_k, head_dim, bucket,
                      batch * heads, **meta, LOW=low)
    return o, o_lo, lse


def tangent(q, k, v, o, o_lo, lse, tq, tk, tv, scale):
    """Ȯ, Ȯ_lo and μ given the primal pass's O, O_lo and lse₂; all tensors contiguous. Returns (Ȯ like q, Ȯ_lo like
    q or an empty tensor for fp32, μ fp32 (B·H, Sq))."""
    batch, heads, seq_q, seq_k, head_dim, bucket, meta, grid = _common(q, k, _JVP_CONFIGS)
    low = has_low_part(q.dtype)
    to = torch.empty_like(q)
    to_lo = _low_part(to)
    mu = torch.empty((batch * heads, seq_q), device=q.device, dtype=torch.float32)
    _tangent_kernel[grid](q, k, v, o, low_part_arg(o, o_lo), lse, tq, tk, tv, to, low_part_arg(to, to_lo), mu,
                          scale * LOG2E, scale, seq_q, seq_k, head_dim, bucket, batch * heads, **meta, LOW=low)
    return to, to_lo, mu
