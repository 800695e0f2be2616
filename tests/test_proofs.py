"""Run every proofs/ check script (THEORY.md §4, §5, §7, §9) and require it to pass.

Each script is an independent symbolic / arbitrary-precision check (sympy, mpmath, numpy; no torch); a script
exits non-zero when any of its claims fails, and prints the claim with its evidence.
"""
import os
import pathlib
import subprocess
import sys

import pytest

from proofs import CHECKS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_check_script_is_listed():
    on_disk = {p.stem.removeprefix("check_") for p in (ROOT / "proofs").glob("check_*.py")}
    assert on_disk == set(CHECKS)


@pytest.mark.parametrize("name", CHECKS)
def test_check_script_passes(name):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", f"proofs.check_{name}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    assert "checks passed" in proc.stdout.splitlines()[-1]


def test_a_failing_claim_exits_nonzero():
    """The ledger's exit status is what the tests above rely on: a failed claim must give status 1."""
    code = "from proofs._report import Report; r = Report('t'); r.check('false claim', False); r.finish()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout
