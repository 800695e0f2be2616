"""Closed-form affine jump models on the Gaussian test bed: the §4 counterexample family and random affine models.

An affine jump model has, for isotropic scalars a, ȧ, k and vectors b, ḃ, m (docs/THEORY.md §2, §5):

    x + f_θ(x, t, s) = a(t, s) x + b(t, s),   ∂_s f_θ(x, t, s) = ȧ(t, s) x + ḃ(t, s),   u_θ(x, s) = k(s) x + m(s).

It keeps Gaussians Gaussian, so on ``Gaussian`` every quantity of the bound (A, B, D_t, W2) is exact
(``tvm_theory.analysis.bounds.exact_affine_report``); its velocity is exactly |k(s)|-Lipschitz.

**Biased exact flow** (docs/THEORY.md §4): u_θ = u + r with a constant r and f_θ the exact flow of u_θ. With
w = z − (1 − s)μ the ODE dz/ds = u(z, s) + r reads dw/ds = κ(s) w + r, whose integrating factor is σ_s
(κ = d log σ_s/ds), so

    ψ_θ(x, t, s) = ψ(x, t, s) + σ_s (G(s) − G(t)) r,    G(s) = ∫ ds/σ_s = asinh(((σ0² + 1)s − σ0²)/σ0) / √(σ0² + 1),

(σ_s² = (σ0² + 1)(s − σ0²/(σ0² + 1))² + σ0²/(σ0² + 1), an asinh integral). Hence A ≡ 0, B ≡ ‖r‖² and the
jump's law at t is p0 shifted by σ0 (G(0) − G(t)) r.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ...checks import as_batch_time, check_finite, expand_like
from .gaussian import Gaussian


class AffineJump(ABC):
    """Base of the affine jump models; a :class:`tvm_theory.param.JumpModel`.

    Subclasses give ``jump_coefficients(t, s) -> (a, b, ȧ, ḃ)`` and ``velocity_coefficients(s) -> (k, m)`` for
    time tensors of shape (B,) (a, ȧ, k of shape (B,); b, ḃ, m of shape (B, D)).
    """

    dim: int

    @abstractmethod
    def jump_coefficients(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a, b, ȧ, ḃ) with x + f_θ(x, t, s) = a x + b and ∂_s f_θ = ȧ x + ḃ."""

    @abstractmethod
    def velocity_coefficients(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """(k, m) with u_θ(x, s) = k x + m."""

    def lipschitz(self, s) -> Tensor:
        """The exact Lipschitz constant of x ↦ u_θ(x, s): |k(s)|."""
        s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
        return self.velocity_coefficients(s)[0].abs()

    def _check(self, x: Tensor) -> None:
        check_finite("x", x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, {self.dim}), got {tuple(x.shape)}")

    def displacement(self, x: Tensor, t, s) -> Tensor:
        self._check(x)
        a, b, _, _ = self.jump_coefficients(as_batch_time("t", t, x), as_batch_time("s", s, x))
        return (expand_like(a, x) - 1) * x + b

    def displacement_and_ds(self, x: Tensor, t, s) -> tuple[Tensor, Tensor]:
        self._check(x)
        a, b, da, db = self.jump_coefficients(as_batch_time("t", t, x), as_batch_time("s", s, x))
        return (expand_like(a, x) - 1) * x + b, expand_like(da, x) * x + db

    def velocity(self, x: Tensor, s) -> Tensor:
        self._check(x)
        k, m = self.velocity_coefficients(as_batch_time("s", s, x))
        return expand_like(k, x) * x + m


class BiasedFlowJump(AffineJump):
    """u_θ = u + r and f_θ the exact flow of u_θ, on a :class:`Gaussian` (docs/THEORY.md §4's counterexample family).

    Args:
        bed: the Gaussian test bed (any dimension, isotropic).
        bias: r, a float (every coordinate) or shape (D,).
    """

    def __init__(self, bed: Gaussian, bias):
        if not isinstance(bed, Gaussian):
            raise TypeError(f"bed: expected a Gaussian test bed, got {type(bed).__name__}")
        r = torch.as_tensor(bias, dtype=bed.dtype, device=bed.device)
        r = r.expand(bed.dim).clone() if r.ndim == 0 else r
        if r.shape != (bed.dim,):
            raise ValueError(f"bias: expected a float or shape ({bed.dim},), got {tuple(r.shape)}")
        check_finite("bias", r)
        self.bed, self.bias, self.dim = bed, r, bed.dim

    def G(self, s):
        """G(s) = ∫ ds/σ_s = asinh(((σ0² + 1)s − σ0²)/σ0)/√(σ0² + 1)."""
        v = self.bed.std**2
        return torch.asinh(((v + 1) * torch.as_tensor(s, dtype=torch.float64) - v) / self.bed.std) / (v + 1) ** 0.5

    def jump_coefficients(self, t, s):
        mu, r = self.bed.mean, self.bias
        sig_s, sig_t, kap = self.bed.sigma(s), self.bed.sigma(t), self.bed.kappa(s)
        a = sig_s / sig_t
        shift = (sig_s * (self.G(s) - self.G(t)).to(s.dtype))[:, None]
        b = (1 - s)[:, None] * mu - (a * (1 - t))[:, None] * mu + shift * r
        # ∂_s ψ_θ = u_θ(ψ_θ, s) = κ(s)(ψ_θ − (1 − s)μ) − μ + r
        return a, b, kap * a, kap[:, None] * (b - (1 - s)[:, None] * mu) - mu + r

    def velocity_coefficients(self, s):
        kap = self.bed.kappa(s)
        return kap, -self.bed.mean - (kap * (1 - s))[:, None] * self.bed.mean + self.bias


class PolynomialAffineJump(AffineJump):
    """A generic affine model, used to test the bound chain with exact quantities (docs/THEORY.md §6):

        f_θ(x, t, s) = (s − t)[α(t, s) x + β(t, s)],  α = α0 + α1 s + α2 t,  β = β0 + β1 s + β2 t,
        u_θ(x, s) = (k0 + k1 s) x + m0 + m1 s,

    so f_θ(x, t, t) = 0 (A2) and u_θ is |k0 + k1 s|-Lipschitz. u_θ need not be the velocity of the jump.

    Args:
        alpha: (α0, α1, α2); beta: shape (3, D); k: (k0, k1); m: shape (2, D).
    """

    def __init__(self, alpha, beta, k, m, *, dtype: torch.dtype = torch.float64):
        self.alpha = torch.as_tensor(alpha, dtype=dtype)
        self.beta = torch.as_tensor(beta, dtype=dtype)
        self.k = torch.as_tensor(k, dtype=dtype)
        self.m = torch.as_tensor(m, dtype=dtype)
        if self.alpha.shape != (3,) or self.k.shape != (2,):
            raise ValueError(f"alpha, k: expected shapes (3,), (2,), got {tuple(self.alpha.shape)}, "
                             f"{tuple(self.k.shape)}")
        if self.beta.ndim != 2 or self.beta.shape[0] != 3 or self.m.shape != (2, self.beta.shape[1]):
            raise ValueError(f"beta, m: expected shapes (3, D), (2, D), got {tuple(self.beta.shape)}, "
                             f"{tuple(self.m.shape)}")
        for name in ("alpha", "beta", "k", "m"):
            check_finite(name, getattr(self, name))
        self.dim = self.beta.shape[1]

    @classmethod
    def random(cls, dim: int, generator: torch.Generator | None = None, scale: float = 0.5):
        """Coefficients i.i.d. N(0, scale²)."""
        def draw(*shape):
            return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
        return cls(draw(3), draw(3, dim), draw(2), draw(2, dim))

    def jump_coefficients(self, t, s):
        a0, a1, a2 = self.alpha.to(s.dtype)
        beta = self.beta.to(s.dtype)
        alpha = a0 + a1 * s + a2 * t
        b_coef = beta[0] + s[:, None] * beta[1] + t[:, None] * beta[2]
        gap = s - t
        return 1 + gap * alpha, gap[:, None] * b_coef, alpha + gap * a1, b_coef + gap[:, None] * beta[1]

    def velocity_coefficients(self, s):
        k, m = self.k.to(s.dtype), self.m.to(s.dtype)
        return k[0] + k[1] * s, m[0] + s[:, None] * m[1]
