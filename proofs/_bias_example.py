"""The counterexample of docs/THEORY.md §4 in mpmath: p0 = N(0, σ0²) and the model u_θ = u + r (constant bias).

Closed forms (derived in proofs/README.md §3, checked symbolically in check_counterexample.py), with a = 1 + σ0²,
κ(s) = c(s)/σ_s², τ* = σ0²/a the zero of κ (κ < 0 before it, > 0 after), J(s) = asinh((a s − σ0²)/σ0)/√a an
antiderivative of 1/σ_s:
  mean offset of the model's one-step law   m_t = r σ0 (J(t) − J(0)),   std ratio 1,   W2² = m_t²;
  λ(s) = exp∫_0^s|κ| = σ0/σ_s (s ≤ τ*),  a σ_s/σ0 (s ≥ τ*).
Two routes to each number. The closed forms at t = 1 are also evaluated in mpmath's interval arithmetic
(``enclosures_t1``), which rounds outward, so the printed intervals contain the exact values of the closed forms.
The ODE route (mpmath's Taylor-series solver ``odefun``) is run by the callers at two working precisions; the gap
between the two runs and the distance to the closed form show that the routes agree, and bound nothing rigorously.
"""
import mpmath as mp

PRECISIONS = (15, 22)
"""Working precisions (decimal digits) at which callers run every ODE; their disagreement estimates its error."""


def sd(s, sig0):
    """σ_s = sqrt((1 − s)²σ0² + s²)."""
    return mp.sqrt((1 - s) ** 2 * sig0**2 + s**2)


def kappa(s, sig0):
    """κ(s) = (s − (1 − s)σ0²)/σ_s², the slope of u(x, s) = κ(s)x (docs/THEORY.md §4)."""
    return (s - (1 - s) * sig0**2) / sd(s, sig0) ** 2


def tau_star(sig0):
    """The sign change of κ: κ ≤ 0 on [0, τ*], κ ≥ 0 on [τ*, 1]."""
    return sig0**2 / (1 + sig0**2)


def antideriv_inv_sd(s, sig0):
    """J(s) = asinh((a s − σ0²)/σ0)/√a with a = 1 + σ0², so J′ = 1/σ_s."""
    a = 1 + sig0**2
    return mp.asinh((a * s - sig0**2) / sig0) / mp.sqrt(a)


def w2sq_closed(sig0, r, t):
    """Exact W2²(law of x_t + f_θ(x_t, t, 0), p0) = m_t² for the bias model."""
    return (r * sig0 * (antideriv_inv_sd(t, sig0) - antideriv_inv_sd(0, sig0))) ** 2


def int_lambda_closed(sig0, t):
    """Λ_t = ∫_0^t λ(s) ds with λ = exp∫_0^s |κ|, from the piecewise closed form of λ."""
    a, ts = 1 + sig0**2, tau_star(sig0)
    if t <= ts:
        return sig0 * (antideriv_inv_sd(t, sig0) - antideriv_inv_sd(0, sig0))
    first = sig0 * (antideriv_inv_sd(ts, sig0) - antideriv_inv_sd(0, sig0))
    width, half = t - ts, sig0 / a  # σ_s = √a sqrt((s − τ*)² + half²)
    integral_sd = mp.sqrt(a) * (width / 2 * mp.sqrt(width**2 + half**2) + half**2 / 2 * mp.asinh(width / half))
    return first + a / sig0 * integral_sd


def one_step_law_ode(sig0, r, t):
    """Solve y′ = κ(s)y + r backwards from s = t to 0 by Taylor series: y(0) = α y(t) + β.

    Returns (W2², α, β): x_t ~ N(0, σ_t²) maps to N(β, α²σ_t²), whose W2² to N(0, σ0²) is β² + (ασ_t − σ0)².
    """
    # τ = t − s runs forward from 0 to t; state (homogeneous solution, particular solution).
    sol = mp.odefun(lambda tau, y: [-kappa(t - tau, sig0) * y[0], -(kappa(t - tau, sig0) * y[1] + r)],
                    0, [mp.mpf(1), mp.mpf(0)])
    alpha, beta = sol(t)
    return beta**2 + (alpha * sd(t, sig0) - sig0) ** 2, alpha, beta


def int_lambda_ode(sig0, t):
    """Λ_t by ODE: ℓ′ = |κ|, Λ′ = e^ℓ, split at τ* where |κ| has its kink (smooth on each piece)."""
    pieces = [(mp.mpf(0), min(t, tau_star(sig0)), -1)]
    if t > tau_star(sig0):
        pieces.append((tau_star(sig0), t, 1))
    state = [mp.mpf(0), mp.mpf(0)]
    for start, end, sign in pieces:
        sol = mp.odefun(lambda s, y, sign=sign: [sign * kappa(s, sig0), mp.exp(y[0])], start, state)
        state = sol(end)
    return state[1]


def bound_c_ode(sig0, r, t):
    """Bound (c) for the bias model (A ≡ 0, B ≡ r²): 3t r² ∫_0^t exp(3∫_0^ρ κ(v)²(t − v) dv) dρ, by ODE."""
    sol = mp.odefun(lambda s, y: [3 * kappa(s, sig0) ** 2 * (t - s), mp.exp(y[0])], 0, [mp.mpf(0), mp.mpf(0)])
    return 3 * t * r**2 * sol(t)[1]


def enclosures_t1(sig0, r, dps: int = 30):
    """Intervals (``mpmath.iv``) that contain W2² = m_1² and Λ_1 at t = 1, from their closed forms.

    ``sig0`` and ``r`` are given as ints or decimal strings ("0.1"), so that they too become enclosing intervals.
    m_1 = rσ0(asinh σ0 + asinh(1/σ0))/√a and Λ_1 = σ0 asinh(σ0)/√a + 1/(2σ0) + σ0 asinh(1/σ0)/(2√a), a = 1 + σ0²,
    with asinh x = log(x + √(x² + 1)) (``mpmath.iv`` has no asinh).
    """
    iv = mp.iv
    iv.dps = dps
    sig0, r = iv.mpf(sig0), iv.mpf(r)
    root_a = iv.sqrt(1 + sig0**2)

    def asinh(v):
        return iv.log(v + iv.sqrt(v * v + 1))

    m1 = r * sig0 * (asinh(sig0) + asinh(1 / sig0)) / root_a
    lam1 = sig0 * asinh(sig0) / root_a + 1 / (2 * sig0) + sig0 * asinh(1 / sig0) / (2 * root_a)
    return m1 * m1, lam1
