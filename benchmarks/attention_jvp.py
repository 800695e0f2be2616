"""Benchmark of JVP attention (issue 3): plain flash SDPA, PyTorch math attention under JVP, and kernels.attention.

Times, on one CUDA card, at each (B, H, S, D):
  sdpa_fwd_bwd    plain flash SDPA forward + backward (the baseline; no tangent);
  sdpa_default_fwd_bwd  the same with PyTorch's default backend choice (cuDNN where it applies);
  math_jvp_bwd    PyTorch math SDPA under torch.func.jvp + autograd of ⟨G1, O⟩ + ⟨G2, Ȯ⟩;
  ours_fwd_jvp    kernels.attention under torch.func.jvp (O and Ȯ, no grad);
  ours_jvp_bwd    kernels.attention under torch.func.jvp + autograd of ⟨G1, O⟩ + ⟨G2, Ȯ⟩ (two backward passes);
  ours_explicit_jvp_bwd  kernels.attention_jvp (explicit tangents) + autograd of the same (one fused backward pass);
plus our separate kernel launches (fwd, tangent, primal backward, tangent backward, fused backward) for the profile
(the fused ones are in the JSON rows, not in the printed table). The JSON also records each kernel's configuration
list and the configuration the autotuner chose for each of its keys.
FLOP counts (units of B·H·S²·D, docs/KERNEL.md): 4 plain forward, 10 plain backward, 12 forward + JVP,
42 backward through O and Ȯ. Peak extra memory = peak allocated during one call minus what was allocated before.

Usage: python benchmarks/attention_jvp.py [--out results.json] [--shapes 64,18,256,64 ...] [--dtype bf16]
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import attention, attention_jvp  # noqa: E402
from kernels import _backward, _forward  # noqa: E402
from kernels._config import TUNED  # noqa: E402
from kernels.testing import jvp_with_grads, relative_errors  # noqa: E402
from kernel_compile_report import config_label  # noqa: E402

SHAPES = [(64, 18, 256, 64), (32, 18, 1024, 64), (1, 24, 4096, 128), (1, 24, 16384, 128), (64, 16, 256, 72)]
UNITS = {"sdpa_fwd_bwd": 14, "sdpa_default_fwd_bwd": 14, "math_jvp_bwd": 54, "ours_fwd_jvp": 12, "ours_jvp_bwd": 54,
         "ours_explicit_jvp_bwd": 54,
         "k_fwd": 4, "k_tangent": 8, "k_bwd_primal": 10, "k_bwd_tangent": 32, "k_bwd_fused": 42}


def bench(fn):
    """Median milliseconds of fn (triton.testing.do_bench, CUDA events), at least ~10 repetitions."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est_ms = (time.perf_counter() - t0) * 1e3
    rep = max(100.0, 12 * est_ms)
    return triton.testing.do_bench(fn, warmup=max(25.0, 2 * est_ms), rep=rep, return_mode="median")


