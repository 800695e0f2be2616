"""Closed forms for the few-step theorem (proofs/README.md §9) on p0 = N(0, σ0²) with affine models, in mpmath.

With σ_s² = (1 − s)²σ0² + s², κ = c/σ_s² (c = s − (1 − s)σ0²), the true field is u = κ(s)x and ψ(x, t, s) = (σ_s/σ_t)x.
Two model families, both affine in x, so every law stays Gaussian and every expectation is exact:

* ``euler``: u_θ(x, s) = κ(s)x + r and the Euler jump f_θ(x, t, s) = (s − t)(κ(t)x + r);
* ``flow_eps``: f_θ(x, t, s) = ψ(x, t, s) − x + ε(t − s)x (the exact jump plus an error that vanishes at s = t), so
  u_θ(x, s) = F(x, s, s) = (κ(s) − ε)x.

For either, the jump t → s is x ↦ g(t, s)x + h(t, s), ∂_s f = ġ(t, s)x + ḣ(t, s) and u_θ = k(s)x + m(s). The sampler
from X_0 ~ N(0, 1) has X_k = α_k X_0 + c_k, so q_k = N(c_k, α_k²); the reference is Z_k = σ_{t_k} X_0 (σ_1 = 1). The
terminal residual of jump k at σ is P_k(σ)x + Q_k(σ) with P = ġ − k g, Q = ḣ − k h − m, so under q_k
A_N(σ) = (P c_k + Q)² + P² α_k²; under p_{t_k} = N(0, σ_{t_k}²) it is Q² + P² σ_{t_k}² (the loss's A_{t_k}(σ)).
B(σ) = E_{p_σ}(u_θ − u)² = (k − κ)² σ_σ² + m². L(σ) = |k(σ)|.
"""
import mpmath as mp


def sd(s, sig0):
    return mp.sqrt((1 - s) ** 2 * sig0**2 + s**2)


def kappa(s, sig0):
    return (s - (1 - s) * sig0**2) / sd(s, sig0) ** 2


class Model:
    """One affine model: ``family`` in {"euler", "flow_eps"}, parameter ``p`` (r or ε), data std ``sig0``."""

    def __init__(self, family, p, sig0):
        if family not in ("euler", "flow_eps"):
            raise ValueError(family)
        self.family, self.p, self.sig0 = family, mp.mpf(p), mp.mpf(sig0)

    def jump(self, t, s):
        """(g, h, ġ, ḣ): x + f_θ(x, t, s) = g x + h and ∂_s f_θ = ġ x + ḣ."""
        k, p = self.sig0, self.p
        if self.family == "euler":
            kt = kappa(t, k)
            return 1 + (s - t) * kt, (s - t) * p, kt, p
        ratio = sd(s, k) / sd(t, k)
        return ratio + p * (t - s), mp.mpf(0), kappa(s, k) * ratio - p, mp.mpf(0)

    def velocity(self, s):
        """(k, m): u_θ(x, s) = k x + m."""
        if self.family == "euler":
            return kappa(s, self.sig0), self.p
        return kappa(s, self.sig0) - self.p, mp.mpf(0)

    def lip(self, s):
        return abs(self.velocity(s)[0])

    def residual(self, t, s):
        """(P, Q): ∂_s f_θ(x, t, s) − u_θ(x + f_θ(x, t, s), s) = P x + Q."""
        g, h, dg, dh = self.jump(t, s)
        k, m = self.velocity(s)
        return dg - k * g, dh - k * h - m

    def b(self, s):
        k, m = self.velocity(s)
        return (k - kappa(s, self.sig0)) ** 2 * sd(s, self.sig0) ** 2 + m**2


def states(model, grid):
    """[(α_k, c_k)] for k = 0…N: X_k = α_k X_0 + c_k."""
    out = [(mp.mpf(1), mp.mpf(0))]
    for a, b in zip(grid[:-1], grid[1:]):
        g, h, _, _ = model.jump(a, b)
        al, c = out[-1]
        out.append((g * al, g * c + h))
    return out


def node_errors(model, grid):
    """E_k = ‖X_k − Z_k‖_{L²} = sqrt((α_k − σ_{t_k})² + c_k²), exact."""
    return [mp.sqrt((al - sd(t, model.sig0)) ** 2 + c**2) for t, (al, c) in zip(grid, states(model, grid))]


