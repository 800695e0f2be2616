"""docs/THEORY.md §5 on a nonlinear model with A ≠ 0: the chain W2 = D_t ≤ (a), and (b), (c), with quadrature error.

Setting: p0 = N(0, σ0²) with σ0 = 1.5, t = 0.6 (κ < 0 on [0, t] since τ* = 0.69). Model velocity
u_θ(x, s) = κ(s)x + ε sin(ωx) (ε = 0.1, ω = 2), whose certified Lipschitz constant is exactly
L(s) = sup_x |κ(s) + εω cos ωx| = |κ(s)| + εω; model jump f_θ(x, t, s) = (s − t)u_θ(x, t) (an Euler jump, so
A_t(s) ≠ 0 and the model's law is not Gaussian). Then
  A_t(s) = E|u_θ(x_t, t) − u_θ(x_t + (s − t)u_θ(x_t, t), s)|²,  B(s) = ε²(1 − exp(−2ω²σ_s²))/2,
  λ(s) = (σ0/σ_s)e^{εωs},  D_t² = E|x_t + f_θ(x_t, t, 0) − (σ0/σ_t)x_t|².
The map T(x) = x − t u_θ(x, t) is increasing (T′ ≥ 1 − tκ(t) − tεω > 0), so (T(x_t), ψ(x_t, t, 0)) is the
comonotone coupling, which is optimal in 1-D: here W2 = D_t exactly. Expectations over x_t by Gauss–Hermite,
integrals in s by Gauss–Legendre, each at n and 2n nodes; the gap is the reported error.

Also the variation-of-constants (Alekseev–Gröbner) identity of docs/THEORY.md §6.1 on the same model path
y(σ) = x + (σ − t)u_θ(x, t): with ρ(σ) = y′(σ) − u(y(σ), σ), y(0) − z(0) = −∫_0^t ∂_xψ(y(σ), σ, 0) ρ(σ) dσ, where
∂_xψ(·, σ, 0) = σ0/σ_σ; and its ingredient ∂_σψ(x, σ, 0) = −∂_xψ(x, σ, 0) u(x, σ) (symbolic, Gaussian flow).
"""
import numpy as np
import sympy as sp
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss

from proofs._report import Report

SIG0, T, EPS, OMEGA = 1.5, 0.6, 0.1, 2.0


def sd(s):
    return np.sqrt((1 - s) ** 2 * SIG0**2 + s**2)


def kappa(s):
    return (s - (1 - s) * SIG0**2) / sd(s) ** 2


def u_model(x, s):
    return kappa(s) * x + EPS * np.sin(OMEGA * x)


def lipschitz(s):
    return np.abs(kappa(s)) + EPS * OMEGA


def gauss_legendre(a, b, n):
    nodes, weights = leggauss(n)
    return 0.5 * (b - a) * nodes + 0.5 * (b + a), 0.5 * (b - a) * weights


def quantities(n_s: int, n_x: int) -> dict:
    """All terms of the three bounds with n_s Gauss–Legendre nodes in s and n_x Gauss–Hermite nodes in x."""
    z, wz = hermegauss(n_x)
    wz = wz / np.sqrt(2 * np.pi)  # E over N(0, 1)
    xt = sd(T) * z
    jump = xt + (0 - T) * u_model(xt, T)
    d2 = np.sum(wz * (jump - SIG0 / sd(T) * xt) ** 2)
    s, ws = gauss_legendre(0.0, T, n_s)
    y = xt[None, :] + (s[:, None] - T) * u_model(xt, T)[None, :]
    a_t = np.sum(wz[None, :] * (u_model(xt, T)[None, :] - u_model(y, s[:, None])) ** 2, axis=1)
    b = EPS**2 * (1 - np.exp(-2 * OMEGA**2 * sd(s) ** 2)) / 2
    lam = SIG0 / sd(s) * np.exp(EPS * OMEGA * s)  # exp∫_0^s(−κ + εω), with −κ = −σ′/σ on [0, τ*]
    big_lam = np.sum(ws * lam)
    # G(r) = exp(3∫_0^r L(u)²(t − u) du): inner Gauss–Legendre on [0, r] for every outer node r.
    inner = np.array([np.sum(w * 3 * lipschitz(u) ** 2 * (T - u)) for u, w in (gauss_legendre(0.0, r, n_s) for r in s)])
    return {
        "D²": d2,
        "(a)²": np.sum(ws * lam * (np.sqrt(a_t) + np.sqrt(b))) ** 2,
        "(b)": 2 * big_lam * np.sum(ws * lam * (a_t + b)),
        "(c)": 3 * T * np.sum(ws * np.exp(inner) * (a_t + b)),
        "paper RHS": np.sum(ws * lam * (a_t + b)),
        "∫A": np.sum(ws * a_t),
    }


