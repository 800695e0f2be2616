"""Triton backward kernels through O (plain flash backward), through Ȯ (tangent backward), and through both in one
pass (fused backward). docs/THEORY.md §9, docs/KERNEL.md §3.

With P, T, μ as in ``_forward``, Tc = T − μ1ᵀ, upstream gradients dO (of O) and G = dȮ (of Ȯ), row sums
δ = rowsum(dO∘O), δ̇ = rowsum(G∘Ȯ), r = rowsum(G∘O):

* through O: dL = P∘(dO Vᵀ − δ), dQ = α dL K, dK = α dLᵀ Q, dV = Pᵀ dO;
* through Ȯ: dT = P∘(G Vᵀ − r), dL = P∘(G V̇ᵀ − δ̇) + dT∘Tc,
  dQ = α(dL K + dT K̇), dQ̇ = α dT K, dK = α(dLᵀ Q + dTᵀ Q̇), dK̇ = α dTᵀ Q, dV = (P∘Tc)ᵀ G, dV̇ = Pᵀ G;
* through both (the gradients of ⟨dO, O⟩ + ⟨G, Ȯ⟩, the sum of the two above): dT as through Ȯ,
  dL = P∘(dO Vᵀ + G V̇ᵀ − δ − δ̇) + dT∘Tc, dQ, dQ̇, dK, dK̇ and dV̇ as through Ȯ with this dL, dV = Pᵀ dO + (P∘Tc)ᵀ G.

(O and Ȯ in the row sums are O_hi + O_lo for fp16/bf16, ``_forward``; dL is the gradient with respect to the
logits αQKᵀ; these equal docs/THEORY.md §9's dS and dṠ after the factor α.)
Three launches per pass and no atomics: a row pre-pass for the row sums, a KV-outer kernel (K, V, K̇, V̇ resident,
loop over query blocks) for the key-side gradients, a Q-outer kernel for the query-side ones. Nothing S²-sized is
stored. The fused pass is the tangent pass's kernels with the dO terms switched on (the compile-time flag PRIMAL):
dO Vᵀ joins G V̇ᵀ, Pᵀ dO joins dV, δ joins δ̇ in the pre-pass. Block products per pass (one S×S×D product = 2 units
of B·H·S²·D, docs/KERNEL.md §1): through O 4 + 3 = 7, through Ȯ 10 + 8 = 18, through both 12 + 9 = 21 (the key-side
kernel's SPLIT layout recomputes more: 13 and 15 instead of 10 and 12). The tests check these formulas against
float64 autograd of the plain formula.

Every (S, D) operand and accumulator is a (head, tail) pair of column tiles (``_forward``'s helpers,
``_config.head_split``): dots over D (the logits, T, G Vᵀ, dO Vᵀ, G V̇ᵀ) add the two tiles' dots, the gradients are
accumulated per tile, the row sums add per tile. Without a tail (TAIL_BLOCK = 0) the kernels are the single padded
tile's.
"""
import torch
import triton
import triton.language as tl

from . import _config
from ._config import INTERPRET, SMALL, cdiv, cfg, column_meta, launch_meta, seq_bucket, tuned
from ._forward import (LOG2E, _dot_d, _dot_rows, _load_hi_lo, _load_rows, _rowsum_d, _store_rows, _zeros_rows,
                       has_low_part, low_part_arg)

_ROW_BLOCK = 64
KERNELS = ("_row_sums_kernel", "_kv_kernel", "_kv_tangent_kernel", "_q_kernel")  # launched here, by name
_KV_CONFIGS = [cfg(32, 64, 4, 2), cfg(64, 64, 4, 2), cfg(32, 128, 8, 2), cfg(64, 128, 8, 2), cfg(64, 64, 4, 3),
               cfg(*SMALL)]
_KV_TANGENT_CONFIGS = [cfg(32, 64, 4, 2, SPLIT=True), cfg(32, 64, 4, 2, SPLIT=False), cfg(64, 64, 4, 2, SPLIT=True),
                       cfg(64, 64, 8, 2, SPLIT=False), cfg(32, 128, 8, 2, SPLIT=True), cfg(64, 64, 4, 3, SPLIT=True),
                       cfg(32, 32, 4, 2, SPLIT=False), cfg(*SMALL, SPLIT=False)]
