"""The statistics of tvm_theory.analysis.stats against scipy and hand computations: mean ± SE (n = 0, 1, 2 included),
the paired t-interval, Welch's t-test (against its formula) and Holm's correction (a hand example and the step-down
procedure), and what the report writers print for one seed."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from tvm_theory.analysis.stats import holm, mean_se, paired_t_interval, welch

value = st.floats(-1e3, 1e3)
samples = st.lists(value, min_size=2, max_size=12)


def _spread(x) -> bool:
    """Clearly non-constant: scipy's own checks then agree with ours."""
    return np.ptp(x) > 1e-6 * (1 + np.abs(x).max())


# ---- mean ± standard error ---------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(x=samples)
def test_mean_se_against_numpy_and_scipy(x):
    m = mean_se(x)
    assert m["n"] == len(x)
    assert m["mean"] == pytest.approx(float(np.mean(x)), rel=1e-12, abs=1e-9)
    assert m["se"] == pytest.approx(float(sps.sem(x, ddof=1)), rel=1e-9, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(x=samples, junk=st.lists(st.sampled_from([math.nan, math.inf, -math.inf, None]), max_size=4))
def test_mean_se_drops_missing_values(x, junk):
    assert mean_se(junk + x + junk) == mean_se(x)


def test_mean_se_edge_cases_n0_n1_n2():
    empty = mean_se([])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["se"])
    assert mean_se([math.nan])["n"] == 0
    one = mean_se([2.5])
    assert one["n"] == 1 and one["mean"] == 2.5 and math.isnan(one["se"])  # no spread from one value, not 0
    # n = 2: s = |a − b|/√2, so SE = s/√2 = |a − b|/2
    two = mean_se([1.0, 4.0])
    assert two == {"mean": 2.5, "se": pytest.approx(1.5), "n": 2}
    with pytest.raises(ValueError, match="values: expected an iterable of numbers"):
        mean_se(["a", "b"])


# ---- paired t-interval -------------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(pairs=st.lists(st.tuples(value, value), min_size=2, max_size=12), level=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_paired_interval_matches_scipy_ttest_rel(pairs, level):
    x, y = map(list, zip(*pairs))
    d = np.subtract(x, y)
    assume(_spread(d))
    r = paired_t_interval(x, y, level)
    ci = sps.ttest_rel(x, y).confidence_interval(confidence_level=level)
    assert r["n"] == len(x) and r["diff"] == pytest.approx(float(d.mean()), rel=1e-12, abs=1e-9)
    assert r["diff"] - r["half_width"] == pytest.approx(ci.low, rel=1e-9, abs=1e-9)
    assert r["diff"] + r["half_width"] == pytest.approx(ci.high, rel=1e-9, abs=1e-9)


def test_paired_interval_edge_cases():
    # n = 2 by hand: d = (−1, −3), d̄ = −2, SE = |−1 − (−3)|/2 = 1
    r = paired_t_interval([1.0, 2.0], [2.0, 5.0])
    assert r["diff"] == -2.0 and r["se"] == pytest.approx(1.0)
    # t_{0.975, 1} = tan(0.475π) (Student t with one degree of freedom is Cauchy); scipy 1.10 (the floor) is 2.0e-11 off
    assert r["half_width"] == pytest.approx(math.tan(0.475 * math.pi), rel=1e-10)
    one = paired_t_interval([1.0], [2.0])
    assert one["diff"] == -1.0 and math.isnan(one["se"]) and one["half_width"] == math.inf and one["n"] == 1
    dropped = paired_t_interval([1.0, 2.0, math.nan], [2.0, 5.0, 0.0])  # a pair with a missing value is dropped
    assert dropped == r
    with pytest.raises(ValueError, match="x, y: expected paired samples of equal length"):
        paired_t_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="level: expected a confidence level"):
        paired_t_interval([1.0, 2.0], [1.0, 3.0], level=95)


