"""docs/THEORY.md §7, Gaussian test bed: every closed form for p0 = N(μ, σ0²) checked symbolically.

Claims (1-D; the D-dimensional isotropic case is D independent copies of it, so σ²(s) carries a factor D):
  u(x, s) = −μ + κ(s)(x − (1 − s)μ),  κ = c/σ_s²,  c(s) = s − (1 − s)σ0²,  σ_s² = (1 − s)²σ0² + s²,
  is E[x1 − x0 | x_s = x] (conditional-Gaussian identity), and p_s = N((1 − s)μ, σ_s²) solves the continuity
  equation with it; ψ(x, t, s) = (1 − s)μ + (σ_s/σ_t)(x − (1 − t)μ) solves ∂_s ψ = u(ψ, s) with ψ(x, t, t) = x, is a
  semigroup, and pushes p_t to p_s; σ²(s) = 1 + σ0² − c²/σ_s². Also the W2 formula between Gaussians (§7), checked
  at 40 digits against the explicit Brenier map on random 3×3 covariances.
"""
import mpmath as mp
import sympy as sp

from proofs._gauss_moments import expect
from proofs._report import Report

x, mu = sp.symbols("x mu", real=True)
s, t, r = sp.symbols("s t r", positive=True)
sig0 = sp.symbols("sigma0", positive=True)
z0, z1 = sp.symbols("z0 z1", real=True)


def var(s_):
    """σ_s² = (1 − s)²σ0² + s²."""
    return (1 - s_) ** 2 * sig0**2 + s_**2


def c(s_):
    """c(s) = s − (1 − s)σ0² = Cov(x1 − x0, x_s)."""
    return s_ - (1 - s_) * sig0**2


def u(x_, s_):
    """The marginal velocity of docs/THEORY.md §7."""
    return -mu + c(s_) / var(s_) * (x_ - (1 - s_) * mu)


def psi(x_, t_, s_):
    """The flow map of docs/THEORY.md §7."""
    return (1 - s_) * mu + sp.sqrt(var(s_)) / sp.sqrt(var(t_)) * (x_ - (1 - t_) * mu)


def is_zero(expr) -> bool:
    return sp.simplify(expr) == 0


def check_velocity(rep: Report) -> None:
    x0, x1 = mu + sig0 * z0, z1
    xs, v = (1 - s) * x0 + s * x1, x1 - x0
    rep.check("Var(x_s) = σ_s²", is_zero(expect((xs - (1 - s) * mu) ** 2, [z0, z1]) - var(s)))
    rep.check("Cov(x1 − x0, x_s) = c(s)", is_zero(expect((v + mu) * (xs - (1 - s) * mu), [z0, z1]) - c(s)))
    rep.check("dσ_s²/ds = 2c(s), so κ = σ_s'/σ_s", is_zero(sp.diff(var(s), s) - 2 * c(s)))
    # v − u(x_s) is jointly Gaussian with x_s; zero mean and zero covariance with x_s make it independent of x_s,
    # which is exactly E[v | x_s] = u(x_s).
    resid = v - u(xs, s)
    rep.check("E[v − u(x_s)] = 0", is_zero(expect(resid, [z0, z1])))
    rep.check("E[(v − u(x_s)) x_s] = 0 (so u = E[v | x_s])", is_zero(expect(resid * xs, [z0, z1])))
    sigma2 = 1 + sig0**2 - c(s) ** 2 / var(s)
    rep.check("σ²(s) = E(v − u(x_s))² = 1 + σ0² − c²/σ_s²", is_zero(expect(resid**2, [z0, z1]) - sigma2))
    rep.check("σ²(s) = σ0²/σ_s² (so σ² ≥ 0)", is_zero(var(s) * sigma2 - sig0**2))
    dens = sp.exp(-((x - (1 - s) * mu) ** 2) / (2 * var(s))) / sp.sqrt(2 * sp.pi * var(s))
    cont = sp.diff(dens, s) + sp.diff(dens * u(x, s), x)
    rep.check("∂_s p_s + ∂_x(p_s u) = 0 (continuity equation)", is_zero(cont / dens))