_Q_CONFIGS = [cfg(64, 64, 4, 2), cfg(128, 32, 8, 2), cfg(128, 64, 8, 2), cfg(64, 32, 4, 2), cfg(64, 64, 4, 3),
              cfg(128, 64, 8, 3), cfg(*SMALL)]


@triton.jit
def _row_sums_kernel(DO, G, O, O_LO, TO, TO_LO, DELTA, R, n_rows, head_dim, HEAD_BLOCK: tl.constexpr,
                     TAIL_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, LOW: tl.constexpr,
                     PRIMAL: tl.constexpr, TANGENT: tl.constexpr):
    """The backward's row sums in fp32 for contiguous (n_rows, head_dim) tensors, O = O_hi + O_lo and
    Ȯ = Ȯ_hi + Ȯ_lo if LOW: DELTA = rowsum(dO∘O) if PRIMAL, + rowsum(G∘Ȯ) if TANGENT; R = rowsum(G∘O) if TANGENT."""
    if HEAD_DIM > 0:  # D not a multiple of 16, compiled in: aligned vector loads (_config.static_head_dim)
        head_dim = HEAD_DIM
    offs_r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    in_rows = offs_r < n_rows
    o, o2 = _load_hi_lo(O, O_LO, offs_r, n_rows, head_dim, HEAD_BLOCK, TAIL_BLOCK, LOW)
    delta = tl.zeros([ROWS], tl.float32)
    if PRIMAL:
        do, do2 = _load_rows(DO, offs_r, n_rows, head_dim, HEAD_BLOCK, TAIL_BLOCK, True)
        delta += _rowsum_d(do, do2, o, o2, TAIL_BLOCK)
    if TANGENT:
        g, g2 = _load_rows(G, offs_r, n_rows, head_dim, HEAD_BLOCK, TAIL_BLOCK, True)
        to, to2 = _load_hi_lo(TO, TO_LO, offs_r, n_rows, head_dim, HEAD_BLOCK, TAIL_BLOCK, LOW)
        delta += _rowsum_d(g, g2, to, to2, TAIL_BLOCK)
        tl.store(R + offs_r, _rowsum_d(g, g2, o, o2, TAIL_BLOCK), mask=in_rows)
    tl.store(DELTA + offs_r, delta, mask=in_rows)


