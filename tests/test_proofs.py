"""Run every proofs/ check script (docs/THEORY.md §4, §5, §7, §9) and require it to pass.

Each script is an independent symbolic / arbitrary-precision check (sympy, mpmath, numpy; no torch); a script
exits non-zero when any of its claims fails, and prints the claim with its evidence.
"""
import os
import pathlib
import subprocess
import sys

import mpmath as mp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proofs import CHECKS
from proofs import _bias_example as ex

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


# Property checks of the bias model of docs/THEORY.md §4 over its parameters (closed forms vs mpmath ODE, proofs/README.md §3).
SIGMA0 = st.floats(0.3, 6.0)
BIAS = st.floats(0.01, 1.0)
TIME = st.floats(0.05, 1.0)


@settings(max_examples=15, deadline=None)
@given(sig0=SIGMA0, r=BIAS, t=TIME)
def test_bias_model_w2_closed_form_matches_ode(sig0, r, t):
    mp.mp.dps = 15
    sig0, r, t = mp.mpf(sig0), mp.mpf(r), mp.mpf(t)
    closed = ex.w2sq_closed(sig0, r, t)
    by_ode, alpha, _ = ex.one_step_law_ode(sig0, r, t)
    assert abs(by_ode - closed) <= 1e-12 * closed
    assert abs(alpha * ex.sd(t, sig0) / sig0 - 1) < 1e-12  # std ratio 1: the law is a translate of p0


@settings(max_examples=15, deadline=None)
@given(sig0=SIGMA0, r=BIAS, t=TIME)
def test_bias_model_bound_a_holds_and_is_attained_while_kappa_nonpositive(sig0, r, t):
    mp.mp.dps = 15
    sig0, r, t = mp.mpf(sig0), mp.mpf(r), mp.mpf(t)
    lam_int = ex.int_lambda_closed(sig0, t)
    assert abs(lam_int - ex.int_lambda_ode(sig0, t)) <= 1e-12 * lam_int
    w2, bound_a = ex.w2sq_closed(sig0, r, t), (r * lam_int) ** 2
    if t <= ex.tau_star(sig0):
        assert abs(bound_a - w2) <= 1e-12 * w2
    else:  # strict past τ*, the gap growing like (t − τ*)²: ≥ 6e-9 relative from t − τ* = 1e-3 on, 1e-15 just past it
        assert bound_a >= w2 * (1 - 1e-12)
        if t > ex.tau_star(sig0) + 1e-3:
            assert bound_a > w2 * (1 + 1e-12)


@settings(max_examples=8, deadline=None)
@given(sig0=SIGMA0, t=TIME)
def test_bias_model_bound_c_holds(sig0, t):
    mp.mp.dps = 15
    sig0, t, r = mp.mpf(sig0), mp.mpf(t), mp.mpf("0.1")
    assert ex.bound_c_ode(sig0, r, t) >= ex.w2sq_closed(sig0, r, t) * (1 + 1e-9)


# Property checks of the few-step theorem (proofs/README.md §9) on random non-uniform grids: exact Gaussian laws,
# mpmath quadrature at 15 digits.
from proofs import _fewstep_example as fx  # noqa: E402


@st.composite
def _grids(draw):
    n = draw(st.integers(1, 5))
    cuts = sorted(set(draw(st.lists(st.floats(0.02, 0.98), min_size=n - 1, max_size=n - 1))))
    return [mp.mpf(1)] + [mp.mpf(c) for c in reversed(cuts)] + [mp.mpf(0)]


@settings(max_examples=12, deadline=None)
@given(grid=_grids(), family=st.sampled_from(["euler", "flow_eps"]), p=st.floats(0.02, 0.6), sig0=SIGMA0)
def test_fewstep_bound_and_recursion_hold_on_random_grids(grid, family, p, sig0):
    mp.mp.dps = 15
    m = fx.Model(family, p, sig0)
    E = fx.node_errors(m, grid)
    bound, e_bounds = fx.bound_a(m, grid)
    for k in range(len(grid) - 1):
        gamma, delta, _ = fx.jump_terms(m, grid, k)
        assert E[k + 1] <= gamma * E[k] + delta + 1e-10
        assert E[k + 1] <= e_bounds[k + 1] + 1e-10
    assert fx.w2_exact(m, grid) <= E[-1] + 1e-12
    assert E[-1] <= fx.bound_jump_lipschitz(m, grid)[0] + 1e-10