def check_two_dims(rep: Report) -> None:
    """D = 2, p0 = N(μ, σ0²I) with a vector mean: u acts coordinatewise and σ²(s) = D(1 + σ0² − c²/σ_s²)."""
    mus = sp.symbols("mu0 mu1", real=True)
    zs = sp.symbols("a0 a1 b0 b1", real=True)  # x0 = μ + σ0 a, x1 = b
    total = 0
    for d in range(2):
        x0, x1 = mus[d] + sig0 * zs[d], zs[2 + d]
        xs = (1 - s) * x0 + s * x1
        u_d = (-mu + c(s) / var(s) * (x - (1 - s) * mu)).subs({mu: mus[d], x: xs})
        total += (x1 - x0 - u_d) ** 2
    rep.check("D = 2, vector μ: E‖v − u(x_s)‖² = D(1 + σ0² − c²/σ_s²)",
              is_zero(expect(total, list(zs)) - 2 * (1 + sig0**2 - c(s) ** 2 / var(s))))


def check_flow(rep: Report) -> None:
    rep.check("∂_s ψ(x, t, s) = u(ψ(x, t, s), s)", is_zero(sp.diff(psi(x, t, s), s) - u(psi(x, t, s), s)))
    rep.check("ψ(x, t, t) = x", is_zero(psi(x, t, t) - x))
    rep.check("ψ(ψ(x, t, s), s, r) = ψ(x, t, r) (semigroup)", is_zero(psi(psi(x, t, s), s, r) - psi(x, t, r)))
    xt = (1 - t) * mu + sp.sqrt(var(t)) * z0  # x_t ~ p_t
    image = psi(xt, t, s)
    rep.check("E ψ(x_t, t, s) = (1 − s)μ", is_zero(expect(image, [z0]) - (1 - s) * mu))
    rep.check("Var ψ(x_t, t, s) = σ_s² (ψ is affine, so ψ(·, t, s)#p_t = p_s)",
              is_zero(expect((image - (1 - s) * mu) ** 2, [z0]) - var(s)))


def random_spd(rng: mp.matrix, n: int) -> mp.matrix:
    a = mp.matrix([[rng() for _ in range(n)] for _ in range(n)])
    return a * a.T + mp.eye(n) / 10


def check_w2_formula(rep: Report) -> None:
    """W2² = ‖m1 − m2‖² + tr(S1 + S2 − 2(S2^½ S1 S2^½)^½), against the Brenier map T of N(0, S1) → N(0, S2).

    T = S1^{-½}(S1^½ S2 S1^½)^½ S1^{-½} is symmetric positive definite, hence the gradient of the convex
    x ↦ ½xᵀTx, hence optimal (Brenier); it pushes N(0, S1) to N(0, S2) iff T S1 T = S2; its cost is
    E‖x − Tx‖² = tr(S1) + tr(S2) − 2 tr(T S1).
    """
    mp.mp.dps = 40
    state = [12345]

    def rng():  # a fixed linear congruential stream: the check is reproducible without numpy's RNG
        state[0] = (1103515245 * state[0] + 12345) % 2**31
        return mp.mpf(state[0]) / 2**31 - mp.mpf(1) / 2

    worst = mp.mpf(0)
    for _ in range(5):
        s1, s2 = random_spd(rng, 3), random_spd(rng, 3)
        r1 = mp.sqrtm(s1)
        r1i = mp.inverse(r1)
        tmap = r1i * mp.sqrtm(r1 * s2 * r1) * r1i
        sym = mp.mnorm(tmap - tmap.T, 1)
        push = mp.mnorm(tmap * s1 * tmap - s2, 1)
        posdef = min(mp.re(e) for e in mp.eig(tmap)[0]) > 0
        cost = sum(s1[i, i] + s2[i, i] for i in range(3)) - 2 * sum((tmap * s1)[i, i] for i in range(3))
        r2 = mp.sqrtm(s2)
        formula = sum((s1 + s2 - 2 * mp.sqrtm(r2 * s1 * r2))[i, i] for i in range(3))
        worst = max(worst, sym, push, abs(cost - formula), 0 if posdef else 1)
    rep.check("Gaussian W2² formula = cost of the Brenier map (5 random 3×3 pairs)", worst < mp.mpf(10) ** -30,
              f"max residual {mp.nstr(worst, 3)} at 40 digits")
    m1, m2, s_1, s_2 = sp.symbols("m1 m2 s1 s2", positive=True)
    one_d = (m1 - m2) ** 2 + s_1**2 + s_2**2 - 2 * sp.sqrt(s_2**2 * s_1**2)
    rep.check("1-D case: W2² = (m1 − m2)² + (s1 − s2)²", is_zero(one_d - (m1 - m2) ** 2 - (s_1 - s_2) ** 2))


def main() -> None:
    rep = Report("check_gaussian (docs/THEORY.md §7, Gaussian closed forms)")
    check_velocity(rep)
    check_two_dims(rep)
    check_flow(rep)
    check_w2_formula(rep)
    rep.finish()


if __name__ == "__main__":
    main()
