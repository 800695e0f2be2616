"""Launch configuration shared by the attention kernels: interpreter detection, block shapes, autotuning.

Under ``TRITON_INTERPRET=1`` (CPU tests) ``@triton.autotune`` does not work and ``bf16`` dots are unreliable, so a
fixed small configuration is used and every operand is upcast to fp32 inside the kernels. On a GPU each kernel is
autotuned over a handful of configurations keyed on the head dimension's column tiles (``head_split``: one padded
power-of-two tile, or a head and a tail tile), the dtype (Triton adds the dtypes of tensor arguments to the key) and a
power-of-two bucket of the sequence length; batch size and head count are runtime values, so a new batch size never
recompiles. See docs/KERNEL.md.
"""
import contextlib
import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# KERNELS_AUTOTUNE=0 (read once, at import; AUTOTUNE_ENV keeps the value read) launches one fixed configuration per
# kernel instead of autotuning: the first listed one for fp16/bf16, the last (small, fp32-safe) one for fp32.
# tests/conftest.py sets it for the test session, which runs many shapes once and cares about correctness, not speed;
# KERNELS_AUTOTUNE=1 keeps autotuning there. The other configurations are checked by pinning each in turn
# (``pinned``, tests/test_attention_configs.py).
AUTOTUNE_ENV = os.environ.get("KERNELS_AUTOTUNE", "1")
AUTOTUNE = not INTERPRET and AUTOTUNE_ENV != "0"

# The configuration list of every tuned kernel, by kernel name (filled by ``tuned``).
TUNED: dict[str, list] = {}
# id(configuration list) → the configuration launched in its place while ``pinned`` is active; empty otherwise.
_PINS: dict[int, triton.Config] = {}

# Small blocks under the interpreter so that ragged tails (lengths that are not block multiples) are exercised by
# tiny test sizes.
INTERPRET_META = {"BLOCK_M": 16, "BLOCK_N": 16}


# CUDA's limit on a grid's y and z extents. The kernels put B·H on y and fold what exceeds it onto z (grid_bh), so
# B·H up to 65535² launches; tests lower it to exercise the folding under the interpreter.
MAX_GRID_Y = 65535


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for integers, b > 0: ``triton.cdiv``'s value in plain Python. Host code calls this, not
    ``triton.cdiv``, a constexpr function that costs ~2 µs a host call (Triton 3.9, CPU), several per attention call."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ≥ n, for n ≥ 1: ``triton.next_power_of_2``'s value in plain Python (see ``cdiv``)."""
    return 1 << (n - 1).bit_length()


def grid_bh(n_bh: int) -> tuple[int, int]:
    """(y, z) grid extents for ``n_bh`` = B·H programs per row block: y ≤ MAX_GRID_Y and y·z ≥ n_bh. A program
    finds its head as bh = z_i·y + y_i (``tl.num_programs(1)`` is y) and returns at once when bh ≥ n_bh."""
    y = min(n_bh, MAX_GRID_Y)
    return y, cdiv(n_bh, y)


def head_block(head_dim: int) -> int:
    """Padded head dimension: the next power of two, at least 16 (``tl.dot`` needs K ≥ 16)."""
    return max(16, next_power_of_2(head_dim))


