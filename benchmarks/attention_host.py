"""Host time per call of the Triton JVP attention, with its kernels stubbed out (only the host work counts).

At small shapes the attention's GPU kernels take less time than the host work around them (benchmarks/RESULTS.md,
"JVP attention"); this script measures that host work alone, on any machine: every kernel launch in
kernels/_forward.py and kernels/_backward.py is replaced by a stub, so no kernel runs and what is timed is PyTorch's
autograd / functorch handling, our Functions, checks and allocations. Cases, each a forward and a backward
(``torch.autograd.grad`` of the outputs with given cotangents G1 for O and G2 for Ȯ, to every input):

  attention      O = kernels.attention(q, k, v), grad to q, k, v;
  attention_jvp  (O, Ȯ) = kernels.attention_jvp(q, k, v, q̇, k̇, v̇), grad to all six (one fused backward);
  func_jvp       (O, Ȯ) = torch.func.jvp(kernels.attention, (q, k, v), (q̇, k̇, v̇)), grad to all six;
  forward_ad     (O, Ȯ) from torch.autograd.forward_ad dual tensors through kernels.attention, grad to all six.

Stubs (``--stub``):
  kernels    (default) each ``kernel[grid](...)`` launch is a no-op; the launcher functions (``_forward.forward``,
             ``_forward.tangent``, ``_backward._row_sums``, ``_backward._launch``) still run and return their
             correctly shaped, uninitialised outputs, so their own host work (allocation, launch metadata) counts;
  launchers  ``_forward.forward``, ``_forward.tangent``, ``_backward.backward_primal``, ``_backward.backward_tangent``
             and ``_backward.backward_fused`` return correctly shaped empty tensors without running.
Neither counts the host time of a real Triton launch (about 10 µs each on a GPU host; docs/KERNEL.md).

Timing: ``--repeats`` rounds; in each round every case runs ``--calls`` times in a row (the cases in turn, so slow
drift of the machine affects them alike) after ``--warmup`` untimed calls in the first round; per-call time = round
time / calls. Reported: median and interquartile range (25th–75th percentile) over the rounds, in ms per call.

``--root`` imports ``kernels`` from another checkout of the repository (default: the one holding this script), so
two versions can be measured alternately in one session with one script.

Usage: python benchmarks/attention_host.py [--shape 1,1,16,16] [--calls 300] [--repeats 7] [--dtype fp32]
       [--cases attention attention_jvp func_jvp forward_ad] [--stub kernels] [--root PATH] [--out host.json]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ("attention", "attention_jvp", "func_jvp", "forward_ad")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1,1,16,16", help="B,H,S,D (default 1,1,16,16)")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--calls", type=int, default=300, help="calls per case per round (default 300)")
    ap.add_argument("--repeats", type=int, default=7, help="rounds (default 7)")
    ap.add_argument("--warmup", type=int, default=30, help="untimed calls per case before the first round")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--stub", default="kernels", choices=["kernels", "launchers"])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--root", default=None, help="repository root to import `kernels` from (default: this one)")
    ap.add_argument("--label", default=None, help="a name for this run, stored in the JSON")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    try:
        shape = tuple(int(x) for x in args.shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        ap.error(f"--shape must be four positive integers B,H,S,D, got {args.shape!r}")
    if args.calls < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("--calls and --repeats must be >= 1, --warmup >= 0")
    args.shape = shape
    return args


class _NoLaunch:
    """Stands in for a Triton kernel: ``stub[grid](*args, **meta)`` does nothing."""

    def __getitem__(self, grid):
        return self

    def __call__(self, *args, **kwargs):
        return None


@contextlib.contextmanager
def stubbed(stub="kernels"):
    """Within the block, no attention kernel runs (module docstring: ``kernels`` or ``launchers``)."""
    import torch

    from kernels import _backward, _forward

    def rows(q):
        return torch.empty((q.shape[0] * q.shape[1], q.shape[2]), device=q.device, dtype=torch.float32)

    def low(x):
        return torch.empty_like(x) if _forward.has_low_part(x.dtype) else x.new_empty(0)

    def forward(q, k, v, scale):
        o = torch.empty_like(q)
        return o, low(o), rows(q)

    def tangent(q, k, v, o, o_lo, lse, tq, tk, tv, scale):
        to = torch.empty_like(q)
        return to, low(to), rows(q)

    def backward_primal(q, k, v, o, o_lo, lse, do, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def backward_fused(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, do, g, scale):
        if do is None and g is None:
            raise ValueError("dO and G are both None")
        first = backward_primal(q, k, v, o, o_lo, lse, q, scale)
        return (*first, None, None, None) if g is None else (*first, *backward_primal(q, k, v, o, o_lo, lse, q, scale))

    def backward_tangent(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, g, scale):
        return backward_fused(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, None, g, scale)

    if stub == "kernels":
        patches = [(module, n, _NoLaunch()) for module in (_forward, _backward) for n in module.KERNELS]
    elif stub == "launchers":
        patches = [(_forward, "forward", forward), (_forward, "tangent", tangent),
                   (_backward, "backward_primal", backward_primal), (_backward, "backward_fused", backward_fused),
                   (_backward, "backward_tangent", backward_tangent)]
    else:
        raise ValueError(f"stubbed: stub must be 'kernels' or 'launchers', got {stub!r}")
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def make_cases(shape, dtype, device):
    """{case: a function running one forward + backward}, on fixed random inputs."""
    import torch
    import torch.autograd.forward_ad as fwAD

    from kernels import attention, attention_jvp

    b, h, s, d = shape
    g = torch.Generator().manual_seed(0)
    rand = lambda: torch.randn(b, h, s, d, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    leaves = [rand().requires_grad_() for _ in range(6)]
    g1, g2 = rand(), rand()
    primals, tangents = tuple(leaves[:3]), tuple(leaves[3:])

    def tri(q, k, v):
        return attention(q, k, v, backend="triton")

    def plain():
        o = tri(*primals)
        return torch.autograd.grad(o, primals, g1)

    def explicit():
        o, to = attention_jvp(*leaves, backend="triton")
        return torch.autograd.grad((o, to), leaves, (g1, g2))

    def func_jvp():
        o, to = torch.func.jvp(tri, primals, tangents)
        return torch.autograd.grad((o, to), leaves, (g1, g2))

    def forward_ad():
        with fwAD.dual_level():
            o, to = fwAD.unpack_dual(tri(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents))))
        return torch.autograd.grad((o, to), leaves, (g1, g2))

    return {"attention": plain, "attention_jvp": explicit, "func_jvp": func_jvp, "forward_ad": forward_ad}


def quartiles(xs):
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def measure(fns, calls, repeats, warmup):
    """{case: per-call ms of each round} (module docstring)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) * 1e3 / calls)
    return times


