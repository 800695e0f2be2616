"""docs/THEORY.md §7, Gaussian mixture test bed: the component velocity and the posterior-weighted mixture velocity.

Claims: given component k (x0 ~ N(μ_k, Σ_k)), x_t ~ N(m_k, C_k) with m_k = (1 − t)μ_k, C_k = (1 − t)²Σ_k + t²I,
and E[x1 − x0 | x_t = x, k] = u_k(x) = (tI − (1 − t)Σ_k)C_k⁻¹(x − m_k) − μ_k (checked in 2-D with a generic
Σ_k = AAᵀ: the residual v − u_k(x_t) has mean zero and is uncorrelated with x_t, computed from the moments); each
component solves its continuity equation (symbolic, 1-D); the mixture velocity u = Σ_k w_k u_k,
w_k ∝ π_k N(x; m_k, C_k), solves the continuity equation at a rational point (1-D, two components, 40 digits) and
equals E[x1 − x0 | x_t = x] computed from its definition by quadrature.
"""
import mpmath as mp
import sympy as sp

from proofs._gauss_moments import expect
from proofs._report import Report

t = sp.symbols("t", positive=True)


def check_component_2d(rep: Report) -> None:
    a = sp.Matrix(2, 2, sp.symbols("a00 a01 a10 a11", real=True))
    mu = sp.Matrix(sp.symbols("mu0 mu1", real=True))
    z = sp.symbols("z0 z1", real=True)  # x0 = μ + A z
    w = sp.symbols("w0 w1", real=True)  # x1 = w
    normals = list(z) + list(w)
    sigma = a * a.T
    eye = sp.eye(2)
    x0 = mu + a * sp.Matrix(z)
    x1 = sp.Matrix(w)
    xt, v = (1 - t) * x0 + t * x1, x1 - x0
    m_k = (1 - t) * mu
    c_k = (1 - t) ** 2 * sigma + t**2 * eye
    cov_xx = (xt - m_k) * (xt - m_k).T
    rep.check("Cov(x_t | k) = (1 − t)²Σ_k + t²I",
              all(sp.simplify(expect(cov_xx[i, j], normals) - c_k[i, j]) == 0 for i in range(2) for j in range(2)))
    cov_vx = (v + mu) * (xt - m_k).T
    gain = t * eye - (1 - t) * sigma
    rep.check("Cov(x1 − x0, x_t | k) = tI − (1 − t)Σ_k",
              all(sp.simplify(expect(cov_vx[i, j], normals) - gain[i, j]) == 0 for i in range(2) for j in range(2)))
    # The residual v − u_k(x_t) as a polynomial in the normals, its mean and its covariance with x_t computed from
    # the moments directly: a wrong gain or a wrong C_k leaves a non-zero entry.
    resid = v - (gain * c_k.inv() * (xt - m_k) - mu)
    rep.check("E[v − u_k(x_t) | k] = 0 and E[(v − u_k(x_t))(x_t − m_k)ᵀ | k] = 0, so u_k = E[v | x_t, k]",
              all(expect(resid[i], normals) == 0 for i in range(2))
              and all(expect(resid[i] * (xt - m_k)[j], normals) == 0 for i in range(2) for j in range(2)),
              "generic Σ_k = AAᵀ, symbolic μ_k, 2-D; jointly Gaussian and uncorrelated means independent")


def mixture_1d():
    """Two-component 1-D mixture: symbols, component densities N_k(x; m_k, C_k) and velocities u_k."""
    x = sp.symbols("x", real=True)
    pis = sp.symbols("pi0 pi1", positive=True)
    mus = sp.symbols("mu0 mu1", real=True)
    sds = sp.symbols("s0 s1", positive=True)
    comps = []
    for mu, sd in zip(mus, sds):
        m, cvar = (1 - t) * mu, (1 - t) ** 2 * sd**2 + t**2
        dens = sp.exp(-((x - m) ** 2) / (2 * cvar)) / sp.sqrt(2 * sp.pi * cvar)
        comps.append((dens, (t - (1 - t) * sd**2) / cvar * (x - m) - mu))
    return x, pis, comps