def head_split(head_dim: int) -> tuple[int, int]:
    """(HEAD_BLOCK, TAIL_BLOCK): the two power-of-two column tiles that the kernels cover a head dimension D with.

    The one place of the rule. The padded tile is ``head_block(D)`` = max(16, next_pow2(D)). The split is a head of
    the largest power of two ≤ D (at least 16) and a tail of the next power of two ≥ D − head (at least 16; the tail
    tile is masked to columns < D). It is used only when head + tail < the padded size; otherwise (and when D is a
    power of two, D ≤ 16 or the rest D − head is ≤ 0) the tail is 0 and the head is the padded size, the single tile
    the kernels used before the split. Tile sizes must be powers of two and ``tl.dot`` needs every dimension ≥ 16.

    Examples: 72 → (64, 16), 80 tile columns instead of 128; 80 → (64, 16); 96 → (64, 32); 40 → (32, 16);
    48 → (32, 16); 24 → (32, 0), since 16 + 16 is not smaller than 32; 112 → (128, 0); 64 → (64, 0);
    128 → (128, 0). docs/KERNEL.md §5.
    """
    padded = head_block(head_dim)
    head = max(16, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - head
    tail = max(16, next_power_of_2(rest)) if rest > 0 else 0
    if tail == 0 or head + tail >= padded:
        return padded, 0
    return head, tail


def static_head_dim(head_dim: int) -> int:
    """The kernels' HEAD_DIM constexpr: D itself when it is not a multiple of 16, else 0 (the kernels then read D from
    their runtime argument ``head_dim``).

    D is the row stride of every (S, D) operand and the bound of the column masks. Triton specializes an integer
    argument that is a multiple of 16, so at D = 64 or 128 the compiler knows that rows start 32-byte aligned and that
    the masks are constant over 16 columns: tiles are loaded as 16-byte vectors, asynchronously (cp.async) and
    pipelined over num_stages. Any other D is to the compiler a stride of unknown alignment: each element is loaded on
    its own (ld.global.b16), synchronously, through registers. At D = 72 that made ten times the load instructions,
    no pipelining, 255 registers and spills in most kernels, and half of D = 64's throughput (docs/KERNEL.md §5). As
    a compile-time constant, 72 = 8·9 gives 16-byte aligned bf16 rows and the vectorized, pipelined loads back.
    D = 64 and 128 keep the runtime argument and compile to the same code as before; each other D compiles its own
    kernels.
    """
    return head_dim if head_dim % 16 else 0


def column_meta(head_dim: int) -> dict:
    """The head dimension's constexprs, as every kernel takes them: HEAD_BLOCK and TAIL_BLOCK (``head_split``) and
    HEAD_DIM (``static_head_dim``)."""
    head, tail = head_split(head_dim)
    return {"HEAD_BLOCK": head, "TAIL_BLOCK": tail, "HEAD_DIM": static_head_dim(head_dim)}


def seq_bucket(seq_len: int) -> int:
    """Autotuning bucket of a sequence length (next power of two, at least 128)."""
    return max(128, next_power_of_2(seq_len))


def tuned(configs, extra_key=()):
    """Decorator: autotune over ``configs`` on the GPU, identity under the interpreter or with KERNELS_AUTOTUNE=0;
    records ``configs`` in ``TUNED`` under the kernel's name.

    The key is ``HEAD_BLOCK``, ``TAIL_BLOCK`` (``head_split``: configurations are tuned per split), ``HEAD_DIM``
    (``static_head_dim``: a D compiled in is a kernel of its own), ``SEQ_BUCKET`` (arguments of every kernel) and
    ``extra_key``.
    """
    def decorate(fn):
        TUNED[fn.__name__] = configs
        if not AUTOTUNE:
            return fn
        return triton.autotune(configs=configs,
                               key=["HEAD_BLOCK", "TAIL_BLOCK", "HEAD_DIM", "SEQ_BUCKET", *extra_key])(fn)
    return decorate


def _fixed(config: triton.Config) -> dict:
    return dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def launch_meta(configs, fp32: bool) -> dict:
    """Extra keyword arguments for a launch: the pinned configuration of ``configs`` if any (``pinned``), else a fixed
    configuration unless autotuned (then nothing)."""
    if _PINS and id(configs) in _PINS:
        return _fixed(_PINS[id(configs)])
    if INTERPRET:
        return {**configs[0].kwargs, **INTERPRET_META}
    if AUTOTUNE:
        return {}
    return _fixed(configs[-1] if fp32 else configs[0])


@contextlib.contextmanager
def pinned(configs, config: triton.Config):
    """Within the block, every launch that chooses among ``configs`` uses ``config``, one of them: its block sizes
    and extra parameters, and on a GPU its warps and stages (the interpreter ignores those two). For tests that check
    each configuration the autotuner may pick. An autotuned kernel takes no launch configuration, so on a GPU this
    needs KERNELS_AUTOTUNE=0 (the test session's default)."""
    if not any(c is config for c in configs):
        raise ValueError(f"kernels._config.pinned: config {config} is not one of configs")
    if AUTOTUNE:
        raise RuntimeError("kernels._config.pinned: the kernels are autotuned (KERNELS_AUTOTUNE is not 0), so a "
                           "launch cannot be given a configuration")
    key = id(configs)
    previous = _PINS.get(key)
    _PINS[key] = config
    try:
        yield
    finally:
        if previous is None:
            del _PINS[key]
        else:
            _PINS[key] = previous


# Every list of configurations ends with this small one, which fits fp32 operands at D = 128.
SMALL = (32, 32, 4, 1)


def cfg(block_m: int, block_n: int, warps: int, stages: int, **extra) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, **extra}, num_warps=warps, num_stages=stages)
