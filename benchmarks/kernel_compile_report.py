"""What the compiler makes of each attention kernel and launch configuration, found without a GPU.

Compiles every kernel variant the host code launches (forward, tangent, row sums, key-side, key-side tangent and
query-side backward, each with the PRIMAL / TANGENT flags it is launched with) ahead of time for an NVIDIA target
(default sm_90, H100/H200) on the CPU, once per configuration of the kernel's list (``kernels._config.TUNED``) and per
head dimension, and reports per compiled kernel:

  regs, spill        registers per thread and bytes of spill stores / loads (ptxas -v);
  smem               shared memory per program in KiB (Triton's allocation; H100 allows 227 KiB);
  dots               each tl.dot as Hopper warpgroup MMA (``wg``: ttng.warp_group_dot, PTX wgmma.mma_async) or
                     Ampere MMA (``mma``: mma.sync), with its M×N×K;
  gld / gst          static count of global loads / stores by access width in bytes (16 = 128-bit vectorized;
                     2 = one bf16 element per instruction);
  cp.async           asynchronous global→shared copies (the software pipeline's loads) by width, and TMA copies;
  cvt                layout conversions (ttg.convert_layout) in the TTGIR.

The launch arguments are those the host functions of ``kernels._forward`` / ``kernels._backward`` pass at the given
(B, H, S) on CPU tensors (captured, not launched), so that Triton's argument specialization (e.g. an integer argument
that is a multiple of 16, such as ``head_dim`` at D = 64) is the one a GPU launch gets.

--ptx-dir writes each kernel's PTX without debug lines (.loc, .file, debug sections), for diffing two commits:
``diff -r before/ after/``. Counts are static (instructions in the code, not executed ones).

--extra-config BM,BN,WARPS,STAGES[,NAME=VALUE...] (repeatable) also compiles a configuration that is not in the lists,
for each selected kernel whose listed configurations have the same keyword names (``32,64,4,2`` for the kernels
without extra keywords, ``32,64,4,2,SPLIT=0`` for ``_kv_tangent_kernel``); a configuration already in a kernel's
list is not compiled twice. Such records have ``"listed": false`` and are marked ``+`` in the table. ``--configs``
with no index compiles the extra configurations only.

Usage: python benchmarks/kernel_compile_report.py [--dims 64 72] [--kernels _fwd_kernel ...] [--shape 32,16,1024]
       [--arch 90] [--json out.json] [--ptx-dir DIR] [--jobs 2] [--configs [I ...]]
       [--extra-config BM,BN,WARPS,STAGES[,NAME=VALUE...] ...]
"""
import argparse
import collections
import concurrent.futures
import contextlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMEM_LIMIT = {90: 232448, 80: 166912, 89: 101376, 86: 101376}  # bytes of dynamic shared memory per block

# Filled by ``capture`` before the worker processes fork: (variant, D) → (JITFunction, args, kwargs).
_LAUNCHES: dict = {}


def _prepare_environment():
    """Compile for a GPU (not the interpreter), launch fixed configurations (so that ``pinned``-style kwargs reach
    the JITFunction), recompile on every call and print ptxas's log (so that registers and spills can be read)."""
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["KERNELS_AUTOTUNE"] = "0"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)
    sys.path.insert(0, str(ROOT))


def _variant(fn, kwargs) -> str:
    flags = "".join(name[0] for name in ("PRIMAL", "TANGENT") if kwargs.get(name))
    return f"{fn.__name__}[{flags}]" if flags else fn.__name__


def capture(head_dim: int, batch: int, heads: int, seq: int, dtype) -> dict:
    """Every kernel launch of the forward, tangent and the three backward passes at (batch, heads, seq, head_dim),
    recorded instead of run: variant name → (JITFunction, args, kwargs)."""
    import torch
    from triton.runtime.jit import JITFunction

    from kernels import _backward, _forward

    launches = {}

    def record(self, *args, grid, warmup, **kwargs):
        launches.setdefault(_variant(self, kwargs), (self, args, kwargs))

    x = lambda: torch.empty(batch, heads, seq, head_dim, dtype=dtype)  # noqa: E731
    stat = lambda: torch.empty(batch * heads, seq, dtype=torch.float32)  # noqa: E731
    q, k, v, o, o_lo, tq, tk, tv, to, to_lo, do, g = (x() for _ in range(12))
    lse, mu = stat(), stat()
    original = JITFunction.run
    JITFunction.run = record
    try:
        _forward.forward(q, k, v, 0.1)
        _forward.tangent(q, k, v, o, o_lo, lse, tq, tk, tv, 0.1)
        _backward.backward_primal(q, k, v, o, o_lo, lse, do, 0.1)
        _backward.backward_tangent(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, g, 0.1)
        _backward.backward_fused(q, k, v, o, o_lo, lse, mu, tq, tk, tv, to, to_lo, do, g, 0.1)
    finally:
        JITFunction.run = original
    return launches


