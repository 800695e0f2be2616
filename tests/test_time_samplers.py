"""Time samplers (docs/THEORY.md §3): support, the paper's gap* statistics, and truncation against rejection sampling."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import stats

from tvm_theory.time_samplers import GapSampler, PairLogitNormalSampler, UniformSampler, make_time_sampler


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(["gap", "gap-clamped", "pair-logit-normal", "uniform"]), n=st.integers(1, 300),
       seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_support_shapes_dtypes(name, n, seed, dtype):
    ts = make_time_sampler(name)(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    for v in (ts.t, ts.s, ts.s_fm):
        assert v.shape == (n,) and v.dtype == dtype
        assert bool(((v >= 0) & (v <= 1)).all())
    assert bool((ts.s <= ts.t).all())


def test_gap_star_statistics_match_the_paper():
    """Medians g ≈ 0.31, s ≈ 0.33, t ≈ 0.71 and P(t > 0.95, s < 0.05) ≈ 4e-4 (docs/THEORY.md §3)."""
    n = 400_000
    ts = GapSampler()(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = ts.t - ts.s
    # Median of n draws has standard error ≈ 1.25 σ/√n ≈ 4e-4 here; the paper's figures are given to 2 digits.
    assert abs(float(g.median()) - 0.31) < 0.006
    assert abs(float(ts.s.median()) - 0.33) < 0.006
    assert abs(float(ts.t.median()) - 0.71) < 0.006
    p = float(((ts.t > 0.95) & (ts.s < 0.05)).double().mean())
    # Binomial standard error at p = 4e-4, n = 4e5 is 3.2e-5; the paper's value has one significant digit.
    assert 2.5e-4 < p < 5.5e-4
    # Truncation: t = s + g never needs the clamp; the clamped variant clamps often.
    assert float((ts.s + g - ts.t).abs().max()) < 1e-12
    clamped = GapSampler(truncate=False)(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float((clamped.t == 1).double().mean()) > 0.05


def test_truncated_s_matches_rejection_sampling():
    """Inverse-CDF truncation against an independent algorithm: rejection of s > 1 − g, for a fixed gap."""
    gen = torch.Generator().manual_seed(3)
    sampler = GapSampler(gap_std=1e-9, gap_mean=0.4)  # g ≈ sigmoid(0.4) ≈ 0.599, essentially fixed
    ours = sampler(20_000, generator=gen, dtype=torch.float64).s
    g = float(torch.sigmoid(torch.tensor(0.4, dtype=torch.float64)))
    raw = torch.sigmoid(-0.4 + torch.randn(200_000, generator=gen, dtype=torch.float64))
    ref = raw[raw <= 1 - g][:20_000]
    assert stats.ks_2samp(ours.numpy(), ref.numpy()).pvalue > 1e-3


def test_uniform_and_pair_samplers_have_their_laws():
    gen = torch.Generator().manual_seed(5)
    u = UniformSampler()(50_000, generator=gen, dtype=torch.float64)
    assert stats.kstest(u.t.numpy(), "uniform").pvalue > 1e-3
    assert stats.kstest((u.s / u.t).numpy(), "uniform").pvalue > 1e-3
    p = PairLogitNormalSampler()(50_000, generator=gen, dtype=torch.float64)
    # max of two iid logit-normals: P(logit t ≤ z) = Φ((z + 0.4))².
    z = torch.logit(p.t).numpy()
    assert stats.kstest(z, lambda q: stats.norm.cdf(q + 0.4) ** 2).pvalue > 1e-3


@pytest.mark.parametrize("call, match", [
    (lambda: make_time_sampler("nope"), "time sampler: expected one of"),
    (lambda: GapSampler()(0), "n: expected a positive int"),
    (lambda: GapSampler(s_std=0.0), "s_std: expected a positive"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
