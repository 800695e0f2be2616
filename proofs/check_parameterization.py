"""docs/THEORY.md §2–§3: the displacement parameterization, its s-derivative, the CFG-scaled form and the sampler.

Claims: with f = (s − t)F, ∂_s f = F + (s − t)∂_s F and f(x, t, t) = 0; if F receives the gap t − s, ∂_s F = −∂_gap F;
the instantaneous velocity ∂_s f|_{s=t} is F(x, t, t) = u_θ(x, t), so the terminal term vanishes at s = t; in the
scaled (CFG) form f = (s − t)·w·F(x, t, s, c, 1/w) the velocity is u_θ = w·F(x, s, s, c, 1/w), and the 1/w²-weighted
losses equal unweighted losses on F; the conditional mean of the CFG flow-matching target is the guided velocity
(quadrature of the definitions on a two-class mixture against the closed forms of §7); the exact average
velocity F* = (ψ − x)/(s − t) has F*(x, t, t) = u(x, t) and zero terminal residual, and the few-step sampler with F*
reproduces ψ(x, 1, 0) for any grid (checked on the Gaussian of §7).
"""
import mpmath as mp
import sympy as sp

from proofs._report import Report

x, c = sp.symbols("x c", real=True)
t, s, w, gap = sp.symbols("t s w g", positive=True)
F = sp.Function("F")
G = sp.Function("G")
u_th = sp.Function("u_theta")


def zero(expr) -> bool:
    return sp.simplify(expr) == 0


def check_plain(rep: Report) -> None:
    f = (s - t) * F(x, t, s)
    rep.check("∂_s f = F + (s − t)∂_s F", zero(sp.diff(f, s) - (F(x, t, s) + (s - t) * sp.diff(F(x, t, s), s))))
    rep.check("f(x, t, t) = 0", zero(f.subs(s, t)))
    f_gap = (s - t) * G(x, t, t - s)
    ds_gap = sp.diff(G(x, t, t - s), s)
    d_gap = sp.diff(G(x, t, gap), gap).subs(gap, t - s)
    rep.check("network of (t, t − s): ∂_s F = −∂_gap F (∂_s flows only through the gap)", zero(ds_gap + d_gap))
    rep.check("… and then ∂_s f = F − (s − t)∂_gap F",
              zero(sp.diff(f_gap, s) - (G(x, t, t - s) - (s - t) * d_gap)))
    vel = sp.diff(f, s).subs(s, t)
    rep.check("∂_s f|_{s=t} = F(x, t, t) (= u_θ(x, t))", zero(vel - F(x, t, t)))
    terminal = sp.diff(f, s) - F(x + f, s, s)  # ∂_s f − u_θ(x + f, s) with u_θ(y, s) = F(y, s, s)
    rep.check("terminal residual vanishes at s = t for every F", zero(terminal.subs(s, t)))


def check_cfg(rep: Report) -> None:
    beta = 1 / w
    f = (s - t) * w * F(x, t, s, c, beta)
    rep.check("scaled: ∂_s f|_{s=t} = w F(x, t, t, c, 1/w)", zero(sp.diff(f, s).subs(s, t) - w * F(x, t, t, c, beta)))
    rep.check("scaled: terminal residual vanishes at s = t with u_θ(y, s) = w F(y, s, s, c, 1/w)",
              zero((sp.diff(f, s) - w * F(x + f, s, s, c, beta)).subs(s, t)))
    rep.check("scaled with w = 1 is the plain parameterization", zero(f.subs(w, 1) - (s - t) * F(x, t, s, c, 1)))
    tgt, ftheta = sp.symbols("target F_val", real=True)
    rep.check("1/w² ‖w F − target‖² = ‖F − target/w‖² (the β² weight is a loss on F)",
              zero((w * ftheta - tgt) ** 2 / w**2 - (ftheta - tgt / w) ** 2))