def git_commit(root):
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args):
    root = Path(args.root).resolve() if args.root else Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":  # the Triton backend's CPU check wants the interpreter; no kernel runs either way
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import kernels

    if Path(kernels.__file__).resolve().parents[1] != root:
        raise RuntimeError(f"attention_host: `kernels` came from {kernels.__file__}, not from {root}")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, DTYPES[args.dtype])
    with stubbed(args.stub):
        fns = make_cases(args.shape, dtype, device)
        times = measure({c: fns[c] for c in args.cases}, args.calls, args.repeats, args.warmup)
    rows = []
    for case, ms in times.items():
        q1, med, q3 = quartiles(ms)
        rows.append({"case": case, "median_ms": med, "q25_ms": q1, "q75_ms": q3, "iqr_ms": q3 - q1,
                     "min_ms": min(ms), "max_ms": max(ms), "rounds_ms": ms})
    return {"label": args.label, "root": str(root), "commit": git_commit(root), "shape": list(args.shape),
            "dtype": args.dtype, "device": device, "stub": args.stub, "calls": args.calls, "repeats": args.repeats,
            "warmup": args.warmup, "threads": args.threads, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
            "rows": rows}


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    print(f"host ms per call (forward + backward, kernels stubbed: {result['stub']}), shape "
          f"{','.join(map(str, result['shape']))} {result['dtype']} on {result['device']}, {result['calls']} calls x "
          f"{result['repeats']} rounds; {result['root']} @ {result['commit']}")
    print(f"{'case':<14} {'median':>8} {'q25':>8} {'q75':>8} {'IQR':>7}")
    for r in result["rows"]:
        print(f"{r['case']:<14} {r['median_ms']:8.3f} {r['q25_ms']:8.3f} {r['q75_ms']:8.3f} {r['iqr_ms']:7.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
