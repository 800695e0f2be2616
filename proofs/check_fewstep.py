"""The few-step theorem (proofs/README.md §9, docs/THEORY.md §10) on exact Gaussian cases, with planted errors.

p0 = N(0, σ0²), σ0 ∈ {1, 3}; two affine model families (``proofs/_fewstep_example.py``): the Euler jump of the biased
velocity κx + 0.1, and the exact jump plus 0.2(t − s)x. Uniform grids with N = 1, 2, 4 jumps. Every law is Gaussian,
so E_k, D_N and W2(q_N, p0) are exact; the integrals over σ use mpmath quadrature (split where L = |k| has its kink;
∫L in closed form). Each number is computed at 15 and at 30 digits; their disagreement is printed and every
"holds" needs a margin of at least 10⁶ times it. That disagreement is a consistency measure, not a certified error.

Claims checked, per case:
  1. the recursion E_{k+1} ≤ Γ_k E_k + δ_k at every jump k (A_N under the sampler's law q_k);
  2. D_N ≤ (a)_N = ∫_0^1 λ(√A_N + √B), and the unrolled recursion equals the direct integral;
  3. D_N² ≤ (b)_N = 2Λ_1∫λ(A_N + B);
  4. variant (v), loss side: E_(k+1) ≤ Lip(jump map) E_k + δ_k^p with A under p_{t_k} (what the loss estimates);
  5. the Alekseev–Gröbner identity along the concatenated path at three starting points.
Each check can fail, and the script shows that it does on a planted error: the recursion and (a)_N with the transport
factor e^{∫L} replaced by 1 are violated in some cases, and the identity with the last jump's term left out fails.
Also checked symbolically (sympy): the residual coefficients P, Q of both families.
"""
import mpmath as mp
import sympy as sp

from proofs import _fewstep_example as fx
from proofs._report import Report

CASES = [("euler", "0.1", 1), ("euler", "0.1", 3), ("flow_eps", "0.2", 1), ("flow_eps", "0.2", 3)]
STEPS = (1, 2, 4)
MARGIN = 10**6


def uniform(n):
    return [mp.mpf(n - i) / n for i in range(n + 1)]


def numbers(family, p, sig0, n, dps):
    with mp.workdps(dps):
        m, grid = fx.Model(family, p, sig0), uniform(n)
        E = fx.node_errors(m, grid)
        a_rec, e_bounds = fx.bound_a(m, grid)
        terms = [fx.jump_terms(m, grid, k) for k in range(n)]
        flat, _ = fx.bound_a(m, grid, transport=False)
        flat_terms = [fx.jump_terms(m, grid, k, transport=False) for k in range(n)]
        loss_side, _ = fx.bound_jump_lipschitz(m, grid)
        ag = [fx.ag_identity(m, grid, x) for x in ("-1.3", "0.4", "2.1")]
        return {"W2": fx.w2_exact(m, grid), "E": E, "a": a_rec, "a_direct": fx.bound_a_direct(m, grid),
                "b": fx.bound_b(m, grid), "gamma": [t[0] for t in terms], "delta": [t[1] for t in terms],
                "flat": flat, "flat_delta": [t[1] for t in flat_terms], "loss_side": loss_side,
                "ag": ag}


def gap(x, y):
    """Largest |difference| between two nested structures of mpf."""
    if isinstance(x, (list, tuple)):
        return max((gap(a, b) for a, b in zip(x, y)), default=mp.mpf(0))
    return abs(x - y)


def check_residual_coefficients(rep: Report) -> None:
    x, t, s, r, eps, k0 = sp.symbols("x t s r epsilon sigma0", positive=True)
    sd = lambda v: sp.sqrt((1 - v) ** 2 * k0**2 + v**2)  # noqa: E731
    kap = lambda v: (v - (1 - v) * k0**2) / sd(v) ** 2  # noqa: E731
    point = {t: sp.Rational(7, 10), s: sp.Rational(3, 10), r: sp.Rational(1, 10), eps: sp.Rational(1, 5),
             k0: sp.Rational(3, 2), x: sp.Rational(-4, 5)}
    families = {
        "euler": ((s - t) * (kap(t) * x + r), lambda y: kap(s) * y + r, ("euler", point[r])),
        "flow_eps": (sd(s) / sd(t) * x - x + eps * (t - s) * x, lambda y: (kap(s) - eps) * y, ("flow_eps", point[eps])),
    }
    for name, (f, u_model, (fam, p)) in families.items():
        resid = sp.diff(f, s) - u_model(x + f)
        exact = sp.N(resid.subs(point), 50)
        with mp.workdps(40):
            P, Q = fx.Model(fam, mp.mpf(p.p) / p.q, mp.mpf(3) / 2).residual(mp.mpf(7) / 10, mp.mpf(3) / 10)
            err = abs(mp.mpf(str(exact)) - (P * (mp.mpf(-4) / 5) + Q))
        rep.check(f"{name}: ∂_s f − u_θ(x + f, s) = P x + Q (sympy derivative vs the module, 40 digits)",
                  err < mp.mpf(10) ** -30, f"|difference| {mp.nstr(err, 3)}")
    # u_θ(x, s) = F(x, s, s) for flow_eps: the limit of f/(s − t) as s → t
    f = sd(s) / sd(t) * x - x + eps * (t - s) * x
    fixed = {key: val for key, val in point.items() if key != s}
    lim = sp.limit(f.subs(fixed) / (s - point[t]), s, point[t])
    target = (kap(t) - eps).subs(point) * point[x]
    rep.check("flow_eps: u_θ(x, s) = lim_{s'→s} f/(s' − s) = (κ(s) − ε)x", sp.simplify(lim - target) == 0)


