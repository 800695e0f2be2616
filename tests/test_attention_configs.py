"""Every launch configuration of the attention kernels against float64, and the test session's fixed configurations
(issue 20).

The test session launches one configuration per kernel (KERNELS_AUTOTUNE=0, set by tests/conftest.py; see
kernels/_config.py), so the others, which the autotuner may pick in training, are checked here: each configuration of
every list in ``kernels._config.TUNED`` is pinned (``kernels._config.pinned``), and O, Ȯ and the six gradients of
⟨G1, O⟩ + ⟨G2, Ȯ⟩ are compared with float64 autograd of the plain formula on the same rounded inputs, along both
backward paths: ``torch.func.jvp`` of ``attention`` (the passes through O and through Ȯ, each kernel's single-pass
variant) and ``attention_jvp`` (the fused pass: the key-side tangent kernel and the query-side kernel with PRIMAL on).

* On a GPU, with each configuration's real block sizes, warps and stages, one configuration at a time (the other
  kernels at their defaults; one test per kernel, so that ``pytest -n`` compiles them in parallel), so that one that
  does not fit is named: Triton's OutOfResources is reported and skipped, as the autotuner skips it. bf16 at D = 72
  (DiT-XL/2's head size, what training autotunes over: a 64-wide and a 16-wide tile since kernels._config.head_split,
  a 128-wide tile before, the largest register and shared-memory use); fp32 at D = 16 (the IEEE-dot path) only with
  --runslow.
  Compiling is what costs: ahead of time for sm_90 on this project's 2-core CPU (shared with other jobs), the 40
  kernel variants of the two-pass backward (33 configurations; the query-side kernel with and without the tangent)
  took 117 s in bf16 at the 128-wide tile and 145 s in fp32 at the 16-wide one (the fused pass adds 15 variants, the
  key-side tangent kernel's 8 configurations and the query-side kernel's 7 with PRIMAL on; not compiled on a GPU
  yet); fp32 at the 128-wide tile took 4–33 s per forward variant, and
  its 128×128 forward needs 256 KiB of shared memory, more than an H100 has. S_q = 150, S_k = 203: a partial last
  block and at least two blocks for every block size (32, 64, 128), so every loop runs more than once. Bounds:
  tests/gpu/test_attention_gpu.py's.
* Under the interpreter (which honours BLOCK_M, BLOCK_N and SPLIT and ignores warps and stages), fp32 at D = 40
  (32 + 16 columns, kernels._config.head_split), S_q = 70, S_k = 45: ragged for every block size, loops of one to
  three blocks. There every program costs time, and the default configuration's 16-wide blocks make many, so all
  lists are pinned together, round i launching configuration i (modulo the list's length) of each: 8 rounds instead
  of 33 runs (two paths each), each with few programs. Bound: tests/test_attention.py's fp32 bound (errors measured
  ≈ 4e-7 at D = 24).
"""
import contextlib
import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from triton.runtime.errors import OutOfResources  # noqa: E402

from kernels import _config, attention, attention_jvp  # noqa: E402
from kernels.testing import jvp_with_grads, relative_errors, with_grads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda":
    CASES = {torch.bfloat16: (150, 203, 72), torch.float32: (150, 203, 16)}  # (S_q, S_k, D)
    BOUND = {torch.bfloat16: 2.5e-2, torch.float32: 1e-4}
    DTYPES = [torch.bfloat16, pytest.param(torch.float32, marks=pytest.mark.slow)]
else:
    CASES = {torch.float32: (70, 45, 40)}  # D = 40: a 32-wide head and a 16-wide tail tile
    BOUND = {torch.float32: 1e-5}
    DTYPES = [torch.float32]


def test_the_session_launches_fixed_configurations():
    """tests/conftest.py sets KERNELS_AUTOTUNE (to 0 unless the environment has it) before any test module imports
    ``kernels``, and kernels/_config.py read that value: no autotuning unless asked for with KERNELS_AUTOTUNE=1.
    (The interpreter never autotunes, so only the value read tells, on the CPU, that the order is right.)"""
    assert _config.AUTOTUNE_ENV == os.environ["KERNELS_AUTOTUNE"], "kernels imported before conftest set the variable"
    if _config.AUTOTUNE_ENV == "0":
        assert _config.AUTOTUNE is False


