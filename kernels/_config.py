"""Launch configuration shared by the attention kernels: interpreter detection, block shapes, autotuning.

Under ``TRITON_INTERPRET=1`` (CPU tests) ``@triton.autotune`` does not work and ``bf16`` dots are unreliable, so a
fixed small configuration is used and every operand is upcast to fp32 inside the kernels. On a GPU each kernel is
autotuned over a handful of configurations keyed on the padded head dimension, the dtype (Triton adds the dtypes of
tensor arguments to the key) and a power-of-two bucket of the sequence length; batch size and head count are runtime
values, so a new batch size never recompiles. See docs/KERNEL.md.
"""
import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# KERNELS_AUTOTUNE=0 launches the first listed configuration (the small fp32-safe one for fp32) instead of
# autotuning: used by the GPU tests, which run many shapes once and care about correctness, not speed.
AUTOTUNE = not INTERPRET and os.environ.get("KERNELS_AUTOTUNE", "1") != "0"

# Small blocks under the interpreter so that ragged tails (lengths that are not block multiples) are exercised by
# tiny test sizes.
INTERPRET_META = {"BLOCK_M": 16, "BLOCK_N": 16}


# CUDA's limit on a grid's y and z extents. The kernels put B·H on y and fold what exceeds it onto z (grid_bh), so
# B·H up to 65535² launches; tests lower it to exercise the folding under the interpreter.
MAX_GRID_Y = 65535


def grid_bh(n_bh: int) -> tuple[int, int]:
    """(y, z) grid extents for ``n_bh`` = B·H programs per row block: y ≤ MAX_GRID_Y and y·z ≥ n_bh. A program
    finds its head as bh = z_i·y + y_i (``tl.num_programs(1)`` is y) and returns at once when bh ≥ n_bh."""
    y = min(n_bh, MAX_GRID_Y)
    return y, triton.cdiv(n_bh, y)


def head_block(head_dim: int) -> int:
    """Padded head dimension: the next power of two, at least 16 (``tl.dot`` needs K ≥ 16)."""
    return max(16, triton.next_power_of_2(head_dim))


def seq_bucket(seq_len: int) -> int:
    """Autotuning bucket of a sequence length (next power of two, at least 128)."""
    return max(128, triton.next_power_of_2(seq_len))


def tuned(configs, extra_key=()):
    """Decorator: autotune over ``configs`` on the GPU, identity under the interpreter or with KERNELS_AUTOTUNE=0.

    The key is ``HEAD_BLOCK``, ``SEQ_BUCKET`` (arguments of every kernel) and ``extra_key``.
    """
    if not AUTOTUNE:
        return lambda fn: fn
    return triton.autotune(configs=configs, key=["HEAD_BLOCK", "SEQ_BUCKET", *extra_key])


def launch_meta(configs, fp32: bool) -> dict:
    """Extra keyword arguments for a launch: a fixed configuration unless autotuned (then nothing)."""
    if INTERPRET:
        return {**configs[0].kwargs, **INTERPRET_META}
    if AUTOTUNE:
        return {}
    c = configs[-1] if fp32 else configs[0]
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


# Every list of configurations ends with this small one, which fits fp32 operands at D = 128.
SMALL = (32, 32, 4, 1)


def cfg(block_m: int, block_n: int, warps: int, stages: int, **extra) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, **extra}, num_warps=warps, num_stages=stages)
