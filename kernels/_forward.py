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

Head dimension: Triton tiles are powers of two, so rows of D columns are held as a head tile of HEAD_BLOCK columns
and, for a D that the split fits better than padding (``_config.head_split``: 72 → 64 + 16), a tail tile of
TAIL_BLOCK columns masked to < D. The helpers below load, store and zero such (head, tail) pairs, contract two pairs
over D (the sum of the head and the tail dot: ``_dot_d``), multiply by a pair (one dot per tile: ``_dot_rows``) and
sum products over D (``_rowsum_d``). TAIL_BLOCK = 0 (a power-of-two D, or one the padding fits as well) generates
no tail code: the second element of a pair is then an unread placeholder. D, the row stride and the columns' mask
bound, is a runtime argument, except that a D which is not a multiple of 16 is compiled in (HEAD_DIM,
``_config.static_head_dim``), so that the compiler knows the rows' alignment and loads tiles as aligned vectors.
"""
import torch
import triton
import triton.language as tl

from . import _config
from ._config import INTERPRET, SMALL, cdiv, cfg, column_meta, launch_meta, seq_bucket, tuned

LOG2E = 1.4426950408889634
KERNELS = ("_fwd_kernel", "_tangent_kernel")  # the kernels this module launches, by name (benchmarks)

_FWD_CONFIGS = [cfg(128, 64, 8, 2), cfg(128, 64, 4, 3), cfg(64, 64, 4, 3), cfg(64, 32, 4, 3), cfg(128, 128, 8, 2),
                cfg(*SMALL)]
_JVP_CONFIGS = [cfg(128, 64, 8, 2), cfg(64, 64, 4, 3), cfg(64, 32, 4, 3), cfg(128, 32, 8, 2), cfg(64, 64, 4, 2),
                cfg(*SMALL)]


@triton.jit
def _load_tile(base, offs_s, offs_d, seq, head_dim, UPCAST: tl.constexpr):
    """Load the (len(offs_s), len(offs_d)) tile of a contiguous (S, D) matrix, zero outside it."""
    mask = (offs_s[:, None] < seq) & (offs_d[None, :] < head_dim)
    x = tl.load(base + offs_s[:, None] * head_dim + offs_d[None, :], mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_tile(base, x, offs_s, offs_d, seq, head_dim):
    mask = (offs_s[:, None] < seq) & (offs_d[None, :] < head_dim)
    tl.store(base + offs_s[:, None] * head_dim + offs_d[None, :], x.to(base.dtype.element_ty), mask=mask)


# Rows of an (S, D) matrix are held as a pair of column tiles (x, x2): the head, columns [0, HEAD_BLOCK), and if
# TAIL_BLOCK > 0 the tail, columns [HEAD_BLOCK, HEAD_BLOCK + TAIL_BLOCK) masked to < D (``_config.head_split``).
# Without a tail, x2 is only a placeholder (the head tile, or the accumulator's initial value) that no instruction
# reads, so the compiled kernel is the single padded tile's.


@triton.jit
def _load_rows(base, offs_s, seq, head_dim, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr,
               UPCAST: tl.constexpr):
    """The (head, tail) pair of rows ``offs_s`` of a contiguous (S, D) matrix, zero outside it."""
    x = _load_tile(base, offs_s, tl.arange(0, HEAD_BLOCK), seq, head_dim, UPCAST)
    if TAIL_BLOCK > 0:
        x2 = _load_tile(base, offs_s, HEAD_BLOCK + tl.arange(0, TAIL_BLOCK), seq, head_dim, UPCAST)
    else:
        x2 = x
    return x, x2


@triton.jit
def _store_rows(base, x, x2, offs_s, seq, head_dim, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr):
    """Store the pair (x, x2) as rows ``offs_s`` of a contiguous (S, D) matrix (inside it only)."""
    _store_tile(base, x, offs_s, tl.arange(0, HEAD_BLOCK), seq, head_dim)
    if TAIL_BLOCK > 0:
        _store_tile(base, x2, offs_s, HEAD_BLOCK + tl.arange(0, TAIL_BLOCK), seq, head_dim)


@triton.jit
def _zeros_rows(ROWS: tl.constexpr, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr):
    """A pair of fp32 zero tiles of ROWS rows (an accumulator)."""
    x = tl.zeros([ROWS, HEAD_BLOCK], tl.float32)
    if TAIL_BLOCK > 0:
        x2 = tl.zeros([ROWS, TAIL_BLOCK], tl.float32)
    else:
        x2 = x
    return x, x2


@triton.jit
def _dot_d(a, a2, b, b2, acc, TAIL_BLOCK: tl.constexpr, PREC: tl.constexpr):
    """a bᵀ (+ acc, which may be None) for pairs a, b: the product contracted over D, the head tiles' dot plus the
    tail tiles' dot."""
    acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
    if TAIL_BLOCK > 0:
        acc = tl.dot(a2, tl.trans(b2), acc, input_precision=PREC)
    return acc


