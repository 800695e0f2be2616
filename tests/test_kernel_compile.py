"""The attention kernels compiled for sm_90 (H100) on the CPU, without a GPU: at D = 72 (DiT-XL/2 with 16 heads)
the tiles are loaded as wide vectors and asynchronously, as at D = 64, and every dot is a Hopper warpgroup MMA.

Before ``kernels._config.static_head_dim``, D = 72 reached the compiler as a runtime integer of unknown alignment
(Triton specializes only multiples of 16), so every tile was loaded one bf16 element per instruction, synchronously,
with no software pipelining: half of D = 64's throughput on an H100 (docs/KERNEL.md §5). The compilation is
benchmarks/kernel_compile_report.py's, in a subprocess: the test session interprets the kernels (TRITON_INTERPRET=1),
and compiling needs only the ptxas that Triton ships.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import triton

ROOT = pathlib.Path(__file__).resolve().parents[1]
PTXAS = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
KERNELS = ["_fwd_kernel", "_q_kernel[P]"]  # the first configuration of each


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    if not PTXAS.exists():
        pytest.skip("Triton's ptxas is not installed")
    out = tmp_path_factory.mktemp("compile") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_compile_report.py"), "--dims", "64", "72",
                    "--kernels", *KERNELS, "--configs", "0", "--json", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=600)
    records = json.loads(out.read_text())["records"]
    return {(r["kernel"], r["D"]): r for r in records}


@pytest.mark.parametrize("kernel", KERNELS)
def test_d72_loads_tiles_like_d64(compiled, kernel):
    d64, d72 = compiled[kernel, 64], compiled[kernel, 72]
    assert "error" not in d64 and "error" not in d72, (d64.get("error"), d72.get("error"))
    for access in ("ld_global", "st_global"):
        assert "2" not in d72["ptx"][access], f"{kernel}: bf16 elements accessed one by one at D = 72: {d72['ptx']}"
        assert max(map(int, d72["ptx"][access])) == max(map(int, d64["ptx"][access])) == 16
    asynchronous = lambda r: sum(r["ptx"]["cp_async"].values()) + r["ptx"]["tma"]  # noqa: E731
    assert asynchronous(d64) > 0 and asynchronous(d72) > 0, (d64["ptx"], d72["ptx"])
    assert all(dot.startswith("wg") for dot in d64["dots"] + d72["dots"]), (d64["dots"], d72["dots"])


def test_extra_config_compiles_only_what_applies(tmp_path):
    """--extra-config adds a configuration outside the lists to the kernels whose listed configurations have the same
    keyword names, skips one already listed, and --configs without an index leaves the lists out."""
    if not PTXAS.exists():
        pytest.skip("Triton's ptxas is not installed")
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_compile_report.py"), "--dims", "64",
                    "--kernels", "_kv_tangent_kernel[P]", "--configs",
                    "--extra-config", "16,32,4,1,SPLIT=0",  # new: compiled
                    "--extra-config", "32,64,4,2,SPLIT=1",  # the list's first: not compiled twice
                    "--extra-config", "16,32,4,1",  # no SPLIT: not this kernel's
                    "--json", str(out)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    records = json.loads(out.read_text())["records"]
    assert [(r["kernel"], r["config"], r["listed"]) for r in records] == [
        ("_kv_tangent_kernel[P]", "16x32,w4,s1,SPLIT=0", False)]
    assert "error" not in records[0] and records[0]["regs"] > 0


_EMA_COMPILE = """
import json, sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature
from kernels import ema
kernel, launches = ema._two_lerps_kernel, []
class Capture:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: launches.append((args, kwargs))
ema._two_lerps_kernel, ema.runs_on = Capture(), lambda device: True
p = [torch.randn(3000)]
ema.lerp_two_([p[0].clone()], [p[0].clone()], p, 0.01, 0.001, skip=torch.zeros(()))
ema.lerp_two_([p[0].clone()], [p[0].clone()], p, 0.01, 0.001)
target = GPUTarget("cuda", 90, 128)
backend = make_backend(target)
out = {}
for args, kwargs in launches:
    bound, spec, options = create_function_from_signature(kernel.signature, kernel.params, backend)(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, options)
    source = ASTSource(kernel, signature, constexprs, attrs)
    ptx = triton.compile(source, target=target, options=options.__dict__).asm["ptx"]
    out[str(kwargs["HAS_SKIP"])] = {"st_global": ptx.count("st.global"), "branches": ptx.count("bra")}
json.dump(out, sys.stdout)
"""


def test_the_ema_kernel_with_its_skip_flag_compiles_for_sm90():
    """The EMA kernel's early return on a set ``skip`` flag (a runtime branch the interpreter runs as Python) compiles
    for an H100, and the version with the flag branches where the one without does not need to."""
    if not PTXAS.exists():
        pytest.skip("Triton's ptxas is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _EMA_COMPILE], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          check=True, capture_output=True, text=True, timeout=600)
    got = json.loads(done.stdout)
    assert got["True"]["st_global"] == got["False"]["st_global"] > 0
    assert got["True"]["branches"] > got["False"]["branches"]
