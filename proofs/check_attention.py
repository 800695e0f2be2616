"""docs/THEORY.md §9: attention under forward-mode AD — the tangent, the six backward formulas, the flash recurrence.

With α the scale, S = QKᵀ, P = softmax_row(αS), O = PV and tangents Q̇, K̇, V̇, the claims are
  Ȯ = PV̇ + (P ⊙ N)V with N = αṠ − μ1ᵀ, Ṡ = Q̇Kᵀ + QK̇ᵀ, μ_i = Σ_j P_ij αṠ_ij;
and for the loss ℓ = ⟨G, Ȯ⟩ + ⟨dO, O⟩ (upstream G on the tangent, dO on the primal output)
  dṠ = αP ⊙ (GVᵀ − Σ1 1ᵀ),  dS = αP ⊙ (GV̇ᵀ + GVᵀ ⊙ N − Σ1 1ᵀ ⊙ N − Σ2 1ᵀ) + αP ⊙ (dO Vᵀ − δ1ᵀ),
  dQ̇ = dṠK, dK̇ = dṠᵀQ, dQ = dṠK̇ + dSK, dK = dṠᵀQ̇ + dSᵀQ, dV̇ = PᵀG, dV = (P ⊙ N)ᵀG + PᵀdO,
with Σ1_i = Σ_j P_ij(GVᵀ)_ij = G_i·O_i, Σ2_i = Σ_j P_ij[(GV̇ᵀ)_ij + (GVᵀ)_ij N_ij] = G_i·Ȯ_i and
δ_i = dO_i·O_i (the ordinary flash-attention backward). Reference: exact sympy differentiation of the plain formula
on 2 queries × 3 keys × head dim 2 (all 70 inputs symbolic), evaluated at a random rational point to 50 digits.
The online-softmax forward over key blocks (running max, normaliser, ΣeV, ΣeV̇, Σ(e⊙αṠ)V, Σe⊙αṠ) is checked
against the direct formula.
"""
import random

import mpmath as mp
import sympy as sp

from proofs._report import Report

NQ, NK, HD = 2, 3, 2
DIGITS = 50
TOL = mp.mpf(10) ** -40


def sym_matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def softmax_rows(z: sp.Matrix) -> sp.Matrix:
    e = z.applyfunc(sp.exp)
    return sp.Matrix(z.rows, z.cols, lambda i, j: e[i, j] / sum(e[i, k] for k in range(z.cols)))


def attention(q, k, v, alpha):
    return softmax_rows(alpha * q * k.T) * v


def hadamard(a: mp.matrix, b: mp.matrix) -> mp.matrix:
    return mp.matrix([[a[i, j] * b[i, j] for j in range(a.cols)] for i in range(a.rows)])


def row_dot(a: mp.matrix, b: mp.matrix) -> list:
    return [mp.fsum(a[i, j] * b[i, j] for j in range(a.cols)) for i in range(a.rows)]


def minus_rows(a: mp.matrix, vec: list) -> mp.matrix:
    return mp.matrix([[a[i, j] - vec[i] for j in range(a.cols)] for i in range(a.rows)])


def max_abs(a: mp.matrix) -> mp.mpf:
    return max(abs(a[i, j]) for i in range(a.rows) for j in range(a.cols))