def w2_exact(model, grid):
    """W2(q_N, p0) = sqrt((|α_N| − σ0)² + c_N²) (1-D Gaussians)."""
    al, c = states(model, grid)[-1]
    return mp.sqrt((abs(al) - model.sig0) ** 2 + c**2)


def _shift(model):
    """e with u_θ's slope k(s) = κ(s) − e (e = 0 for ``euler``, ε for ``flow_eps``)."""
    return mp.mpf(0) if model.family == "euler" else model.p


def _kinks(model, lo, hi):
    """Zeros of k(s) = κ(s) − e in (lo, hi), where L = |k| has its kinks. With a = 1 + σ0², τ* = σ0²/a and
    v = s − τ*: σ_s² = a v² + σ0²/a and c = a v, so κ = e reads e a v² − a v + e σ0²/a = 0 (a quadratic in v)."""
    k, e = model.sig0, _shift(model)
    a, tau = 1 + k**2, k**2 / (1 + k**2)
    if e == 0:
        roots = [mp.mpf(0)]
    else:
        disc = a**2 - 4 * e**2 * k**2
        roots = [] if disc < 0 else [(a + sg * mp.sqrt(disc)) / (2 * e * a) for sg in (-1, 1)]
    return sorted(tau + v for v in roots if lo < tau + v < hi)


def int_lip(model, lo, hi):
    """∫_lo^hi L in closed form: on a piece where k = κ − e keeps its sign, ∫k = log(σ_hi/σ_lo) − e(hi − lo)
    (κ = d log σ_s/ds); L = |k|."""
    pts = [lo, *_kinks(model, lo, hi), hi]
    e, k = _shift(model), model.sig0
    return sum(abs(mp.log(sd(b, k) / sd(a, k)) - e * (b - a)) for a, b in zip(pts[:-1], pts[1:]))


def quad(f, lo, hi, kinks=()):
    return mp.quad(f, [lo, *sorted(kinks), hi])


def residual_zeros(model, t, lo, hi, n=16):
    """Zeros of σ ↦ P(σ) (the residual's slope for a jump from t) in (lo, hi): sign changes on n + 1 points, refined
    by the Illinois method. |P| — and √A where Q vanishes too — has a kink there, so quadrature splits at them."""
    f = lambda s: model.residual(t, s)[0]  # noqa: E731
    xs = [lo + (hi - lo) * mp.mpf(i) / n for i in range(n + 1)]
    vals = [f(x) for x in xs]
    out = []
    for a, b, fa, fb in zip(xs[:-1], xs[1:], vals[:-1], vals[1:]):
        if fa == 0 and lo < a:
            out.append(a)
        elif fa * fb < 0:
            out.append(mp.findroot(f, (a, b), solver="illinois"))
    return out


def split_points(model, grid, k):
    """Where jump k's integrands may have kinks on (t_{k+1}, t_k): zeros of κ − e and of P."""
    lo, hi = grid[k + 1], grid[k]
    return sorted(set(_kinks(model, lo, hi)) | {z for z in residual_zeros(model, grid[k], lo, hi) if lo < z < hi})


def sqrt_a_q(model, grid, k, sigma):
    """√A_N(σ) for jump k: under the sampler's law q_k = N(c_k, α_k²)."""
    al, c = states(model, grid)[k]
    P, Q = model.residual(grid[k], sigma)
    return mp.sqrt((P * c + Q) ** 2 + P**2 * al**2)


def sqrt_a_p(model, grid, k, sigma):
    """√A_{t_k}(σ): the same residual under p_{t_k} = N(0, σ_{t_k}²) — what the training loss sees."""
    P, Q = model.residual(grid[k], sigma)
    return mp.sqrt(Q**2 + P**2 * sd(grid[k], model.sig0) ** 2)


