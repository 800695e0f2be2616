"""Triton forward kernels: plain flash attention (O, lse) and the tangent pass (tO, μ). THEORY.md §9.

Notation (THEORY.md §9): α = scale, P = softmax_row(α QKᵀ), O = PV, T = α(Q̇Kᵀ + QK̇ᵀ), μ_i = Σ_j P_ij T_ij,
Ȯ = P V̇ + (P ⊙ (T − μ1ᵀ)) V = Σ_j P_ij (T_ij V_j + V̇_j) − μ_i O_i.

All tensors are contiguous (B, H, S, D); the statistics lse and μ are fp32 (B·H, S_q). lse is stored in base 2
(log₂ Σ_j 2^{α log₂e S_ij}) so the kernels can use ``exp2``. Nothing S²-sized is stored.
"""
import torch
import triton
import triton.language as tl

from ._config import INTERPRET, SMALL, cfg, head_block, launch_meta, seq_bucket, tuned

LOG2E = 1.4426950408889634

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


@tuned(_FWD_CONFIGS)
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, qk_scale, seq_q, seq_k, head_dim, SEQ_BUCKET,
                HEAD_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Online-softmax forward for one query block: O = softmax(αQKᵀ)V and lse₂ per row."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
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
    _store_rows(O + q_base, acc, offs_m, offs_d, seq_q, head_dim)
    tl.store(LSE + bh * seq_q + offs_m, m_i + tl.log2(l_i), mask=offs_m < seq_q)


@tuned(_JVP_CONFIGS)
@triton.jit
def _tangent_kernel(Q, K, V, O, LSE, TQ, TK, TV, TO, MU, qk_scale, scale, seq_q, seq_k, head_dim, SEQ_BUCKET,
                    HEAD_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Tangent of attention for one query block, given the saved lse: μ = Σ_j P T and Ȯ = Σ_j P(T V + V̇) − μ O.

    P = 2^{α log₂e S − lse₂} is exact (already normalized), so no rescaling is needed.
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
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
    o = _load_rows(O + q_base, offs_m, offs_d, seq_q, head_dim, HEAD_BLOCK, UPCAST).to(tl.float32)
    acc = acc - mu[:, None] * o
    _store_rows(TO + q_base, acc, offs_m, offs_d, seq_q, head_dim)
    tl.store(MU + bh * seq_q + offs_m, mu, mask=offs_m < seq_q)


def _common(q, k, configs):
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    meta = dict(HEAD_BLOCK=head_block(head_dim), UPCAST=INTERPRET,
                PREC="ieee" if q.dtype == torch.float32 else "tf32",
                **launch_meta(configs, q.dtype == torch.float32))
    bucket = seq_bucket(max(seq_q, seq_k))
    grid = lambda m: (triton.cdiv(seq_q, m["BLOCK_M"]), batch * heads)  # noqa: E731
    return batch, heads, seq_q, seq_k, head_dim, bucket, meta, grid


def forward(q, k, v, scale):
    """O and lse₂ for contiguous q (B,H,Sq,D), k, v (B,H,Sk,D). Returns (O like q, lse fp32 (B·H, Sq))."""
    batch, heads, seq_q, seq_k, head_dim, bucket, meta, grid = _common(q, k, _FWD_CONFIGS)
    o = torch.empty_like(q)
    lse = torch.empty((batch * heads, seq_q), device=q.device, dtype=torch.float32)
    _fwd_kernel[grid](q, k, v, o, lse, scale * LOG2E, seq_q, seq_k, head_dim, bucket, **meta)
    return o, lse


def tangent(q, k, v, o, lse, tq, tk, tv, scale):
    """Ȯ and μ given the primal pass's O and lse₂; all tensors contiguous. Returns (Ȯ like q, μ fp32 (B·H, Sq))."""
    batch, heads, seq_q, seq_k, head_dim, bucket, meta, grid = _common(q, k, _JVP_CONFIGS)
    to = torch.empty_like(q)
    mu = torch.empty((batch * heads, seq_q), device=q.device, dtype=torch.float32)
    _tangent_kernel[grid](q, k, v, o, lse, tq, tk, tv, to, mu, scale * LOG2E, scale, seq_q, seq_k, head_dim,
                          bucket, **meta)
    return to, mu