@tuned(_KV_CONFIGS)
@triton.jit
def _kv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, scale, seq_q, seq_k, head_dim, SEQ_BUCKET, n_bh,
               HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Key-side gradients through O for one key block (rows = keys, columns = queries): dK, dV."""
    if HEAD_DIM > 0:  # D not a multiple of 16, compiled in: aligned vector loads (_config.static_head_dim)
        head_dim = HEAD_DIM
    pid_n = tl.program_id(0)
    bh = tl.program_id(2).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    if bh >= n_bh:  # the folded grid's last z slice may hold more programs than heads
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    q_base = bh * seq_q * head_dim
    k_base = bh * seq_k * head_dim
    k, k2 = _load_rows(K + k_base, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    v, v2 = _load_rows(V + k_base, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    dk, dk2 = _zeros_rows(BLOCK_N, HEAD_BLOCK, TAIL_BLOCK)
    dv, dv2 = _zeros_rows(BLOCK_N, HEAD_BLOCK, TAIL_BLOCK)
    for start_m in range(0, seq_q, BLOCK_M):
        rows = start_m + offs_m
        in_rows = rows < seq_q
        q, q2 = _load_rows(Q + q_base, rows, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        do, do2 = _load_rows(DO + q_base, rows, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        lse = tl.load(LSE + bh * seq_q + rows, mask=in_rows, other=float("inf"))
        delta = tl.load(DELTA + bh * seq_q + rows, mask=in_rows, other=0.0)
        p_t = tl.exp2(_dot_d(k, k2, q, q2, None, TAIL_BLOCK, PREC) * qk_scale - lse[None, :])
        dl_t = p_t * (_dot_d(v, v2, do, do2, None, TAIL_BLOCK, PREC) - delta[None, :])
        dk, dk2 = _dot_rows(dl_t.to(q.dtype), q, q2, dk, dk2, TAIL_BLOCK, PREC)
        dv, dv2 = _dot_rows(p_t.to(do.dtype), do, do2, dv, dv2, TAIL_BLOCK, PREC)
    _store_rows(DK + k_base, dk * scale, dk2 * scale, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)
    _store_rows(DV + k_base, dv, dv2, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)


@triton.jit
def _kv_tangent_loop(Q, TQ, DO, G, LSE, MU, DELTA, R, k, k2, v, v2, tk, tk2, tv, tv2, q_base, row_base, qk_scale,
                     scale, seq_q, head_dim, HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                     PRIMAL: tl.constexpr, DO_K: tl.constexpr, DO_V: tl.constexpr):
    """Loop over query blocks accumulating the pairs (dK, dK̇) if DO_K and (dV, dV̇) if DO_V, unscaled, transposed
    layout; with dO's terms (dO Vᵀ in dL, Pᵀ dO in dV) if PRIMAL. Returns dK, dK̇, dV, dV̇ as (head, tail) pairs."""
    offs_m = tl.arange(0, BLOCK_M)
    dk, dk2 = _zeros_rows(BLOCK_N, HEAD_BLOCK, TAIL_BLOCK)
    dtk, dtk2 = _zeros_rows(BLOCK_N, HEAD_BLOCK, TAIL_BLOCK)
    dv, dv2 = _zeros_rows(BLOCK_N, HEAD_BLOCK, TAIL_BLOCK)
    dtv, dtv2 = _zeros_rows(BLOCK_N, HEAD_BLOCK, TAIL_BLOCK)
    for start_m in range(0, seq_q, BLOCK_M):
        rows = start_m + offs_m
        in_rows = rows < seq_q
        q, q2 = _load_rows(Q + q_base, rows, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        tq, tq2 = _load_rows(TQ + q_base, rows, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        g, g2 = _load_rows(G + q_base, rows, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        if PRIMAL:
            do, do2 = _load_rows(DO + q_base, rows, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        lse = tl.load(LSE + row_base + rows, mask=in_rows, other=float("inf"))
        mu = tl.load(MU + row_base + rows, mask=in_rows, other=0.0)
        p_t = tl.exp2(_dot_d(k, k2, q, q2, None, TAIL_BLOCK, PREC) * qk_scale - lse[None, :])
        t_t = _dot_d(tk, tk2, q, q2, None, TAIL_BLOCK, PREC)
        t_t = _dot_d(k, k2, tq, tq2, t_t, TAIL_BLOCK, PREC) * scale
        tc_t = t_t - mu[None, :]
        if DO_K:
            delta = tl.load(DELTA + row_base + rows, mask=in_rows, other=0.0)
            r = tl.load(R + row_base + rows, mask=in_rows, other=0.0)
            dt_t = p_t * (_dot_d(v, v2, g, g2, None, TAIL_BLOCK, PREC) - r[None, :])
            bm_t = _dot_d(tv, tv2, g, g2, None, TAIL_BLOCK, PREC)
            if PRIMAL:
                bm_t = _dot_d(v, v2, do, do2, bm_t, TAIL_BLOCK, PREC)
            dl_t = p_t * (bm_t - delta[None, :]) + dt_t * tc_t
            dk, dk2 = _dot_rows(dl_t.to(q.dtype), q, q2, dk, dk2, TAIL_BLOCK, PREC)
            dk, dk2 = _dot_rows(dt_t.to(q.dtype), tq, tq2, dk, dk2, TAIL_BLOCK, PREC)
            dtk, dtk2 = _dot_rows(dt_t.to(q.dtype), q, q2, dtk, dtk2, TAIL_BLOCK, PREC)
        if DO_V:
            dv, dv2 = _dot_rows((p_t * tc_t).to(g.dtype), g, g2, dv, dv2, TAIL_BLOCK, PREC)
            if PRIMAL:
                dv, dv2 = _dot_rows(p_t.to(do.dtype), do, do2, dv, dv2, TAIL_BLOCK, PREC)
            dtv, dtv2 = _dot_rows(p_t.to(g.dtype), g, g2, dtv, dtv2, TAIL_BLOCK, PREC)
    return dk, dk2, dtk, dtk2, dv, dv2, dtv, dtv2


@tuned(_KV_TANGENT_CONFIGS, extra_key=("PRIMAL",))
@triton.jit
def _kv_tangent_kernel(Q, K, V, TQ, TK, TV, DO, G, LSE, MU, DELTA, R, DK, DV, DTK, DTV,
                       qk_scale, scale, seq_q, seq_k, head_dim, SEQ_BUCKET, n_bh,
                       HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr,
                       PREC: tl.constexpr, PRIMAL: tl.constexpr):
    """Key-side gradients through Ȯ, and through O too if PRIMAL, for one key block: dK, dK̇, dV, dV̇
    (DELTA = δ̇, or δ + δ̇ if PRIMAL; R = r; DO is read only if PRIMAL).

    SPLIT=True launches two programs per key block, one for (dK, dK̇) and one for (dV, dV̇): more recomputation
    (13 instead of 10 block products per step, 15 instead of 12 if PRIMAL) but half the accumulators per program,
    which avoids register spills at D = 128. The autotuner chooses.
    """
    if HEAD_DIM > 0:  # D not a multiple of 16, compiled in: aligned vector loads (_config.static_head_dim)
        head_dim = HEAD_DIM
    pid = tl.program_id(0)
    bh = tl.program_id(2).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    if bh >= n_bh:  # the folded grid's last z slice may hold more programs than heads
        return
    pid_n = pid // 2 if SPLIT else pid
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    q_base = bh * seq_q * head_dim
    k_base = bh * seq_k * head_dim
    row_base = bh * seq_q
    k, k2 = _load_rows(K + k_base, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    tk, tk2 = _load_rows(TK + k_base, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    v, v2 = _load_rows(V + k_base, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    tv, tv2 = _load_rows(TV + k_base, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    if SPLIT:
        if pid % 2 == 0:
            dk, dk2, dtk, dtk2, dv, dv2, dtv, dtv2 = _kv_tangent_loop(
                Q, TQ, DO, G, LSE, MU, DELTA, R, k, k2, v, v2, tk, tk2, tv, tv2, q_base, row_base, qk_scale, scale,
                seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, BLOCK_M, BLOCK_N, UPCAST, PREC, PRIMAL, True, False)
            _store_rows(DK + k_base, dk * scale, dk2 * scale, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)
            _store_rows(DTK + k_base, dtk * scale, dtk2 * scale, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)
        else:
            dk, dk2, dtk, dtk2, dv, dv2, dtv, dtv2 = _kv_tangent_loop(
                Q, TQ, DO, G, LSE, MU, DELTA, R, k, k2, v, v2, tk, tk2, tv, tv2, q_base, row_base, qk_scale, scale,
                seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, BLOCK_M, BLOCK_N, UPCAST, PREC, PRIMAL, False, True)
            _store_rows(DV + k_base, dv, dv2, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)
            _store_rows(DTV + k_base, dtv, dtv2, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)
    else:
        dk, dk2, dtk, dtk2, dv, dv2, dtv, dtv2 = _kv_tangent_loop(
            Q, TQ, DO, G, LSE, MU, DELTA, R, k, k2, v, v2, tk, tk2, tv, tv2, q_base, row_base, qk_scale, scale,
            seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, BLOCK_M, BLOCK_N, UPCAST, PREC, PRIMAL, True, True)
        _store_rows(DK + k_base, dk * scale, dk2 * scale, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)
        _store_rows(DTK + k_base, dtk * scale, dtk2 * scale, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)
        _store_rows(DV + k_base, dv, dv2, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)
        _store_rows(DTV + k_base, dtv, dtv2, offs_n, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK)


@tuned(_Q_CONFIGS, extra_key=("PRIMAL", "TANGENT"))
@triton.jit
def _q_kernel(Q, K, V, TQ, TK, TV, DO, G, LSE, MU, DELTA, R, DQ, DTQ,
              qk_scale, scale, seq_q, seq_k, head_dim, SEQ_BUCKET, n_bh,
              HEAD_BLOCK: tl.constexpr, TAIL_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, PRIMAL: tl.constexpr, TANGENT: tl.constexpr, UPCAST: tl.constexpr,
              PREC: tl.constexpr):
    """Query-side gradients for one query block, recomputing P (and T) per key block: dQ through O if PRIMAL, dQ and
    dQ̇ through Ȯ if TANGENT, through both if both (at least one is set; DO is read only if PRIMAL, G, TQ, TK, TV,
    MU, R only if TANGENT; DELTA is δ, δ̇ or δ + δ̇ accordingly). Writes dQ (and dQ̇)."""
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
    in_rows = offs_m < seq_q
    q, q2 = _load_rows(Q + q_base, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    lse = tl.load(LSE + bh * seq_q + offs_m, mask=in_rows, other=0.0)
    delta = tl.load(DELTA + bh * seq_q + offs_m, mask=in_rows, other=0.0)
    dq, dq2 = _zeros_rows(BLOCK_M, HEAD_BLOCK, TAIL_BLOCK)
    if PRIMAL:
        do, do2 = _load_rows(DO + q_base, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
    if TANGENT:
        g, g2 = _load_rows(G + q_base, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        tq, tq2 = _load_rows(TQ + q_base, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        mu = tl.load(MU + bh * seq_q + offs_m, mask=in_rows, other=0.0)
        r = tl.load(R + bh * seq_q + offs_m, mask=in_rows, other=0.0)
        dtq, dtq2 = _zeros_rows(BLOCK_M, HEAD_BLOCK, TAIL_BLOCK)
    for start_n in range(0, seq_k, BLOCK_N):
        cols = start_n + offs_n
        k, k2 = _load_rows(K + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        v, v2 = _load_rows(V + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
        s = _dot_d(q, q2, k, k2, None, TAIL_BLOCK, PREC) * qk_scale
        if start_n + BLOCK_N > seq_k:  # only the ragged last key block needs the mask
            s = tl.where(cols[None, :] < seq_k, s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        if TANGENT:
            tk, tk2 = _load_rows(TK + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
            tv, tv2 = _load_rows(TV + k_base, cols, seq_k, head_dim, HEAD_BLOCK, TAIL_BLOCK, UPCAST)
            t = _dot_d(tq, tq2, k, k2, None, TAIL_BLOCK, PREC)
            t = _dot_d(q, q2, tk, tk2, t, TAIL_BLOCK, PREC) * scale
            dt = p * (_dot_d(g, g2, v, v2, None, TAIL_BLOCK, PREC) - r[:, None])
            bm = _dot_d(g, g2, tv, tv2, None, TAIL_BLOCK, PREC)
            if PRIMAL:
                bm = _dot_d(do, do2, v, v2, bm, TAIL_BLOCK, PREC)
            dl = p * (bm - delta[:, None]) + dt * (t - mu[:, None])
            dq, dq2 = _dot_rows(dl.to(k.dtype), k, k2, dq, dq2, TAIL_BLOCK, PREC)
            dq, dq2 = _dot_rows(dt.to(k.dtype), tk, tk2, dq, dq2, TAIL_BLOCK, PREC)
            dtq, dtq2 = _dot_rows(dt.to(k.dtype), k, k2, dtq, dtq2, TAIL_BLOCK, PREC)
        else:
            dl = p * (_dot_d(do, do2, v, v2, None, TAIL_BLOCK, PREC) - delta[:, None])
            dq, dq2 = _dot_rows(dl.to(k.dtype), k, k2, dq, dq2, TAIL_BLOCK, PREC)
    _store_rows(DQ + q_base, dq * scale, dq2 * scale, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK)
    if TANGENT:
        _store_rows(DTQ + q_base, dtq * scale, dtq2 * scale, offs_m, seq_q, head_dim, HEAD_BLOCK, TAIL_BLOCK)


def _row_sums(o, o_lo, do, to, to_lo, g):
    """The pre-pass's (δ, r) in fp32 as (B·H, S) tensors, for contiguous (B, H, S, D) tensors and the low parts
    o_lo, to_lo (empty tensors for fp32): δ = rowsum(dO∘O) + rowsum(G∘Ȯ) over the cotangents given (dO or G may be
    None, with Ȯ then unused), r = rowsum(G∘O) (None without G)."""
    head_dim = o.shape[-1]
    n_rows = o.numel() // head_dim
    rows = lambda: torch.empty(o.shape[:-1], device=o.device, dtype=torch.float32).view(-1, o.shape[2])  # noqa: E731
    delta = rows()
    r = None if g is None else rows()
    _row_sums_kernel[(cdiv(n_rows, _ROW_BLOCK),)](
        o if do is None else do, o if g is None else g, o, low_part_arg(o, o_lo),
        o if to is None else to, o if to is None else low_part_arg(to, to_lo), delta, delta if r is None else r,
        n_rows, head_dim, **column_meta(head_dim), ROWS=_ROW_BLOCK, LOW=has_low_part(o.dtype), PRIMAL=do is not None,
        TANGENT=g is not None)
    return delta, r


def _launch(q, k, v, tq, tk, tv, do, g, lse, mu, delta, r, scale, primal, tangent):
    """The key-side and query-side kernels of the pass through O (``primal``), Ȯ (``tangent``) or both. Arguments
    a pass does not read (dO, G, the tangents, μ, r) may be any tensor of the right kind."""
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    fp32 = q.dtype == torch.float32
    meta = dict(**column_meta(head_dim), UPCAST=INTERPRET, PREC="ieee" if fp32 else "tf32")
    args = (scale * LOG2E, scale, seq_q, seq_k, head_dim, seq_bucket(max(seq_q, seq_k)), batch * heads)
    bh_grid = _config.grid_bh(batch * heads)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if tangent:
        dtq, dtk, dtv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        kv_grid = lambda m: (cdiv(seq_k, m["BLOCK_N"]) * (2 if m["SPLIT"] else 1), *bh_grid)  # noqa: E731
        _kv_tangent_kernel[kv_grid](q, k, v, tq, tk, tv, do, g, lse, mu, delta, r, dk, dv, dtk, dtv, *args, **meta,
                                    PRIMAL=primal, **launch_meta(_KV_TANGENT_CONFIGS, fp32))
    else:
        dtq = dq
        kv_grid = lambda m: (cdiv(seq_k, m["BLOCK_N"]), *bh_grid)  # noqa: E731
        _kv_kernel[kv_grid](q, k, v, do, lse, delta, dk, dv, *args, **meta, **launch_meta(_KV_CONFIGS, fp32))
    q_grid = lambda m: (cdiv(seq_q, m["BLOCK_M"]), *bh_grid)  # noqa: E731
    _q_kernel[q_grid](q, k, v, tq, tk, tv, do, g, lse, mu, delta, r, dq, dtq, *args, **meta, PRIMAL=primal,
                      TANGENT=tangent, **launch_meta(_Q_CONFIGS, fp32))
    return (dq, dk, dv, dtq, dtk, dtv) if tangent else (dq, dk, dv)


def backward_primal(q, k, v, o, o_lo, lse, do, scale):
    """(dQ, dK, dV) of ⟨dO, O⟩; all tensors contiguous (o_lo: ``_forward.forward``'s low part of O)."""
    delta, _ = _row_sums(o, o_lo, do, None, None, None)
    return _launch(q, k, v, q, k, v, do, do, lse, lse, delta, delta, scale, primal=True, tangent=False)


def backward_tangent(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, g, scale):
    """(dQ, dK, dV, dQ̇, dK̇, dV̇) of ⟨G, Ȯ⟩; all tensors contiguous (o_lo, to_lo: the low parts of O and Ȯ)."""
    return backward_fused(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, None, g, scale)


def backward_fused(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, do, g, scale):
    """(dQ, dK, dV, dQ̇, dK̇, dV̇) of ⟨dO, O⟩ + ⟨G, Ȯ⟩ in one pass (one pre-pass, one key-side and one query-side
    launch, 21 block products instead of the two passes' 7 + 18); all tensors contiguous (o_lo, to_lo: the low parts
    of O and Ȯ). Either cotangent may be None (its term is zero): without G this is :func:`backward_primal`, whose
    (dQ̇, dK̇, dV̇) are None, and without dO the pass through Ȯ alone."""
    if do is None and g is None:
        raise ValueError("kernels._backward.backward_fused: dO and G are both None (no gradient to propagate)")
    if g is None:
        return (*backward_primal(q, k, v, o, o_lo, lse, do, scale), None, None, None)
    delta, r = _row_sums(o, o_lo, do, to, to_lo, g)
    return _launch(q, k, v, tq, tk, tv, g if do is None else do, g, lse, mu, delta, r, scale,
                   primal=do is not None, tangent=True)
