"""GPU checks of kernels.attention at real sizes (marked `gpu`, skipped without CUDA). Issue 3.

Every check compares against float64 autograd / torch.func.jvp of the plain formula on the same rounded inputs,
computed on the GPU. Tolerances (relative Frobenius error): fp32 uses IEEE dots, so rounding ~1e-6 per op → 1e-4;
fp16 operands (u = 2⁻¹¹) → 5e-3; bf16 operands (u = 2⁻⁸) → 2.5e-2, because P, P∘(T − μ), dL and dT are rounded to
the dtype before the block products, as in every half-precision flash kernel (measured on an H200: 2.2e-3 to 3.0e-3
for bf16 at S ≤ 4096 with unit-normal inputs).

Each kernel runs one fixed configuration (KERNELS_AUTOTUNE=0 from tests/conftest.py; the others are checked by
tests/test_attention_configs.py), and each check prints its largest error (pytest -rP).
"""
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # This module is collected before tests/test_attention*.py; `kernels` must see the interpreter flag at import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import attention, attention_jvp  # noqa: E402
from kernels.testing import jvp_with_grads, relative_errors, with_grads  # noqa: E402

pytestmark = pytest.mark.gpu
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2.5e-2}


def _inputs(b, h, sq, sk, d, seed=0, magnitude=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = [(b, h, s, d) for s in (sq, sk, sk, sq, sk, sk, sq, sq)]
    q, k, v, tq, tk, tv, g1, g2 = (torch.randn(*s, device="cuda", generator=g, dtype=torch.float64) for s in shapes)
    return (q * magnitude, k * magnitude, v), (tq, tk, tv), g1, g2


def _check(b, h, sq, sk, d, dtype, scale=None, magnitude=1.0, seed=0):
    """Both backward paths: ``torch.func.jvp`` of ``attention`` (two passes) and ``attention_jvp`` (fused)."""
    primals, tangents, g1, g2 = _inputs(b, h, sq, sk, d, seed, magnitude)
    cast = [x.to(dtype).double() for x in (*primals, *tangents)]  # the reference sees the same rounded inputs
    ref = jvp_with_grads(lambda q, k, v: attention(q, k, v, scale, backend="reference"), cast[:3], cast[3:], g1, g2)
    outs = {"two passes": jvp_with_grads(lambda q, k, v: attention(q, k, v, scale, backend="triton"), primals,
                                         tangents, g1, g2, dtype=dtype),
            "fused": with_grads(lambda *x: attention_jvp(*x, scale, backend="triton"), (*primals, *tangents), g1, g2,
                                dtype=dtype)}
    errs = {path: relative_errors(out, ref) for path, out in outs.items()}
    for path, out in outs.items():
        print(f"{dtype} B{b} H{h} Sq{sq} Sk{sk} D{d}, {path}: largest error {max(errs[path].values()):.1e}")
        for x in out.as_list():
            assert torch.isfinite(x).all()
    bad = {path: {n: e for n, e in e_path.items() if not e < TOL[dtype]} for path, e_path in errs.items()}
    assert not any(bad.values()), f"{dtype} B{b} H{h} Sq{sq} Sk{sk} D{d}: errors {errs}"
    return errs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [64, 72, 128, 16])
def test_against_float64_at_real_sizes(dtype, d):
    _check(2, 3, 1024, 1024, d, dtype)
    _check(1, 2, 257, 1531, d, dtype, scale=0.3)
    _check(3, 1, 1100, 77, d, dtype, magnitude=2.0)


def test_more_heads_than_the_grid_y_limit():
    """B·H = 4097·16 = 65552 > 65535, CUDA's limit on a grid's y extent: the heads fold onto z (kernels._config)."""
    _check(4097, 16, 16, 16, 16, torch.bfloat16)


def test_large_batch_and_long_sequence_bf16():
    _check(16, 4, 256, 256, 64, torch.bfloat16)
    _check(1, 2, 4096, 4096, 128, torch.bfloat16)


def test_deterministic_and_fully_written():
    """No atomics: two runs give bitwise-equal results (a moving result would signal a race)."""
    primals, tangents, g1, g2 = _inputs(2, 4, 777, 777, 64, seed=3)
    fn = lambda q, k, v: attention(q, k, v, backend="triton")  # noqa: E731
    a = jvp_with_grads(fn, primals, tangents, g1, g2, dtype=torch.bfloat16).as_list()
    torch.cuda.empty_cache()
    b = jvp_with_grads(fn, primals, tangents, g1, g2, dtype=torch.bfloat16).as_list()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_compiled_block_tangents_match_eager():
    """torch.compile (inductor) around a block calling kernels.attention: same primal, tangent and gradients."""
    torch.manual_seed(0)
    block = torch.nn.Linear(64, 3 * 64, device="cuda")

    def f(x):
        q, k, v = block(x).view(2, 100, 3, 2, 32).permute(2, 0, 3, 1, 4)
        return attention(q, k, v, backend="triton").sum(1)

    x, tx = torch.randn(2, 100, 64, device="cuda"), torch.randn(2, 100, 64, device="cuda")
    eager = torch.func.jvp(f, (x,), (tx,))
    compiled = torch.func.jvp(torch.compile(f), (x,), (tx,))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer not installed")
def test_memcheck_clean():
    """compute-sanitizer memcheck over a forward + JVP + backward with ragged lengths and D = 72."""
    script = (
        "import torch; from kernels import attention; from kernels.testing import jvp_with_grads\n"
        "x = [torch.randn(1, 2, s, 72, device='cuda') for s in (100, 37, 37, 100, 37, 37, 100, 100)]\n"
        "fn = lambda q, k, v: attention(q, k, v, backend='triton')\n"
        "jvp_with_grads(fn, x[:3], x[3:6], x[6], x[7], dtype=torch.bfloat16); torch.cuda.synchronize()\n")
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", TRITON_INTERPRET="0",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    res = subprocess.run(["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-c",
                          script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "ERROR SUMMARY: 0 errors" in res.stdout


def test_default_scale_is_inverse_sqrt_d():
    primals, _, _, _ = _inputs(1, 2, 64, 64, 128)
    q, k, v = (x.to(torch.float32) for x in primals)
    torch.testing.assert_close(attention(q, k, v, backend="triton"),
                               attention(q, k, v, 1 / math.sqrt(128), backend="reference"), rtol=1e-4, atol=1e-5)