@triton.jit
def _dot_rows(p, b, b2, acc, acc2, TAIL_BLOCK: tl.constexpr, PREC: tl.constexpr):
    """(acc, acc2) + p (b, b2): a product with D columns, one dot per tile (p already in b's dtype)."""
    acc = tl.dot(p, b, acc, input_precision=PREC)
    if TAIL_BLOCK > 0:
        acc2 = tl.dot(p, b2, acc2, input_precision=PREC)
    return acc, acc2


@triton.jit
def _rowsum_d(a, a2, b, b2, TAIL_BLOCK: tl.constexpr):
    """rowsum(a∘b) over D for pairs a, b: the head tiles' row sums plus the tail tiles'."""
    s = tl.sum(a * b, 1)
    if TAIL_BLOCK > 0:
        s += tl.sum(a2 * b2, 1)
    return s


@triton.jit
def _store_hi_lo(base, base_lo, x, x2, offs_s, seq, head_dim, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr,
                 LOW: tl.constexpr):
    """Store the fp32 pair (x, x2) in the output dtype and, if LOW, its rounding residual x − round(x) at
    ``base_lo``."""
    _store_rows(base, x, x2, offs_s, seq, head_dim, HEAD_BLOCK, TAIL_BLOCK)
    if LOW:
        _store_rows(base_lo, x - x.to(base.dtype.element_ty).to(tl.float32),
                    x2 - x2.to(base.dtype.element_ty).to(tl.float32), offs_s, seq, head_dim, HEAD_BLOCK, TAIL_BLOCK)


@triton.jit
def _load_hi_lo(base, base_lo, offs_s, seq, head_dim, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr,
                LOW: tl.constexpr):
    """fp32 pair of a tensor stored by :func:`_store_hi_lo`: hi + lo if LOW, else hi."""
    x, x2 = _load_rows(base, offs_s, seq, head_dim, HEAD_BLOCK, TAIL_BLOCK, True)
    if LOW:
        lo, lo2 = _load_rows(base_lo, offs_s, seq, head_dim, HEAD_BLOCK, TAIL_BLOCK, True)
        x += lo
        if TAIL_BLOCK > 0:
            x2 += lo2
    return x, x2