def check_guided_target(rep: Report) -> None:
    """The flow-matching target w·v + (1 − w)·u(x_s | ∅) has conditional mean u_∅ + w(u_c − u_∅) given x_s = x and
    the class c, on a two-class 1-D mixture (class k: x0 ~ N(μ_k, s_k²), prior ½ each).

    Left side from the definitions: given x_s = x and x0, v = (x − x0)/s; E[· | x_s = x, c] integrates over the class-c
    posterior of x0, ∝ N(x0; μ_c, s_c²)·φ((x − (1 − s)x0)/s), and u(x | ∅) = E[v | x_s = x] integrates over both
    classes. Right side from the closed forms of docs/THEORY.md §7: the component velocity u_c and the posterior-weighted
    mixture velocity u_∅. A wrong closed form, or the guided combination with w and 1 − w swapped, fails for w ≠ 1.
    """
    mp.mp.dps = 30
    classes = [(mp.mpf(-2), mp.mpf("0.5")), (mp.mpf("1.5"), mp.mpf("0.8"))]

    def component(k, xv, sv):
        """Closed forms at x_s = x for class k: (density of x_s, u_k(x))."""
        mu_k, sd_k = classes[k]
        var = (1 - sv) ** 2 * sd_k**2 + sv**2
        return mp.npdf(xv, (1 - sv) * mu_k, mp.sqrt(var)), (sv - (1 - sv) * sd_k**2) / var * (xv - (1 - sv) * mu_k) - mu_k

    def posterior_mean(fn, ks, xv, sv):
        """E[fn(x0) | x_s = x, class in ks] by quadrature over x0."""
        like = lambda x0: sum(mp.npdf(x0, *classes[k]) for k in ks) * mp.npdf((xv - (1 - sv) * x0) / sv)  # noqa: E731
        pts = [-mp.inf] + sorted(classes[k][0] for k in ks) + [mp.inf]
        return mp.quad(lambda x0: fn(x0) * like(x0), pts) / mp.quad(like, pts)

    worst = mp.mpf(0)
    for xv, sv in [(mp.mpf("-1.3"), mp.mpf("0.3")), (mp.mpf("0.4"), mp.mpf("0.6")), (mp.mpf(2), mp.mpf("0.85"))]:
        u_null_def = posterior_mean(lambda x0: (xv - x0) / sv, (0, 1), xv, sv)
        comps = [component(k, xv, sv) for k in (0, 1)]
        u_null = sum(d * uk for d, uk in comps) / sum(d for d, _ in comps)
        for c in (0, 1):
            for wv in (1, 2, 3):
                lhs = posterior_mean(lambda x0: wv * (xv - x0) / sv + (1 - wv) * u_null_def, (c,), xv, sv)
                worst = max(worst, abs(lhs - (u_null + wv * (comps[c][1] - u_null))))
    rep.check("E[w v + (1 − w) u(x_s | ∅) | x_s = x, c] = u_∅ + w(u_c − u_∅) (the guided velocity)",
              worst < mp.mpf(10) ** -15,
              f"quadrature of the definitions vs closed forms, 3 points × 2 classes × w ∈ {{1, 2, 3}}: "
              f"max |difference| {mp.nstr(worst, 3)} at 30 digits")


def gaussian_flow():
    mu = sp.symbols("mu", real=True)
    sig0 = sp.symbols("sigma0", positive=True)

    def sd(a):
        return sp.sqrt((1 - a) ** 2 * sig0**2 + a**2)

    def psi(x_, a, b):
        return (1 - b) * mu + sd(b) / sd(a) * (x_ - (1 - a) * mu)

    def u(x_, a):
        return -mu + (a - (1 - a) * sig0**2) / sd(a) ** 2 * (x_ - (1 - a) * mu)

    return psi, u


def check_exact_average_velocity(rep: Report) -> None:
    psi, u = gaussian_flow()
    f_star = psi(x, t, s) - x
    f_of_y = psi(x, t, s)  # x + f*
    rep.check("exact f* = ψ − x: ∂_s f* = u(x + f*, s) (terminal residual ≡ 0)",
              zero(sp.diff(f_star, s) - u(f_of_y, s)))
    big_f = f_star / (s - t)
    rep.check("F*(x, t, s) → u(x, t) as s → t", zero(sp.limit(big_f, s, t) - u(x, t)))
    grid = [1, sp.Rational(2, 3), sp.Rational(1, 4), 0]
    z = x
    for a, b in zip(grid[:-1], grid[1:]):
        z = z + (b - a) * (psi(z, a, b) - z) / (b - a)  # x ← x + (t_{k+1} − t_k) F*(x, t_k, t_{k+1})
    rep.check("3-step sampler with F* on grid 1, 2/3, 1/4, 0 equals ψ(x, 1, 0)", zero(z - psi(x, 1, 0)))


def main() -> None:
    rep = Report("check_parameterization (docs/THEORY.md §2–§3, f = (s − t)F, CFG scaling, sampler)")
    check_plain(rep)
    check_cfg(rep)
    check_guided_target(rep)
    check_exact_average_velocity(rep)
    rep.finish()


if __name__ == "__main__":
    main()