def check_variation_of_constants(rep: Report) -> None:
    x, mu = sp.symbols("x mu", real=True)
    sig, sg0 = sp.symbols("sigma sigma0", positive=True)
    sdv = sp.sqrt((1 - sig) ** 2 * sg0**2 + sig**2)
    psi_to_0 = mu + sg0 / sdv * (x - (1 - sig) * mu)  # ψ(x, σ, 0) of docs/THEORY.md §7
    u_true = -mu + (sig - (1 - sig) * sg0**2) / sdv**2 * (x - (1 - sig) * mu)
    rep.check("∂_σψ(x, σ, 0) = −∂_xψ(x, σ, 0) u(x, σ) (so d/dσ ψ(y(σ), σ, 0) = ∂_xψ ρ)",
              sp.simplify(sp.diff(psi_to_0, sig) + sp.diff(psi_to_0, x) * u_true) == 0)
    z, _ = hermegauss(9)
    xs = sd(T) * z  # a few starting points x_t
    sig_nodes, w_nodes = gauss_legendre(0.0, T, 60)
    y = xs[None, :] + (sig_nodes[:, None] - T) * u_model(xs, T)[None, :]
    rho = u_model(xs, T)[None, :] - kappa(sig_nodes)[:, None] * y  # y′ = u_θ(x, t), true u = κ y
    rhs = -np.sum(w_nodes[:, None] * (SIG0 / sd(sig_nodes))[:, None] * rho, axis=0)
    lhs = (xs - T * u_model(xs, T)) - SIG0 / sd(T) * xs  # y(0) − ψ(x, t, 0)
    err = np.max(np.abs(lhs - rhs))
    rep.check("y(0) − z(0) = −∫_0^t ∂_xψ(y(σ), σ, 0) ρ(σ) dσ at 9 starting points", err < 1e-12 * np.max(np.abs(lhs)),
              f"max |difference| {err:.1e} (60-node Gauss–Legendre)")


def main() -> None:
    rep = Report("check_nonlinear (docs/THEORY.md §5 on a nonlinear model with A ≠ 0)")
    monotone = 1 - T * kappa(T) - T * EPS * OMEGA
    rep.check("T(x) = x − t u_θ(x, t) is increasing, so W2 = D_t (comonotone coupling)", monotone > 0,
              f"inf T′ ≥ {monotone:.4f}")
    coarse, fine = quantities(40, 60), quantities(80, 120)
    err = {k: abs(coarse[k] - fine[k]) for k in fine}
    rep.check("the model is imperfect in both terms: ∫A > 0 (and B > 0 by its closed form)", fine["∫A"] > 1e-3,
              f"∫_0^t A = {fine['∫A']:.4g}")
    d2 = fine["D²"]
    for key in ("(a)²", "(b)", "(c)"):
        margin = fine[key] - d2
        rep.check(f"W2² = D_t² = {d2:.5g} ≤ {key} = {fine[key]:.5g}", margin > 100 * (err[key] + err["D²"]),
                  f"ratio {fine[key] / d2:.3g}, quadrature gap {max(err[key], err['D²']):.1e}")
    rep.check("(a)² ≤ (b) (Cauchy–Schwarz)", fine["(a)²"] <= fine["(b)"] + err["(a)²"] + err["(b)"])
    check_variation_of_constants(rep)
    print(f"  (info) the paper's explicit form ∫λ(A + B) = {fine['paper RHS']:.5g} here, "
          f"{'above' if fine['paper RHS'] > d2 else 'below'} W2² = {d2:.5g}")
    rep.finish()


if __name__ == "__main__":
    main()
