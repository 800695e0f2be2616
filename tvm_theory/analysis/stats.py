"""Statistics over seeds for the studies: mean ± standard error, the paired t-interval, Welch's t-test and Holm's
correction (used by ``toy.compare`` and the Lipschitz ablation's report).

API
---
* ``mean_se(values) -> MeanSE`` — {"mean", "se", "n"} of the finite values.
* ``paired_t_interval(x, y, level=0.95) -> PairedInterval`` — mean of x_i − y_i with its Student-t interval.
* ``welch(a, b) -> float`` — two-sided p-value of Welch's unequal-variance t-test.
* ``holm(pvalues) -> dict`` — Holm–Bonferroni adjusted p-values.

Conventions, the same in every function:
* Missing data: None, NaN and ±inf are dropped (a diverged run has no metric); ``n`` counts what is left.
* Standard error: SE = s/√n with s the sample standard deviation (divisor n − 1). For n = 1 it is NaN, never 0: one
  value says nothing about the spread, and a 0 would read as "exact". Writers print a non-finite SE as a dash (or
  leave it out) and JSON carries it as NaN. For n = 0 the mean is NaN too.
* An interval or test that needs a spread (n < 2 per sample) is as wide as possible: half-width inf, p-value NaN.

scipy.stats provides the t quantiles and Welch's test; scipy has no Holm correction, so it is written out here.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, TypedDict

import numpy as np
from scipy import stats


class MeanSE(TypedDict):
    """Mean, standard error (NaN for n < 2) and number of finite values."""

    mean: float
    se: float
    n: int


class PairedInterval(TypedDict):
    """Mean difference, its standard error, the half-width of its t-interval (inf for n < 2) and the number of pairs."""

    diff: float
    se: float
    half_width: float
    n: int


def _finite(values: Iterable, name: str) -> np.ndarray:
    """The finite entries of ``values`` (None and non-finite numbers dropped) as float64."""
    try:
        kept = [float(x) for x in values if x is not None and math.isfinite(x)]
    except TypeError:
        raise ValueError(f"{name}: expected an iterable of numbers (or None), got {values!r}") from None
    return np.asarray(kept, dtype=np.float64)


def mean_se(values: Iterable[float | None]) -> MeanSE:
    """Mean x̄ = Σ x_i / n and standard error s/√n, s² = Σ (x_i − x̄)²/(n − 1), of the finite values.

    n = 0: mean and se NaN; n = 1: se NaN (see the module's conventions).
    """
    v = _finite(values, "values")
    if v.size == 0:
        return {"mean": math.nan, "se": math.nan, "n": 0}
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return {"mean": float(v.mean()), "se": se, "n": int(v.size)}


def paired_t_interval(x: Iterable[float], y: Iterable[float], level: float = 0.95) -> PairedInterval:
    """The mean of the paired differences d_i = x_i − y_i and the two-sided ``level`` Student-t interval around it.

    d̄ ± t_{(1 + level)/2, n − 1} · SE(d), over the pairs whose difference is finite (x and y must have equal
    lengths: pair i is seed i of both). For n < 2 the half-width is inf (no interval from one pair).
    """
    x, y = list(x), list(y)
    if len(x) != len(y):
        raise ValueError(f"x, y: expected paired samples of equal length, got {len(x)} and {len(y)}")
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"level: expected a confidence level in (0, 1), got {level!r}")
    d = mean_se(None if a is None or b is None else a - b for a, b in zip(x, y))
    half = float(stats.t.ppf(0.5 + level / 2, d["n"] - 1)) * d["se"] if d["n"] > 1 else math.inf
    return {"diff": d["mean"], "se": d["se"], "half_width": half, "n": d["n"]}


def welch(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p-value of Welch's t-test of equal means, t = (ā − b̄)/√(s_a²/n_a + s_b²/n_b) with the
    Welch–Satterthwaite degrees of freedom (``scipy.stats.ttest_ind(equal_var=False)``), on the finite values.

    NaN if either sample has fewer than 2 finite values. Both samples constant: t is 0/0 or ±c/0, so the p-value is
    1 for equal constants and 0 for different ones.
    """
    a, b = _finite(a, "a"), _finite(b, "b")
    if a.size < 2 or b.size < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values of {name: p}: with the m finite p-values sorted, p_(1) ≤ … ≤ p_(m),

        p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)),

    so rejecting p̃ < α controls the family-wise error rate at α. NaN entries stay NaN and do not count in m.
    """
    finite = sorted((p, k) for k, p in pvalues.items() if math.isfinite(p))
    m, out, running = len(finite), {k: math.nan for k in pvalues}, 0.0
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def tail_quantiles(v) -> dict[str, float]:
    """{"q50", "q90", "q99", "max"} of the entries of a tensor (any shape, any device), in float64: the summary the
    Lipschitz and sensitivity reports give of per-sample values."""
    import torch

    v = v.detach().reshape(-1).to(torch.float64)
    q = torch.quantile(v, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64, device=v.device))
    return {"q50": float(q[0]), "q90": float(q[1]), "q99": float(q[2]), "max": float(v.max())}
