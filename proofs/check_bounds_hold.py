"""docs/THEORY.md §5: the steps of the proofs of (a), (b), (c), and the three bounds on the counterexample of §4.

Claims:
  * Gronwall backwards in time (step of (a)): the comparison solution of −E′ = a + LE + b, E(t) = 0, has
    E(0) = ∫_0^t λ(s)(a(s) + b(s)) ds with λ = exp∫_0^s L (ODE vs quadrature for sample a, b, L).
  * weighted Cauchy–Schwarz (step of (b)): Σ_ij λ_iλ_j(g_i − g_j)² = 2(Σλ)(Σλg²) − 2(Σλg)² (Lagrange identity, the
    discrete form of (∫λg)² ≤ Λ∫λg²), and (√A + √B)² = 2(A + B) − (√A − √B)².
  * Volterra–Gronwall with integration by parts (step of (c)): the solution of φ(s) = h(s) + (t − s)∫_s^t 3L²φ with
    h(s) = 3(t − s)∫_s^t g has φ(0) = 3t∫_0^t G g, G(r) = exp(3∫_0^r L(u)²(t − u) du) (ODE vs quadrature).
  * Jensen with the (t − s) factor: ‖∫_s^t e′‖² ≤ (t − s)∫_s^t ‖e′‖², equality for constant e′, so dropping the
    factor (the paper's form) is valid only while t − s ≤ 1.
  * On the counterexample (t = 1, σ0 = 1 and 3), W2² ≤ (a)² (interval enclosures of the closed forms) and
    W2² ≤ (c) (ODE at two working precisions). (b) equals 2·(a)² there (A ≡ 0), so it is checked in check_nonlinear.

The Gronwall and Volterra checks above are the equality cases (the comparison equations' solutions); the
inequalities themselves are checked on random admissible instances in tests/test_proof_inequalities.py.
"""
import mpmath as mp
import sympy as sp

from proofs import _bias_example as ex
from proofs._report import Report


def check_algebra(rep: Report) -> None:
    lam = sp.symbols("l0:3", positive=True)
    g = sp.symbols("g0:3", real=True)
    lhs = sum(lam[i] * lam[j] * (g[i] - g[j]) ** 2 for i in range(3) for j in range(3))
    rhs = 2 * sum(lam) * sum(li * gi**2 for li, gi in zip(lam, g)) - 2 * sum(li * gi for li, gi in zip(lam, g)) ** 2
    rep.check("Lagrange identity behind (∫λg)² ≤ Λ_t ∫λg²", sp.expand(lhs - rhs) == 0)
    a_, b_ = sp.symbols("A B", positive=True)
    rep.check("(√A + √B)² = 2(A + B) − (√A − √B)² ≤ 2(A + B)",
              sp.expand((sp.sqrt(a_) + sp.sqrt(b_)) ** 2 - 2 * (a_ + b_) + (sp.sqrt(a_) - sp.sqrt(b_)) ** 2) == 0)
    s, t, c = sp.symbols("s t c", positive=True)
    rep.check("Jensen step is an equality for constant e′ = c: (c(t − s))² = (t − s)∫_s^t c² dr",
              sp.simplify((c * (t - s)) ** 2 - (t - s) * sp.integrate(c**2, (sp.Symbol("r"), s, t))) == 0)
    rep.check("… so ‖∫_s^t e′‖² ≤ ∫_s^t ‖e′‖² (no factor) fails for t − s = 2, e′ = 1: 4 > 2",
              ((c * (t - s)) ** 2).subs({c: 1, t: 3, s: 1}) > sp.integrate(1, (sp.Symbol("r"), 1, 3)))


def sample_functions():
    """Smooth positive test functions for the Gronwall checks (any would do)."""
    return (lambda s: 1 + mp.sin(3 * s) ** 2,  # a(s)
            lambda s: mp.mpf(1) / 2 + s,  # b(s)
            lambda s: 2 + mp.cos(5 * s))  # L(s)