@tuned(_FWD_CONFIGS)
@triton.jit
def _fwd_kernel(Q, K, V, O, O_LO, LSE, qk_scale, seq_q, seq_k, head_dim, SEQ_BUCKET, n_bh,
                HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """Online-softmax forward for one query block: O = softmax(αQKᵀ)V (and O_lo if LOW) and lse₂ per row."""
    if HEAD_DIM > 0:  # D not a multiple of 16, compiled in: aligned vector loads (_config.static_head_dim)
        head_dim = HEAD_DIM
    pid_m = tl.program_id(0)
    bh = tl.program_id(2).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    if bh >= n_bh:  # the folded grid's last z slice may hold more programs than heads
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q_base = bh * seq_q * head_dim
    k_base = bh * seq_k * head_dim
    q, q2 = _load_rows(Q + q_base, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc, acc2 = _zeros_rows(BLOCK_M, HEAD_BLOCK, TAIL_BLOCK)
    for start_n in range(0, seq_k, BLOCK_N):
        cols = start_n + offs_n
        k, k2 = _load_rows(K + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        v, v2 = _load_rows(V + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        s = _dot_d(q, q2, k, k2, None, TAIL_BLOCK, PREC) * qk_scale
        if start_n + BLOCK_N > seq_k:  # only the ragged last key block needs the mask
            s = tl.where(cols[None, :] < seq_k, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        if TAIL_BLOCK > 0:
            acc2 = acc2 * alpha[:, None] + tl.dot(p.to(v2.dtype), v2, input_precision=PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    acc2 = acc2 / l_i[:, None]
    _store_hi_lo(O + q_base, O_LO + q_base, acc, acc2, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, LOW)
    tl.store(LSE + bh * seq_q + offs_m, m_i + tl.log2(l_i), mask=offs_m < seq_q)


@tuned(_JVP_CONFIGS)
@triton.jit
def _tangent_kernel(Q, K, V, O, O_LO, LSE, TQ, TK, TV, TO, TO_LO, MU, qk_scale, scale, seq_q, seq_k, head_dim,
                    SEQ_BUCKET, n_bh, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                    LOW: tl.constexpr):
    """Tangent of attention for one query block, given the saved lse: μ = Σ_j P T and Ȯ = Σ_j P(T V + V̇) − μ O
    (O = O_hi + O_lo if LOW; Ȯ's low part stored likewise).

    P = 2^{α log₂e S − lse₂} is exact (already normalized), so no rescaling is needed.
    """
    if HEAD_DIM > 0:  # D not a multiple of 16, compiled in: aligned vector loads (_config.static_head_dim)
        head_dim = HEAD_DIM
    pid_m = tl.program_id(0)
    bh = tl.program_id(2).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    if bh >= n_bh:  # the folded grid's last z slice may hold more programs than heads
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q_base = bh * seq_q * head_dim
    k_base = bh * seq_k * head_dim
    q, q2 = _load_rows(Q + q_base, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    tq, tq2 = _load_rows(TQ + q_base, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    lse = tl.load(LSE + bh * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    mu = tl.zeros([BLOCK_M], tl.float32)
    acc, acc2 = _zeros_rows(BLOCK_M, HEAD_BLOCK, TAIL_BLOCK)
    for start_n in range(0, seq_k, BLOCK_N):
        cols = start_n + offs_n
        k, k2 = _load_rows(K + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        tk, tk2 = _load_rows(TK + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        v, v2 = _load_rows(V + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        tv, tv2 = _load_rows(TV + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        s = _dot_d(q, q2, k, k2, None, TAIL_BLOCK, PREC) * qk_scale
        if start_n + BLOCK_N > seq_k:  # only the ragged last key block needs the mask
            s = tl.where(cols[None, :] < seq_k, s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        t = _dot_d(tq, tq2, k, k2, None, TAIL_BLOCK, PREC)
        t = _dot_d(q, q2, tk, tk2, t, TAIL_BLOCK, PREC) * scale
        pt = p * t
        mu += tl.sum(pt, 1)
        acc, acc2 = _dot_rows(pt.to(v.dtype), v, v2, acc, acc2, TAIL_BLOCK, PREC)
        acc, acc2 = _dot_rows(p.to(v.dtype), tv, tv2, acc, acc2, TAIL_BLOCK, PREC)
    o, o2 = _load_hi_lo(O + q_base, O_LO + q_base, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, LOW)
    _store_hi_lo(TO + q_base, TO_LO + q_base, acc - mu[:, None] * o, acc2 - mu[:, None] * o2, offs_m, seq_q,
                 head_dim, HEAD_BLOCK, TAIL_BLOCK, LOW)
    tl.store(MU + bh * seq_q + offs_m, mu, mask=offs_m < seq_q)


def _common(q, k, configs):
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    meta = dict(**column_meta(head_dim), UPCAST=INTERPRET, PREC="ieee" if q.dtype == torch.float32 else "tf32",
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


def forward_and_tangent(q, k, v, tq, tk, tv, scale):
    """:func:`forward`, then :func:`tangent` from its O, O_lo and lse: (O, Ȯ, O_lo, lse, Ȯ_lo, μ)."""
    o, o_lo, lse = forward(q, k, v, scale)
    to, to_lo, mu = tangent(q, k, v, o, o_lo, lse, tq, tk, tv, scale)
    return o, to, o_lo, lse, to_lo, mu


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