def host_ms(fn, calls=10):
    """Host (CPU) milliseconds per call to enqueue fn, without waiting for the GPU: the launch overhead floor."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    ms = (time.perf_counter() - t0) * 1e3 / calls
    torch.cuda.synchronize()
    return ms


def peak_extra(fn):
    """Peak bytes allocated by one call of fn beyond what was allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def check_against_math(ours, leaves, g1, g2, use_math):
    """Relative errors of ours (autotuned configs) against float32 math attention on the same bf16 inputs."""
    primals = [x.detach() for x in leaves]
    if not use_math:  # too large for S² buffers: check O alone against flash SDPA
        with torch.no_grad():
            o = ours(*primals[:3])
            ref = F.scaled_dot_product_attention(*primals[:3])
        return {"O_vs_flash": ((o.float() - ref.float()).norm() / ref.float().norm()).item()}
    f32 = [x.float() for x in primals]
    b = primals[0].shape[0]
    n = max(1, b // 8)  # a slice of the batch keeps the float32 reference's S² buffers small
    ref = jvp_with_grads(lambda q, k, v: attention(q, k, v, backend="reference"), [x[:n] for x in f32[:3]],
                         [x[:n] for x in f32[3:]], g1[:n], g2[:n])
    out = jvp_with_grads(ours, [x[:n] for x in primals[:3]], [x[:n] for x in primals[3:]], g1[:n], g2[:n])
    return relative_errors(out, ref)


def run_shape(shape, dtype, skip_math_above, profile=False):
    b, h, s, d = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda: torch.randn(b, h, s, d, device="cuda", dtype=dtype, generator=gen)  # noqa: E731
    q, k, v, tq, tk, tv, g1, g2 = (mk() for _ in range(8))
    leaves = [x.clone().requires_grad_() for x in (q, k, v, tq, tk, tv)]
    scale = 1.0 / math.sqrt(d)

    def sdpa_fwd_bwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = F.scaled_dot_product_attention(*leaves[:3])
        torch.autograd.grad(o, leaves[:3], g1)

    def sdpa_default_fwd_bwd():
        torch.autograd.grad(F.scaled_dot_product_attention(*leaves[:3]), leaves[:3], g1)

    def jvp_bwd(fn):
        o, to = torch.func.jvp(fn, tuple(leaves[:3]), tuple(leaves[3:]))
        torch.autograd.grad((o, to), leaves, (g1, g2))

    def math_fn(a, bb, c):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(a, bb, c)

    ours = lambda a, bb, c: attention(a, bb, c, backend="triton")  # noqa: E731

    def ours_fwd_jvp():
        torch.func.jvp(ours, (q, k, v), (tq, tk, tv))

    qc, kc, vc = q, k, v
    o, o_lo, lse = _forward.forward(qc, kc, vc, scale)
    to, to_lo, mu = _forward.tangent(qc, kc, vc, o, o_lo, lse, tq, tk, tv, scale)
    cases = {
        "sdpa_fwd_bwd": sdpa_fwd_bwd,
        "sdpa_default_fwd_bwd": sdpa_default_fwd_bwd,
        "math_jvp_bwd": lambda: jvp_bwd(math_fn),
        "ours_fwd_jvp": ours_fwd_jvp,
        "ours_jvp_bwd": lambda: jvp_bwd(ours),
        "ours_explicit_jvp_bwd": lambda: torch.autograd.grad(attention_jvp(*leaves, backend="triton"), leaves,
                                                             (g1, g2)),
        "k_fwd": lambda: _forward.forward(qc, kc, vc, scale),
        "k_tangent": lambda: _forward.tangent(qc, kc, vc, o, o_lo, lse, tq, tk, tv, scale),
        "k_bwd_primal": lambda: _backward.backward_primal(qc, kc, vc, o, o_lo, lse, g1, scale),
        "k_bwd_tangent": lambda: _backward.backward_tangent(qc, kc, vc, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, g2,
                                                            scale),
        "k_bwd_fused": lambda: _backward.backward_fused(qc, kc, vc, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, g1, g2,
                                                        scale),
    }
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile
        cases["ours_jvp_bwd"]()
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                cases["ours_jvp_bwd"]()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60))
        return None
    unit = b * h * s * s * d
    row = {"shape": list(shape), "dtype": str(dtype).replace("torch.", "")}
    row["check"] = check_against_math(ours, leaves, g1, g2, s <= skip_math_above)
    for name, fn in cases.items():
        if name == "math_jvp_bwd" and s > skip_math_above:
            row[name] = {"ms": None, "note": f"skipped (S > {skip_math_above}: S² buffers exceed the card)"}
            continue
        try:
            mem = peak_extra(fn)  # the first call also autotunes
            ms = bench(fn)
            row[name] = {"ms": ms, "tflops": UNITS[name] * unit / ms * 1e-9, "peak_extra_gb": mem / 1e9,
                         "host_ms": host_ms(fn)}
        except torch.OutOfMemoryError:
            row[name] = {"ms": None, "note": "out of memory"}
        torch.cuda.empty_cache()
    base = row["sdpa_fwd_bwd"]["ms"]
    fastest = min(x for x in (base, row["sdpa_default_fwd_bwd"].get("ms")) if x is not None)
    for name in ("math_jvp_bwd", "ours_jvp_bwd"):
        if row[name].get("ms"):
            row[name]["ratio_to_sdpa"] = row[name]["ms"] / base
            row[name]["ratio_to_fastest_sdpa"] = row[name]["ms"] / fastest
    return row