def check_gronwall(rep: Report) -> None:
    mp.mp.dps = 20
    a_f, b_f, l_f = sample_functions()
    t = mp.mpf("0.8")
    # (a): E(s) with −E′ = a + LE + b backwards from E(t) = 0; τ = t − s runs forward.
    sol = mp.odefun(lambda tau, y: [a_f(t - tau) + l_f(t - tau) * y[0] + b_f(t - tau)], 0, [mp.mpf(0)])
    e0 = sol(t)[0]
    lam = lambda s: mp.exp(2 * s + mp.sin(5 * s) / 5)  # noqa: E731  (exp∫_0^s L for L = 2 + cos 5s)
    closed = mp.quad(lambda s: lam(s) * (a_f(s) + b_f(s)), [0, t])
    rep.check("Gronwall backwards: E(0) = ∫_0^t λ(a + b)", abs(e0 - closed) < mp.mpf(10) ** -15 * closed,
              f"ODE {mp.nstr(e0, 15)} vs quadrature {mp.nstr(closed, 15)}")
    # (c): with g = a + b, h(s) = 3(t − s)H(s), H(s) = ∫_s^t g, R(s) = ∫_s^t 3L²φ: R′ = −3L²(h + (t − s)R),
    # R(t) = 0, φ(0) = h(0) + tR(0). Solved backwards as one system in τ = t − s with state (H, R).
    def rhs(tau, y):
        s = t - tau
        h = 3 * (t - s) * y[0]
        return [a_f(s) + b_f(s), 3 * l_f(s) ** 2 * (h + (t - s) * y[1])]

    big_h, big_r = mp.odefun(rhs, 0, [mp.mpf(0), mp.mpf(0)])(t)
    phi0 = 3 * t * big_h + t * big_r
    gfun = lambda r: mp.exp(3 * mp.quad(lambda u: l_f(u) ** 2 * (t - u), [0, r]))  # noqa: E731
    closed_c = 3 * t * mp.quad(lambda r: gfun(r) * (a_f(r) + b_f(r)), [0, t])
    rep.check("Volterra–Gronwall for (c): φ(0) = 3t∫_0^t G (a + b)",
              abs(phi0 - closed_c) < mp.mpf(10) ** -12 * closed_c,
              f"ODE {mp.nstr(phi0, 15)} vs quadrature {mp.nstr(closed_c, 15)}")


def check_counterexample_bounds(rep: Report) -> None:
    """W2² ≤ (a)² and W2² ≤ (c) on the counterexample at t = 1. (b) is not checked here: with A ≡ 0 and B ≡ r²,
    (b) = 2Λ_1·r²Λ_1 = 2·(a)² exactly, so it would add nothing to the (a) check; check_nonlinear checks (b) on a
    model with A ≠ 0, where it is not a multiple of (a)²."""
    for sig in (1, 3):
        w2_iv, lam_iv = ex.enclosures_t1(sig, "0.1")
        a_sq_iv = (mp.iv.mpf("0.1") * lam_iv) ** 2
        rep.check(f"σ0 = {sig}, t = 1: W2² = {mp.nstr(mp.mpf(w2_iv.mid), 5)} ≤ (a)² = {mp.nstr(mp.mpf(a_sq_iv.mid), 5)}",
                  w2_iv.b < a_sq_iv.a, f"ratio {mp.nstr(mp.mpf(a_sq_iv.mid) / mp.mpf(w2_iv.mid), 4)}; interval "
                  "enclosures of the closed forms")
        c_runs = {}
        for dps in ex.PRECISIONS:  # (c) has no closed form: an ODE at two working precisions
            mp.mp.dps = dps
            c_runs[dps] = ex.bound_c_ode(mp.mpf(sig), mp.mpf("0.1"), mp.mpf(1))
        lo, hi = ex.PRECISIONS
        gap = abs(c_runs[lo] - c_runs[hi])
        rep.check(f"σ0 = {sig}, t = 1: W2² ≤ (c) = {mp.nstr(c_runs[hi], 5)}", c_runs[hi] - w2_iv.b > 10**6 * gap,
                  f"ratio {mp.nstr(c_runs[hi] / mp.mpf(w2_iv.mid), 4)}; (c) by ODE, the {lo}- and {hi}-digit runs "
                  f"differ by {mp.nstr(gap, 2)} (agreement, not an error bound)")


def main() -> None:
    rep = Report("check_bounds_hold (docs/THEORY.md §5, proof steps of (a), (b), (c) and the bounds on §4)")
    check_algebra(rep)
    check_gronwall(rep)
    check_counterexample_bounds(rep)
    rep.finish()


if __name__ == "__main__":
    main()