def jump_terms(model, grid, k, *, under="q", transport=True):
    """(Γ_k, δ_k, m_k) for jump k on [t_{k+1}, t_k]: Γ_k = e^{∫L}, δ_k = ∫ e^{∫_{t_{k+1}}^σ L}(√A + √B) dσ with A
    under q_k (``under="q"``) or p_{t_k} ("p"), and m_k = ∫ e^{∫_{t_{k+1}}^σ L}|P_k(σ)| dσ (the residual's x-Lipschitz
    constant, transported; unused by the checks). ``transport=False`` replaces e^{∫L} by 1 (a planted error)."""
    lo, hi = grid[k + 1], grid[k]
    kinks = split_points(model, grid, k)
    if transport:
        def weight(s):
            return mp.exp(int_lip(model, lo, s))
    else:
        def weight(s):
            return mp.mpf(1)
    sa = sqrt_a_q if under == "q" else sqrt_a_p
    gamma = weight(hi)
    delta = quad(lambda s: weight(s) * (sa(model, grid, k, s) + mp.sqrt(model.b(s))), lo, hi, kinks)
    m = quad(lambda s: weight(s) * abs(model.residual(grid[k], s)[0]), lo, hi, kinks)
    return gamma, delta, m


def bound_a(model, grid, *, under="q", transport=True):
    """Few-step (a): E_N ≤ Σ_k Π_{j>k} Γ_j δ_k (= ∫λ(√A_N + √B)); returns (bound, [bound on E_k])."""
    e, out = mp.mpf(0), [mp.mpf(0)]
    for k in range(len(grid) - 1):
        g, d, _ = jump_terms(model, grid, k, under=under, transport=transport)
        e = g * e + d
        out.append(e)
    return e, out


def bound_a_direct(model, grid):
    """∫_0^1 λ(σ)(√A_N(σ) + √B(σ)) dσ with λ = exp∫_0^σ L, summed over the jumps (no recursion)."""
    total = mp.mpf(0)
    for k in range(len(grid) - 1):
        lo, hi = grid[k + 1], grid[k]
        lam = lambda s: mp.exp(int_lip(model, 0, s))  # noqa: E731
        total += quad(lambda s: lam(s) * (sqrt_a_q(model, grid, k, s) + mp.sqrt(model.b(s))), lo, hi,
                      split_points(model, grid, k))
    return total


def bound_b(model, grid):
    """Few-step (b): 2 Λ_1 ∫_0^1 λ(A_N + B) dσ."""
    kinks = _kinks(model, 0, 1)
    lam = lambda s: mp.exp(int_lip(model, 0, s))  # noqa: E731
    big = quad(lam, 0, 1, kinks)
    inner = mp.mpf(0)
    for k in range(len(grid) - 1):
        lo, hi = grid[k + 1], grid[k]
        inner += quad(lambda s: lam(s) * (sqrt_a_q(model, grid, k, s) ** 2 + model.b(s)), lo, hi,
                      split_points(model, grid, k))
    return 2 * big * inner


def bound_jump_lipschitz(model, grid):
    """Variant (v), the loss-side recursion: E_{k+1} ≤ Lip(Φ_k) E_k + δ_k^p, with Φ_k the jump map x ↦ g x + h
    (Lip = |g(t_k, t_{k+1})|) and δ_k^p = ∫ e^{∫_{t_{k+1}}^σ L}(√A_{t_k} + √B) dσ, A under p_{t_k} (the quantity the
    training loss estimates). Returns (bound, [bounds on E_k])."""
    e, out = mp.mpf(0), [mp.mpf(0)]
    for k in range(len(grid) - 1):
        _, d, _ = jump_terms(model, grid, k, under="p")
        e = abs(model.jump(grid[k], grid[k + 1])[0]) * e + d
        out.append(e)
    return e, out


def ag_identity(model, grid, x0):
    """(X_N − Z_N, −Σ_k ∫ ∂_xψ(y(σ), σ, 0) ρ(σ) dσ) for one starting point x0 = X_0, with ∂_xψ(·, σ, 0) = σ0/σ_σ
    and ρ = ∂_s f_θ(X_k, t_k, σ) − u(y(σ), σ) along the concatenated path."""
    x0 = mp.mpf(x0)
    sts = states(model, grid)
    total = mp.mpf(0)
    for k in range(len(grid) - 1):
        xk = sts[k][0] * x0 + sts[k][1]

        def integrand(s, k=k, xk=xk):
            g, h, dg, dh = model.jump(grid[k], s)
            y = g * xk + h
            rho = dg * xk + dh - kappa(s, model.sig0) * y
            return model.sig0 / sd(s, model.sig0) * rho
        total += quad(integrand, grid[k + 1], grid[k], split_points(model, grid, k))
    al, c = sts[-1]
    return al * x0 + c - model.sig0 * x0, -total