def autotuned_choices():
    """The configuration the autotuner chose for each kernel and key (head tiles, HEAD_DIM, sequence bucket, flags,
    dtypes), as ``{kernel: {key: label}}``; empty when the kernels are not autotuned (KERNELS_AUTOTUNE=0)."""
    choices = {}
    for name in TUNED:
        kernel = getattr(_forward, name, None) or getattr(_backward, name)
        cache = getattr(kernel, "cache", {})
        if cache:
            choices[name] = {str(key): config_label(config) for key, config in cache.items()}
    return choices


def table(rows):
    lines = ["| B,H,S,D | SDPA flash / default f+b ms | math JVP+b ms (GB) | ours f+JVP ms (TFLOP/s) | "
             "ours f+JVP+b ms (TFLOP/s) | extra GB | ratio to flash / default | host ms f+JVP+b | "
             "kernels fwd/tan/bwdP/bwdT ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x, key="ms": "—" if x.get(key) is None else f"{x[key]:.3f}"  # noqa: E731
    for r in rows:
        m = r["math_jvp_bwd"]
        math_cell = m.get("note", "—") if m.get("ms") is None else f"{m['ms']:.2f} ({m['peak_extra_gb']:.1f})"
        ours_f, ours_b = r["ours_fwd_jvp"], r["ours_jvp_bwd"]
        lines.append(
            f"| {','.join(map(str, r['shape']))} | {fmt(r['sdpa_fwd_bwd'])} / {fmt(r['sdpa_default_fwd_bwd'])} | "
            f"{math_cell} | {fmt(ours_f)} ({ours_f.get('tflops', 0):.0f}) | "
            f"{fmt(ours_b)} ({ours_b.get('tflops', 0):.0f}) | {ours_b.get('peak_extra_gb', float('nan')):.2f} | "
            f"{ours_b.get('ratio_to_sdpa', float('nan')):.2f} / "
            f"{ours_b.get('ratio_to_fastest_sdpa', float('nan')):.2f} | "
            f"{fmt(ours_b, 'host_ms')} | "
            + "/".join(fmt(r[n]) for n in ("k_fwd", "k_tangent", "k_bwd_primal", "k_bwd_tangent")) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="attention_jvp.json")
    ap.add_argument("--shapes", nargs="*", default=None, help="B,H,S,D entries (default: the issue's five)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--skip-math-above", type=int, default=8192)
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of ours_jvp_bwd instead")
    ap.add_argument("--commit", default="unknown", help="commit the tree was at (the device copy has no .git)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_jvp.py needs a CUDA device")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    if args.profile:
        for shape in shapes:
            run_shape(shape, dtype, args.skip_math_above, profile=True)
        return
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "commit": args.commit, "configs_listed": {name: [config_label(c) for c in configs]
                                                        for name, configs in TUNED.items()}, "rows": []}
    rows = result["rows"]
    for shape in shapes:
        rows.append(run_shape(shape, dtype, args.skip_math_above))
        print(json.dumps(rows[-1]), flush=True)
        bad = {k: e for k, e in rows[-1]["check"].items() if not e < 3e-2}
        if bad:
            print(f"CHECK FAILED at {shape}: {bad}", flush=True)
        result["autotuned"] = autotuned_choices()
        Path(args.out).write_text(json.dumps(result, indent=1))  # after each shape: a killed run keeps what it did
    print(f"device: {result['device']}  torch {result['torch']}  triton {result['triton']}  commit {result['commit']}")
    print(table(rows))


if __name__ == "__main__":
    main()