def main() -> None:
    rep = Report("check_attention (docs/THEORY.md §9, attention JVP and its backward)")
    mp.mp.dps = DIGITS
    alpha = sp.Symbol("alpha", positive=True)
    names = {"Q": (NQ, HD), "K": (NK, HD), "V": (NK, HD), "Qd": (NQ, HD), "Kd": (NK, HD), "Vd": (NK, HD),
             "G": (NQ, HD), "dO": (NQ, HD)}
    m = {n: sym_matrix(n, *shape) for n, shape in names.items()}
    eps = sp.Symbol("eps", real=True)
    out = attention(m["Q"], m["K"], m["V"], alpha)
    moved = attention(m["Q"] + eps * m["Qd"], m["K"] + eps * m["Kd"], m["V"] + eps * m["Vd"], alpha)
    out_dot = moved.diff(eps).subs(eps, 0)  # the exact JVP
    loss = sum(m["G"][i, j] * out_dot[i, j] + m["dO"][i, j] * out[i, j] for i in range(NQ) for j in range(HD))

    rng = random.Random(20261126)
    syms = [sym for mat in m.values() for sym in mat] + [alpha]
    values = [mp.mpf(rng.randint(-12, 12)) / 8 for _ in syms[:-1]] + [1 / mp.sqrt(HD)]
    num = {}
    for n, mat in m.items():
        num[n] = mp.matrix(mat.rows, mat.cols)
        for idx, sym in enumerate(mat):
            num[n][idx // mat.cols, idx % mat.cols] = values[syms.index(sym)]
    a = values[-1]

    def evaluate(expr: sp.Matrix) -> mp.matrix:  # exact expression evaluated in 50-digit arithmetic
        return mp.matrix(sp.lambdify(syms, expr, "mpmath")(*values).tolist())

    ref_o, ref_odot = evaluate(out), evaluate(out_dot)
    ref_grad = {n: evaluate(sp.Matrix(*names[n], lambda i, j: sp.diff(loss, m[n][i, j])))
                for n in ("Q", "K", "V", "Qd", "Kd", "Vd")}

    # The formulas of docs/THEORY.md §9, in mpmath, with no differentiation.
    q, k, v, qd, kd, vd, g, do = (num[n] for n in ("Q", "K", "V", "Qd", "Kd", "Vd", "G", "dO"))
    s_mat = q * k.T
    p = mp.matrix(NQ, NK)
    for i in range(NQ):
        z = [a * s_mat[i, j] for j in range(NK)]
        top = max(z)
        norm = mp.fsum(mp.exp(zj - top) for zj in z)
        for j in range(NK):
            p[i, j] = mp.exp(z[j] - top) / norm
    o = p * v
    s_dot = qd * k.T + q * kd.T
    mu = row_dot(p, a * s_dot)
    n_mat = minus_rows(a * s_dot, mu)
    o_dot = p * vd + hadamard(p, n_mat) * v
    rep.check("O = softmax(αQKᵀ)V", max_abs(o - ref_o) < TOL, f"max error {mp.nstr(max_abs(o - ref_o), 2)}")
    rep.check("Ȯ = PV̇ + (P ⊙ (αṠ − μ1ᵀ))V", max_abs(o_dot - ref_odot) < TOL,
              f"max error {mp.nstr(max_abs(o_dot - ref_odot), 2)}")

    gvt, gvdt = g * v.T, g * vd.T
    sig1 = row_dot(p, gvt)
    sig2 = row_dot(p, gvdt + hadamard(gvt, n_mat))
    rep.check("Σ1_i = G_i·O_i", max(abs(x - y) for x, y in zip(sig1, row_dot(g, o))) < TOL)
    rep.check("Σ2_i = G_i·Ȯ_i", max(abs(x - y) for x, y in zip(sig2, row_dot(g, o_dot))) < TOL)
    d_sdot = a * hadamard(p, minus_rows(gvt, sig1))
    sig1_n = mp.matrix([[sig1[i] * n_mat[i, j] for j in range(NK)] for i in range(NQ)])
    d_s_tangent = a * hadamard(p, minus_rows(gvdt + hadamard(gvt, n_mat) - sig1_n, sig2))
    d_s_primal = a * hadamard(p, minus_rows(do * v.T, row_dot(do, o)))  # ordinary flash backward
    d_s = d_s_tangent + d_s_primal
    formulas = {
        "Qd": ("dQ̇ = dṠK", d_sdot * k),
        "Kd": ("dK̇ = dṠᵀQ", d_sdot.T * q),
        "Q": ("dQ = dṠK̇ + dSK", d_sdot * kd + d_s * k),
        "K": ("dK = dṠᵀQ̇ + dSᵀQ", d_sdot.T * qd + d_s.T * q),
        "Vd": ("dV̇ = PᵀG", p.T * g),
        "V": ("dV = (P ⊙ N)ᵀG + PᵀdO", hadamard(p, n_mat).T * g + p.T * do),
    }
    for name, (label, value) in formulas.items():
        err = max_abs(value - ref_grad[name])
        rep.check(label + " (with dS, dṠ as stated)", err < TOL, f"max error {mp.nstr(err, 2)} vs exact sympy gradient")

    check_online_softmax(rep, q, k, v, qd, kd, vd, a, o, o_dot, mu)
    rep.finish()


def check_online_softmax(rep, q, k, v, qd, kd, vd, a, o, o_dot, mu) -> None:
    """Blocked forward: per query row carry max m, l = Σe, ΣeV, ΣeV̇, Σ(e αṠ)V, Σ e αṠ over key blocks {0}, {1, 2},
    rescaling by exp(m_old − m_new) when the max grows; then O = ΣeV/l, μ = Σe αṠ/l, Ȯ = (ΣeV̇ + Σ(e αṠ)V)/l − μO."""
    worst = mp.mpf(0)
    for i in range(NQ):
        run_max, norm, acc_v, acc_vd, acc_sv, acc_s = -mp.inf, mp.mpf(0), [0] * HD, [0] * HD, [0] * HD, mp.mpf(0)
        for block in ([0], [1, 2]):
            z = {j: a * mp.fsum(q[i, d] * k[j, d] for d in range(HD)) for j in block}
            zd = {j: a * mp.fsum(qd[i, d] * k[j, d] + q[i, d] * kd[j, d] for d in range(HD)) for j in block}
            new_max = max(run_max, max(z.values()))
            scale = mp.exp(run_max - new_max)
            e = {j: mp.exp(z[j] - new_max) for j in block}
            norm = norm * scale + mp.fsum(e.values())
            acc_s = acc_s * scale + mp.fsum(e[j] * zd[j] for j in block)
            for d in range(HD):
                acc_v[d] = acc_v[d] * scale + mp.fsum(e[j] * v[j, d] for j in block)
                acc_vd[d] = acc_vd[d] * scale + mp.fsum(e[j] * vd[j, d] for j in block)
                acc_sv[d] = acc_sv[d] * scale + mp.fsum(e[j] * zd[j] * v[j, d] for j in block)
            run_max = new_max
        mu_i = acc_s / norm
        worst = max(worst, abs(mu_i - mu[i]))
        for d in range(HD):
            o_id = acc_v[d] / norm
            worst = max(worst, abs(o_id - o[i, d]), abs((acc_vd[d] + acc_sv[d]) / norm - mu_i * o_id - o_dot[i, d]))
    rep.check("online-softmax recurrence over two key blocks gives O, μ and Ȯ", worst < TOL,
              f"max error {mp.nstr(worst, 2)}")


if __name__ == "__main__":
    main()