# ---- Welch's t-test ----------------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(a=samples, b=samples)
def test_welch_against_its_formula(a, b):
    assume(_spread(a) and _spread(b))
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch–Satterthwaite
    p = welch(a, b)
    assert p == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-6, abs=1e-12)
    assert p == pytest.approx(float(sps.ttest_ind(a, b, equal_var=False).pvalue), rel=1e-9, abs=1e-15)
    assert welch(b, a) == pytest.approx(p, rel=1e-12, abs=1e-15)


def test_welch_edge_cases():
    assert math.isnan(welch([1.0], [1.0, 2.0])) and math.isnan(welch([1.0, math.nan], [1.0, 2.0]))
    assert welch([3.0, 3.0], [3.0, 3.0, 3.0]) == 1.0 and welch([3.0, 3.0], [4.0, 4.0]) == 0.0
    # n = 2 each by hand: a = (0, 2), b = (1, 5): SE² = 2/2 + 8/2 = 5, t = −2/√5, df = 25/(1 + 16) = 25/17
    assert welch([0.0, 2.0], [1.0, 5.0]) == pytest.approx(2 * sps.t.sf(2 / math.sqrt(5), 25 / 17), rel=1e-9)
    with pytest.raises(ValueError, match="b: expected an iterable of numbers"):
        welch([1.0, 2.0], 3.0)


# ---- Holm's correction -------------------------------------------------------------------------------------------
def test_holm_hand_example():
    # sorted: 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running maximum 0.06; NaN does not count in m
    adj = holm({"x": 0.01, "y": 0.04, "z": 0.03, "n": math.nan})
    assert adj["x"] == pytest.approx(0.03) and adj["z"] == pytest.approx(0.06) and adj["y"] == pytest.approx(0.06)
    assert math.isnan(adj["n"])
    assert holm({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}  # clipped at 1
    assert holm({"only": 0.02}) == {"only": 0.02} and holm({}) == {}


@settings(max_examples=50, deadline=None)
@given(ps=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), alpha=st.sampled_from([0.01, 0.05, 0.1]))
def test_holm_rejects_what_the_step_down_procedure_rejects(ps, alpha):
    pvalues = {f"h{i}": p for i, p in enumerate(ps)}
    m = len(ps)
    order = sorted(pvalues, key=pvalues.get)
    assume(all(abs(pvalues[k] * (m - j) - alpha) > 1e-12 for j, k in enumerate(order)))  # no ties with the cut
    rejected, still = set(), True  # reject H_(j) while p_(j) ≤ α/(m − j + 1), stop at the first that fails
    for j, k in enumerate(order):
        still = still and pvalues[k] <= alpha / (m - j)
        if still:
            rejected.add(k)
    adj = holm(pvalues)
    assert {k for k, p in adj.items() if p <= alpha} == rejected
    assert all(pvalues[k] <= adj[k] <= 1.0 for k in pvalues)


# ---- what the writers print for one seed ---------------------------------------------------------------------------
def test_compare_prints_a_dash_for_a_missing_standard_error():
    from toy import compare

    one, two = compare.summary([0.5]), compare.summary([0.5, 0.7])
    assert compare._pm(one) == "0.500 ± —" and compare._pm(two) == "0.600 ± 0.100"
    verdict = compare.paired_verdict([0.5], [0.7])
    assert verdict["verdict"] == "tie" and verdict["half_width"] == math.inf and math.isnan(verdict["se"])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50))
def test_tail_quantiles_match_numpy(values):
    import torch

    from tvm_theory.analysis.stats import tail_quantiles

    got = tail_quantiles(torch.tensor(values, dtype=torch.float32).reshape(-1, 1))
    v = np.asarray(torch.tensor(values, dtype=torch.float32), dtype=np.float64)
    want = dict(zip(("q50", "q90", "q99"), np.quantile(v, [0.5, 0.9, 0.99]))) | {"max": v.max()}
    assert got == pytest.approx(want, rel=1e-12, abs=1e-9)
