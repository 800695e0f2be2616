"""Exact expectations of polynomials in independent standard normals (used by several check scripts).

E[z^k] = 0 for odd k and (k − 1)!! for even k; independence makes mixed moments products. This is the whole of
the probability the symbolic checks need, so no sampling enters them.
"""
import sympy as sp


def normal_moment(k: int) -> int:
    """E[z^k] for z ~ N(0, 1): 0 for odd k, (k − 1)!! for even k."""
    if k < 0:
        raise ValueError(f"moment order k must be >= 0, got {k}")
    if k % 2:
        return 0
    return int(sp.factorial2(k - 1)) if k else 1


def expect(expr, normals):
    """E[expr] where ``normals`` are independent N(0, 1) symbols and expr is polynomial in them."""
    poly = sp.Poly(sp.expand(expr), *normals)
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        weight = 1
        for k in powers:
            weight *= normal_moment(k)
        total += coeff * weight
    return sp.simplify(total)