def configurations(fn) -> list:
    """The kernel's configuration list (``kernels._config.TUNED``), or [None] for an untuned kernel."""
    from kernels import _config
    return _config.TUNED.get(fn.__name__, [None])


def parse_extra_config(text: str) -> tuple:
    """``BM,BN,WARPS,STAGES[,NAME=VALUE...]`` → (kwargs, num_warps, num_stages) of a triton.Config (integer values;
    SPLIT=1 / SPLIT=0 as booleans, as the kernels' lists write them). Triton is imported after the environment is
    prepared, so the Config is made in ``main``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        block_m, block_n, warps, stages = (int(p) for p in parts[:4])
        extra = {}
        for p in parts[4:]:
            name, value = p.split("=")
            extra[name.strip()] = bool(int(value)) if name.strip() == "SPLIT" else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BM,BN,WARPS,STAGES[,NAME=VALUE...], got {text!r}") from None
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, **extra}, warps, stages


def _same_config(a, b) -> bool:
    return a.kwargs == b.kwargs and a.num_warps == b.num_warps and a.num_stages == b.num_stages


def extra_for(fn, extras: list) -> list:
    """The extra configurations that apply to ``fn``: same keyword names as its listed ones, not already listed."""
    listed = [c for c in configurations(fn) if c is not None]
    if not listed:
        return []
    names = set(listed[0].kwargs)
    return [c for c in extras if set(c.kwargs) == names and not any(_same_config(c, other) for other in listed)]


def config_label(config) -> str:
    if config is None:
        return "fixed"
    extra = "".join(f",{k}={int(v) if isinstance(v, bool) else v}" for k, v in config.kwargs.items()
                    if k not in ("BLOCK_M", "BLOCK_N"))
    return (f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']},w{config.num_warps},s{config.num_stages}"
            f"{extra}")


def _width(suffixes: str, default_bits: int = 0) -> int:
    """Bytes moved by one PTX memory instruction from its type suffixes (.v4.b32 → 16)."""
    vec = re.search(r"\.v(\d)", suffixes)
    bits = re.search(r"\.[bfsu](\d+)(?![\w])", suffixes)
    return (int(vec.group(1)) if vec else 1) * (int(bits.group(1)) if bits else default_bits) // 8


def ptx_summary(ptx: str) -> dict:
    """Static counts from the PTX: matrix instructions, global/shared memory instructions by width, async copies."""
    out = {"wgmma": collections.Counter(), "mma_sync": collections.Counter(), "ld_global": collections.Counter(),
           "st_global": collections.Counter(), "ld_shared": collections.Counter(), "st_shared": collections.Counter(),
           "cp_async": collections.Counter(), "tma": 0, "ldmatrix": 0, "local": 0}
    for line in ptx.splitlines():
        line = line.strip()
        if line.startswith("@"):  # predicate
            line = line.split(None, 1)[1] if " " in line else line
        op = line.split(None, 1)[0] if line else ""
        if op.startswith("wgmma.mma_async"):
            out["wgmma"][re.search(r"m\d+n\d+k\d+", op).group(0)] += 1
        elif op.startswith("mma.sync"):
            out["mma_sync"][re.search(r"m\d+n\d+k\d+", op).group(0)] += 1
        elif op.startswith("cp.async.bulk.tensor"):
            out["tma"] += 1
        elif op.startswith(("cp.async.ca.", "cp.async.cg.")):
            size = re.search(r",\s*(0x[0-9a-fA-F]+|\d+)\s*(?:,|;)", line)
            out["cp_async"][int(size.group(1), 0) if size else 0] += 1
        elif op.startswith("ldmatrix"):
            out["ldmatrix"] += 1
        elif op.startswith(("ld.local", "st.local")):
            out["local"] += 1
        else:
            for kind in ("ld_global", "st_global", "ld_shared", "st_shared"):
                prefix = kind.replace("_", ".")
                if op.startswith(prefix):
                    out[kind][_width(op[len(prefix):])] += 1
    return {k: dict(sorted(v.items())) if isinstance(v, collections.Counter) else v for k, v in out.items()}


_DOT = re.compile(r"= (ttng\.warp_group_dot|tt\.dot) .*?: (?:tensor|!ttg\.memdesc)<(\d+)x(\d+)x"
                  r".*-> tensor<(\d+)x(\d+)x")


def ttgir_summary(ttgir: str) -> dict:
    """The dots (kind and M×N×K, in program order) and counts of layout conversions and async copies."""
    dots = []
    for m in _DOT.finditer(ttgir):
        kind = "wg" if m.group(1) == "ttng.warp_group_dot" else "mma"
        dots.append(f"{kind}{m.group(4)}x{m.group(5)}x{m.group(3)}")
    count = lambda pattern: len(re.findall(pattern, ttgir))  # noqa: E731
    return {"dots": dots, "convert_layout": count(r"ttg\.convert_layout"),
            "async_copy": count(r"ttg\.async_copy_global_to_local"),
            "tma_load": count(r"async_tma_copy|descriptor_load"),
            "local_alloc": count(r"ttg\.local_alloc")}


def ptxas_summary(log: str) -> dict:
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"regs": int(regs[-1]) if regs else None,
            "spill_stores": int(spills[-1][0]) if spills else None,
            "spill_loads": int(spills[-1][1]) if spills else None}


def strip_debug(ptx: str) -> str:
    """PTX without line information (.loc, .file, the DWARF sections): what the instructions are, not where they came
    from, so that moving a source line does not show as a difference."""
    lines = []
    for line in ptx.splitlines():
        s = line.strip()
        if s.startswith(".section") and ".debug" in s:
            break
        if s.startswith((".loc", ".file", "//")) or re.fullmatch(r"\$L__tmp\d+:", s):
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def compile_one(task) -> dict:
    """Compile one (variant, D, configuration index) for ``arch`` and summarize it."""
    variant, head_dim, index, arch, ptx_dir, extra = task
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn, args, kwargs = _LAUNCHES[variant, head_dim]
    config = configurations(fn)[index] if extra is None else extra
    kwargs = dict(kwargs)
    if config is not None:
        kwargs.update(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    target = GPUTarget("cuda", arch, 32 if arch < 90 else 128)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    record = {"kernel": variant, "D": head_dim, "config": config_label(config), "listed": extra is None,
              "HEAD_BLOCK": kwargs.get("HEAD_BLOCK"), "TAIL_BLOCK": kwargs.get("TAIL_BLOCK"),
              "num_warps": options.num_warps, "num_stages": options.num_stages}
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
    except Exception as e:  # a configuration that does not compile is reported, not fatal
        record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return record
    record["compile_s"] = round(time.perf_counter() - t0, 2)
    shared = compiled.metadata.shared
    record.update(ptxas_summary(log.getvalue()), shared=shared,
                  fits=shared <= SMEM_LIMIT.get(arch, 232448), **ttgir_summary(compiled.asm["ttgir"]),
                  ptx=ptx_summary(compiled.asm["ptx"]))
    if ptx_dir:
        name = f"{variant}_D{head_dim}_{record['config'].replace(',', '_').replace('=', '')}.ptx"
        (Path(ptx_dir) / name).write_text(strip_debug(compiled.asm["ptx"]))
    return record


def _widths(counter: dict) -> str:
    return " ".join(f"{w}B:{n}" for w, n in sorted(counter.items(), key=lambda kv: -int(kv[0]))) or "-"


def _dots(dots: list) -> str:
    """Dots grouped: 'wg×8 (128x64x64 ×4, ...)' shortened to kinds and distinct shapes."""
    kinds = collections.Counter(d[:2] if d.startswith("wg") else "mma" for d in dots)
    shapes = collections.Counter(re.sub(r"^(wg|mma)", "", d) for d in dots)
    return (" ".join(f"{k}:{n}" for k, n in kinds.items()) + " | "
            + " ".join(f"{s}" + (f"×{n}" if n > 1 else "") for s, n in shapes.items()))


def table(records: list) -> str:
    head = ["kernel", "D", "config", "regs", "spill st/ld", "smem KiB", "dots", "gld", "gst", "cp.async", "cvt"]
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["kernel"], str(r["D"]), r["config"], "error: " + r["error"][:60], "", "", "", "", "", "",
                         ""])
            continue
        cp = _widths(r["ptx"]["cp_async"]) + (f" tma:{r['ptx']['tma']}" if r["ptx"]["tma"] else "")
        rows.append([r["kernel"], str(r["D"]), r["config"] + ("" if r.get("listed", True) else " +"), str(r["regs"]),
                     f"{r['spill_stores']}/{r['spill_loads']}", f"{r['shared'] / 1024:.0f}" + ("" if r["fits"]
                                                                                                else " (>limit)"),
                     _dots(r["dots"]), _widths(r["ptx"]["ld_global"]), _widths(r["ptx"]["st_global"]), cp,
                     str(r["convert_layout"])])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 72], help="head dimensions D (default 64 72)")
    ap.add_argument("--kernels", nargs="+", default=None,
                    help="kernel names or variants to compile, e.g. _fwd_kernel '_q_kernel[PT]' (default: all)")
    ap.add_argument("--shape", default="32,16,1024", help="B,H,S of the captured launches (default 32,16,1024)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--arch", type=int, default=90, help="compute capability ×10 (default 90: sm_90a)")
    ap.add_argument("--configs", type=int, nargs="*", default=None,
                    help="indices into each kernel's configuration list (default: every configuration; "
                         "no index: none, only --extra-config ones)")
    ap.add_argument("--extra-config", action="append", default=[], type=parse_extra_config,
                    metavar="BM,BN,WARPS,STAGES[,NAME=VALUE...]",
                    help="also compile this configuration, not in the lists (repeatable), for each selected kernel "
                         "whose listed configurations have the same keyword names, e.g. 16,64,4,2 or "
                         "32,64,8,2,SPLIT=0; marked + in the table")
    ap.add_argument("--json", default=None, help="write the records as JSON here")
    ap.add_argument("--ptx-dir", default=None, help="write each kernel's PTX (debug lines removed) into this folder")
    ap.add_argument("--jobs", type=int, default=1, help="compiler processes (default 1)")
    args = ap.parse_args(argv)

    _prepare_environment()
    import torch
    import triton
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    batch, heads, seq = (int(s) for s in args.shape.split(","))
    extras = [triton.Config(kwargs, num_warps=warps, num_stages=stages) for kwargs, warps, stages in args.extra_config]
    tasks = []
    for d in args.dims:
        for variant, launch in capture(d, batch, heads, seq, dtype).items():
            if args.kernels and variant not in args.kernels and launch[0].__name__ not in args.kernels:
                continue
            _LAUNCHES[variant, d] = launch
            n = len(configurations(launch[0]))
            for i in (range(n) if args.configs is None else [i for i in args.configs if i < n]):
                tasks.append((variant, d, i, args.arch, args.ptx_dir, None))
            for config in extra_for(launch[0], extras):
                tasks.append((variant, d, None, args.arch, args.ptx_dir, config))
    if args.ptx_dir:
        Path(args.ptx_dir).mkdir(parents=True, exist_ok=True)
    print(f"Triton {triton.__version__}, sm_{args.arch}, {args.dtype}, (B,H,S) = ({batch},{heads},{seq}): "
          f"{len(tasks)} compilations", file=sys.stderr)
    if args.jobs > 1:
        import multiprocessing
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as ex:
            records = list(ex.map(compile_one, tasks))
    else:
        records = [compile_one(t) for t in tasks]
    records.sort(key=lambda r: (r["kernel"], r["D"]))  # stable: configurations stay in list order
    print(table(records))
    if args.json:
        meta = {"triton": triton.__version__, "arch": args.arch, "dtype": args.dtype, "shape": [batch, heads, seq]}
        Path(args.json).write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