@pytest.mark.skipif(_config.AUTOTUNE, reason="KERNELS_AUTOTUNE=1: autotuned kernels take no pinned configuration")
def test_a_pinned_configuration_reaches_the_launch_and_only_there():
    """launch_meta returns the pinned configuration for its list (nested pins of one list restore the outer one) and
    the default for other lists and after the block; a configuration from another list is refused."""
    configs, others = _config.TUNED["_fwd_kernel"], _config.TUNED["_q_kernel"]
    default, other_default = _config.launch_meta(configs, fp32=False), _config.launch_meta(others, fp32=False)
    fixed = lambda c: dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)  # noqa: E731
    with _config.pinned(configs, configs[2]):
        assert _config.launch_meta(configs, fp32=False) == fixed(configs[2])
        assert _config.launch_meta(configs, fp32=True) == fixed(configs[2])
        assert _config.launch_meta(others, fp32=False) == other_default
        with _config.pinned(configs, configs[3]):
            assert _config.launch_meta(configs, fp32=False) == fixed(configs[3])
        assert _config.launch_meta(configs, fp32=False) == fixed(configs[2])
    assert _config.launch_meta(configs, fp32=False) == default != fixed(configs[2])
    foreign = next(c for c in others if all(c is not d for d in configs))
    with pytest.raises(ValueError, match="is not one of configs"), _config.pinned(configs, foreign):
        pass
    assert not _config._PINS


@functools.cache
def _case(dtype):
    """Inputs (q, k, v, q̇, k̇, v̇, G1, G2; B = 1, H = 2) and the float64 reference on their rounding to ``dtype``."""
    sq, sk, d = CASES[dtype]
    g = torch.Generator().manual_seed(20)
    x = [torch.randn(1, 2, s, d, generator=g, dtype=torch.float64) for s in (sq, sk, sk, sq, sk, sk, sq, sq)]
    rounded = [t.to(dtype).double() for t in x[:6]]
    ref = jvp_with_grads(lambda q, k, v: attention(q, k, v, backend="reference"), rounded[:3], rounded[3:],
                         x[6], x[7])
    return [t.to(DEVICE) for t in x], ref


def _describe(config) -> str:
    return " ".join([*(f"{k}={v}" for k, v in config.kwargs.items()), f"warps={config.num_warps}",
                     f"stages={config.num_stages}"])


# On a GPU one test per kernel, so that `pytest -n` compiles the kernels' configurations in parallel
KERNELS = sorted(_config.TUNED) if DEVICE == "cuda" else ["all"]


# The key-side kernel of the pass through O alone: the fused pass does not launch it.
TWO_PASSES_ONLY = {"_kv_kernel"}


def _rounds(kernel):
    """Lists of (kernel, configuration) pinned together: on a GPU, each configuration of ``kernel`` alone; under the
    interpreter (``kernel == "all"``), round i pins configuration i (modulo the list's length) of every list."""
    if DEVICE == "cuda":
        return [[(kernel, c)] for c in _config.TUNED[kernel]]
    longest = max(len(configs) for configs in _config.TUNED.values())
    return [[(name, configs[i % len(configs)]) for name, configs in sorted(_config.TUNED.items())]
            for i in range(longest)]


@pytest.mark.skipif(_config.AUTOTUNE, reason="KERNELS_AUTOTUNE=1: autotuned kernels take no pinned configuration")
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_configuration_matches_float64(dtype, kernel):
    x, ref = _case(dtype)
    fn = lambda q, k, v: attention(q, k, v, backend="triton")  # noqa: E731
    paths = {"two passes": lambda: jvp_with_grads(fn, x[:3], x[3:6], x[6], x[7], dtype=dtype),
             "fused": lambda: with_grads(lambda *a: attention_jvp(*a, backend="triton"), x[:6], x[6], x[7],
                                         dtype=dtype)}
    if kernel in TWO_PASSES_ONLY:
        del paths["fused"]
    rounds = _rounds(kernel)
    launched, skipped, bad = {(name, path): 0 for pins in rounds for name, _ in pins for path in paths}, [], {}
    for pins in rounds:
        label = "; ".join(f"{name} {_describe(c)}" for name, c in pins)
        with contextlib.ExitStack() as stack:
            for name, c in pins:
                stack.enter_context(_config.pinned(_config.TUNED[name], c))
            for path, run in paths.items():
                try:
                    out = run()
                except OutOfResources as e:  # only on a GPU; the autotuner skips such a configuration too
                    skipped.append(f"{label}, {path}: {e}")
                    continue
                for name, _ in pins:
                    launched[name, path] += 1
                errs = relative_errors(out, ref)
                print(f"{dtype} {label}, {path}: largest error {max(errs.values()):.1e}")  # for the record (-rP)
                if not max(errs.values()) < BOUND[dtype]:
                    bad[f"{label}, {path}"] = errs
    for line in skipped:
        print("does not fit, skipped:", line)
    assert not bad, f"{dtype}: configurations over the bound {BOUND[dtype]}: {bad}"
    assert all(launched.values()), f"{dtype}: no configuration of some kernel launched: {launched}; {skipped}"
