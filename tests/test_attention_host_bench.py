"""The host-time benchmark of the Triton attention (benchmarks/attention_host.py): its CLI at a tiny size (output
schema, numbers finite and positive — not speed), and its stubs: no kernel runs, shapes are right, the kernels come
back afterwards."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import attention_host as bench  # noqa: E402

from kernels import _backward, _forward, attention, attention_jvp  # noqa: E402

SCRIPT = Path(bench.__file__)


@pytest.mark.parametrize("stub", ["kernels", "launchers"])
def test_cli_writes_a_median_and_spread_per_case(tmp_path, capsys, stub):
    out = tmp_path / "host.json"
    bench.main(["--shape", "1,1,5,16", "--calls", "2", "--repeats", "3", "--warmup", "1", "--stub", stub,
                "--out", str(out), "--label", "t"])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["label"] == "t" and result["stub"] == stub and result["shape"] == [1, 1, 5, 16]
    assert [r["case"] for r in result["rows"]] == list(bench.CASES)
    for r in result["rows"]:
        assert r["case"] in printed
        assert len(r["rounds_ms"]) == 3 and all(math.isfinite(x) and x > 0 for x in r["rounds_ms"])
        assert r["q25_ms"] <= r["median_ms"] <= r["q75_ms"] and r["iqr_ms"] == pytest.approx(r["q75_ms"] - r["q25_ms"])
    assert _forward._fwd_kernel.__class__.__name__ != "_NoLaunch"  # restored
    assert all(not isinstance(getattr(_backward, n), bench._NoLaunch) for n in _backward.KERNELS)


def test_help_and_bad_arguments():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--stub" in done.stdout and "func_jvp" in done.stdout
    with pytest.raises(SystemExit):
        bench.parse_args(["--shape", "1,1,16"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--calls", "0"])


@pytest.mark.parametrize("stub", ["kernels", "launchers"])
def test_stubs_launch_nothing_and_keep_shapes(monkeypatch, stub):
    """Under the stubs, the paths run with no kernel (a launch of the real kernels would raise here) and return
    outputs and gradients of the right shapes."""
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was launched")

    class Refuse:
        def __getitem__(self, grid):
            return refuse

    with bench.stubbed(stub):
        for module in (_forward, _backward):
            for name in module.KERNELS:
                if stub == "launchers":  # the launchers are stubbed: the kernels behind them must not be reached
                    monkeypatch.setattr(module, name, Refuse())
        q, tq = (torch.randn(2, 1, 6, 16, requires_grad=True) for _ in range(2))  # S_q = 6, S_k = 7
        k, v, tk, tv = (torch.randn(2, 1, 7, 16, requires_grad=True) for _ in range(4))
        o = attention(q, k, v, backend="triton")
        assert o.shape == q.shape
        grads = torch.autograd.grad(o, (q, k, v), torch.ones_like(o))
        assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
        o, to = attention_jvp(q, k, v, tq, tk, tv, backend="triton")
        grads = torch.autograd.grad((o, to), (q, k, v, tq, tk, tv), (torch.ones_like(o), torch.ones_like(to)))
        assert [g.shape for g in grads] == [x.shape for x in (q, k, v, tq, tk, tv)]
        o, to = torch.func.jvp(lambda *x: attention(*x, backend="triton"), (q, k, v), (tq, tk, tv))
        assert o.shape == to.shape == q.shape