def check_mixture_continuity(rep: Report) -> None:
    x, pis, comps = mixture_1d()
    p = sum(pi * dens for pi, (dens, _) in zip(pis, comps))
    weights = [pi * dens / p for pi, (dens, _) in zip(pis, comps)]
    u = sum(wk * uk for wk, (_, uk) in zip(weights, comps))
    per_comp = [sp.simplify((sp.diff(d, t) + sp.diff(d * uk, x)) / d) for d, uk in comps]
    rep.check("each component: ∂_t N_k + ∂_x(N_k u_k) = 0", all(e == 0 for e in per_comp))
    # The mixture: the residual ∂_t p + ∂_x(p u) with u = Σ_k w_k u_k, evaluated exactly at a rational point.
    total = sp.diff(p, t) + sp.diff(p * u, x)
    point = {x: sp.Rational(-3, 7), t: sp.Rational(2, 5), pis[0]: sp.Rational(1, 3), pis[1]: sp.Rational(2, 3),
             sp.Symbol("mu0", real=True): -1, sp.Symbol("mu1", real=True): 2,
             sp.Symbol("s0", positive=True): sp.Rational(1, 2), sp.Symbol("s1", positive=True): sp.Rational(3, 2)}
    scale = abs(sp.diff(p, t).subs(point).evalf(40))
    residual = abs(total.subs(point).evalf(40))
    rep.check("mixture: ∂_t p + ∂_x(p u) = 0 at a rational point", residual < 1e-30 * scale,
              f"|residual| {float(residual):.1e} vs |∂_t p| {float(scale):.2e} at 40 digits")


def check_mixture_by_quadrature(rep: Report) -> None:
    """u(x, t) = E[x1 − x0 | x_t = x] from its definition: given x_t = x and x0, x1 = (x − (1 − t)x0)/t and
    v = (x − x0)/t, so u(x) = ∫ v p0(x0) φ(x1) dx0 / ∫ p0(x0) φ(x1) dx0 (the 1/t Jacobian cancels)."""
    x, pis, comps = mixture_1d()
    params = {pis[0]: sp.Rational(3, 10), pis[1]: sp.Rational(7, 10), sp.Symbol("mu0", real=True): -2,
              sp.Symbol("mu1", real=True): sp.Rational(3, 2), sp.Symbol("s0", positive=True): sp.Rational(1, 2),
              sp.Symbol("s1", positive=True): sp.Rational(4, 5)}
    p = sum(pi * d for pi, (d, _) in zip(pis, comps))
    u_closed = sp.lambdify((x, t), (sum(pi * d * uk for pi, (d, uk) in zip(pis, comps)) / p).subs(params), "mpmath")
    mp.mp.dps = 30

    def p0(x0):
        return 0.3 * mp.npdf(x0, -2, 0.5) + 0.7 * mp.npdf(x0, 1.5, 0.8)

    worst = mp.mpf(0)
    for xv, tv in [(-1.3, 0.2), (0.4, 0.5), (2.0, 0.8), (0.0, 0.95)]:
        xv, tv = mp.mpf(xv), mp.mpf(tv)
        like = lambda x0: p0(x0) * mp.npdf((xv - (1 - tv) * x0) / tv)  # noqa: E731
        pts = [-mp.inf, -2, 1.5, mp.inf]
        num = mp.quad(lambda x0: (xv - x0) / tv * like(x0), pts)
        den = mp.quad(like, pts)
        worst = max(worst, abs(num / den - u_closed(xv, tv)))
    rep.check("closed-form mixture u = E[v | x_t = x] by quadrature (4 points)", worst < mp.mpf(10) ** -15,
              f"max |difference| {mp.nstr(worst, 3)} at 30 digits")


def main() -> None:
    rep = Report("check_mixture (docs/THEORY.md §7, Gaussian-mixture velocity)")
    check_component_2d(rep)
    check_mixture_continuity(rep)
    check_mixture_by_quadrature(rep)
    rep.finish()


if __name__ == "__main__":
    main()