def main() -> None:
    rep = Report("check_fewstep (few-step theorem, proofs/README.md §9)")
    check_residual_coefficients(rep)
    planted_flat = planted_rec = planted_ag = 0
    rows = []
    for family, p, sig0 in CASES:
        for n in STEPS:
            lo, hi = numbers(family, p, sig0, n, 15), numbers(family, p, sig0, n, 30)
            err = gap([lo["a"], lo["b"], lo["E"], lo["delta"], lo["loss_side"], lo["a_direct"]],
                      [hi["a"], hi["b"], hi["E"], hi["delta"], hi["loss_side"], hi["a_direct"]])
            tol = MARGIN * max(err, mp.mpf(10) ** -14)
            tag = f"{family} σ0={sig0} N={n}"
            E, g, d = hi["E"], hi["gamma"], hi["delta"]
            slack = min(g[k] * E[k] + d[k] - E[k + 1] for k in range(n))
            rep.check(f"{tag}: E_(k+1) ≤ Γ_k E_k + δ_k at every jump", slack > tol,
                      f"smallest slack {mp.nstr(slack, 4)}, 15- vs 30-digit gap {mp.nstr(err, 2)}")
            rep.check(f"{tag}: D_N = {mp.nstr(E[-1], 6)} ≤ (a)_N = {mp.nstr(hi['a'], 6)}", hi["a"] - E[-1] > tol,
                      f"ratio {mp.nstr(hi['a'] / E[-1], 4)}; exact W2 = {mp.nstr(hi['W2'], 6)}")
            rep.check(f"{tag}: unrolled recursion = ∫_0^1 λ(√A_N + √B) (direct)",
                      abs(hi["a"] - hi["a_direct"]) < mp.mpf(10) ** -20, f"|difference| {mp.nstr(abs(hi['a'] - hi['a_direct']), 2)}")
            rep.check(f"{tag}: D_N² ≤ (b)_N", hi["b"] - E[-1] ** 2 > tol,
                      f"√(b)_N = {mp.nstr(mp.sqrt(hi['b']), 6)}")
            rep.check(f"{tag}: variant (v): Lip(jump map) recursion with A under p_(t_k) ≥ D_N",
                      hi["loss_side"] - E[-1] > tol, f"bound {mp.nstr(hi['loss_side'], 6)}")
            ag_err = max(abs(a - b) for a, b in hi["ag"])
            rep.check(f"{tag}: X_N − Z_N = −∫_0^1 ∂_xψ(y(σ), σ, 0) ρ(σ) dσ at 3 points", ag_err < mp.mpf(10) ** -20,
                      f"max |difference| {mp.nstr(ag_err, 2)}")
            # planted errors: a check that cannot fail would not notice them
            planted_flat += hi["flat"] < E[-1] - tol
            flat_slack = min(E[k] + hi["flat_delta"][k] - E[k + 1] for k in range(n))
            planted_rec += flat_slack < -tol
            if n > 1:
                planted_ag += _ag_without_last(family, p, sig0, n) > mp.mpf(10) ** -6
            rows.append((tag, hi["W2"], E[-1], hi["a"], mp.sqrt(hi["b"]), hi["loss_side"], hi["flat"]))
    rep.check("planted error detected: (a)_N with e^{∫L} replaced by 1 falls below D_N", planted_flat > 0,
              f"in {planted_flat} of {len(rows)} cases")
    rep.check("planted error detected: the recursion without Γ_k and e^{∫L} is violated at some jump", planted_rec > 0,
              f"in {planted_rec} of {len(rows)} cases")
    rep.check("planted error detected: the identity without the last jump's term fails", planted_ag > 0,
              f"in {planted_ag} of {len(CASES) * (len(STEPS) - 1)} multi-step cases")
    print("\n  case                     W2 exact   D_N        (a)_N      √(b)_N     (v)        [(a)_N, λ≡1]")
    for tag, *vals in rows:
        print(f"  {tag:<24} " + " ".join(f"{mp.nstr(v, 6):<10}" for v in vals))
    rep.finish()


def _ag_without_last(family, p, sig0, n):
    """|X_N − Z_N + Σ_{k<N−1} ∫ ∂_xψ ρ| at x0 = 0.4: the identity with jump N − 1's term left out."""
    with mp.workdps(30):
        m, grid = fx.Model(family, p, sig0), uniform(n)
        full_lhs, full_rhs = fx.ag_identity(m, grid, "0.4")
        # the last jump's term alone: the identity on the one-jump grid [t_{N−1}, 0] started from X_{N−1}
        al, c = fx.states(m, grid)[n - 1]
        x_prev = al * mp.mpf("0.4") + c
        t_prev = grid[-2]

        def integrand(s):
            gg, hh, dg, dh = m.jump(t_prev, s)
            y = gg * x_prev + hh
            return m.sig0 / fx.sd(s, m.sig0) * (dg * x_prev + dh - fx.kappa(s, m.sig0) * y)
        last_term = -fx.quad(integrand, mp.mpf(0), t_prev)
        return abs(full_lhs - (full_rhs - last_term))


if __name__ == "__main__":
    main()
