"""A latent-scale Gaussian-mixture test bed with low-rank-plus-isotropic covariances (docs/THEORY.md §1, §2, §7).

p0 = Σ_k π_k N(m_k, Σ_k) on R^D with Σ_k = F_k F_kᵀ + τ² I, F_k of shape (D, r), τ > 0. Component k is class k:
p0(· | k) = N(m_k, Σ_k). Everything below is exact and never forms a D × D matrix.

**Eigenbasis.** With the thin SVD F_k = U_k diag(s_k) V_kᵀ (U_k of shape (D, r), orthonormal columns), Σ_k has the
eigenvalues λ_kj = s_kj² + τ² on span(U_k) and τ² on its complement. Given class k, x_t ~ N((1 − t) m_k, C_k) with
C_k = (1 − t)² Σ_k + t² I (docs/THEORY.md §7), whose eigenvalues are a²λ_kj + t² on span(U_k) and c = a²τ² + t² on
the complement (a = 1 − t). This is the Woodbury identity in its simplest form: C_k⁻¹ = c⁻¹ I + U_k diag(1/(a²λ + t²)
− 1/c) U_kᵀ. With z_k = x − a m_k and y_k = U_kᵀ z_k (shape r):

* u(x, t | k) = E[x1 − x0 | x_t = x, k] = (t I − a Σ_k) C_k⁻¹ z_k − m_k
  = κ⊥ z_k + U_k ((κ_k − κ⊥) ⊙ y_k) − m_k, with κ⊥ = (t − aτ²)/c and κ_kj = (t − aλ_kj)/(a²λ_kj + t²);
* log N(x; a m_k, C_k) = −½ [(‖z_k‖² − ‖y_k‖²)/c + Σ_j y_kj²/(a²λ_kj + t²) + Σ_j log(a²λ_kj + t²)
  + (D − r) log c + D log 2π], with ‖z_k‖² = ‖x‖² − 2a x·m_k + a²‖m_k‖²;
* the posterior class weights w_k(x) ∝ π_k N(x; a m_k, C_k) (log space) and the marginal velocity
  u(x, t) = Σ_k w_k(x) u(x, t | k);
* the guided field (docs/THEORY.md §2, §3 item 5) u^w(x, t | k) = w u(x, t | k) + (1 − w) u(x, t). Since every u(x, t | j)
  is combined linearly, u^w = Σ_j ω_j u(x, t | j) with ω = w e_k + (1 − w) w(x): one code path serves the marginal
  (ω = w(x)), the class (ω = e_k) and the guided field.

The sums over k are matrix products with the stacked frames [U_1 … U_K] (D, K·r): y = x [U_1 … U_K] − a Uᵀm and
Σ_k ω_k U_k(δ_k ⊙ y_k) = (ω δ y)[U_1 … U_K]ᵀ, so memory is O(B·K·r + B·D + K·D·r) (never (B, K, D)), and the cost
O(B·K·D·r) per velocity. Because τ > 0, C_k is invertible at t = 0 too, where the
formula gives u(x, 0) = −x exactly (κ = −1).

**Flows.** ψ(x, t, s) of any of these fields comes from the adaptive ODE solver of :mod:`tvm_theory.analysis.ode` with a
per-sample error estimate (distance to a 10× tighter solve). A guided flow's terminal samples ψ^w(x1, 1, 0) are
defined through the ODE (for w ≠ 1 the law p^w_0 is not p0(· | k)); for w = 1 with labels, or without labels,
``sample`` draws exactly.

**σ²(t)** (docs/THEORY.md §1): given a class it is exact and independent of x,
σ²(t | k) = Σ_j [λ_kj + 1 − (t − aλ_kj)²/(a²λ_kj + t²)] + (D − r)[τ² + 1 − (t − aτ²)²/c]; for the marginal law it is
E_{x_t}[Σ_k w_k (σ²(t | k) + ‖u_k − u‖²)], a Rao–Blackwellized Monte Carlo mean with its standard error.

Precision: ‖z_k‖² is formed by expansion, so log-likelihoods lose about ‖x‖²·eps/c nats; use float64 (the default).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...checks import check_finite
from ...path import PathSample, sample_path
from ..estimate import Estimate
from ..ode import OdeSolution, odeint, odeint_with_error
from .base import TestBed, scalar_time


class LowRankGaussianMixture(TestBed):
    """p0 = Σ_k π_k N(m_k, F_k F_kᵀ + τ² I): exact marginal, class and guided velocities through Woodbury.

    Args:
        weights: π, shape (K,), non-negative and summing to 1 (to 1e-6 relative).
        means: m, shape (K, D).
        factors: F, shape (K, D, r) with r ≤ D (rank-deficient factors are allowed).
        noise_std: τ > 0, the isotropic part of every covariance.
        dtype, device: of every tensor the bed holds and returns (float64 by default; see the module's precision note).
        rtol, atol: tolerances of the flows' ODE solves.

    Every method taking ``labels`` reads it as a (B,) integer tensor of classes in [0, K) that selects row i's class;
    ``labels=None`` is the marginal law. ``guidance`` = w ≥ 1 needs labels and gives the guided field.
    """

    def __init__(self, weights, means, factors, noise_std, *, dtype: torch.dtype = torch.float64, device=None,
                 rtol: float = 1e-8, atol: float = 1e-8):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        pi, mu, fac = (torch.as_tensor(v, dtype=dtype, device=device) for v in (weights, means, factors))
        if pi.ndim != 1 or pi.numel() == 0:
            raise ValueError(f"weights: expected shape (K,), got {tuple(pi.shape)}")
        k = pi.shape[0]
        if mu.ndim != 2 or mu.shape[0] != k or mu.shape[1] == 0:
            raise ValueError(f"means: expected shape ({k}, D) to match weights, got {tuple(mu.shape)}")
        d = mu.shape[1]
        if fac.ndim != 3 or fac.shape[:2] != (k, d) or not 1 <= fac.shape[2] <= d:
            raise ValueError(f"factors: expected shape ({k}, {d}, r) with 1 ≤ r ≤ {d}, got {tuple(fac.shape)}")
        for name, v in (("weights", pi), ("means", mu), ("factors", fac)):
            check_finite(name, v)
        if float(pi.min()) < 0 or abs(float(pi.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights: expected a probability vector (non-negative, sum 1), got sum "
                             f"{float(pi.sum()):.8g} and minimum {float(pi.min()):.3g}")
        try:
            tau = float(noise_std)
        except (TypeError, ValueError):
            raise ValueError(f"noise_std: expected a number τ > 0, got {noise_std!r}") from None
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"noise_std: expected a finite τ > 0, got {noise_std!r}")
        q, r_mat = torch.linalg.qr(fac)  # F = Q R, then R = U_R diag(s) Vᵀ: the thin SVD F = (Q U_R) diag(s) Vᵀ
        u_r, s, _ = torch.linalg.svd(r_mat)
        u = q @ u_r  # (K, D, r), (K, r)
        self.weights, self.means, self.factors, self.noise_std = pi, mu, fac, tau
        self.basis, self.svals = u, s
        self.evals = s**2 + tau**2  # eigenvalues of Σ_k on span(U_k), (K, r)
        self.mean_sq = (mu**2).sum(1)  # ‖m_k‖², (K,)
        self.mean_proj = torch.einsum("kdr,kd->kr", u, mu)  # U_kᵀ m_k, (K, r)
        self.basis_flat = u.permute(1, 0, 2).reshape(d, -1).contiguous()  # [U_1 … U_K], (D, K·r): plain matmuls
        self.factors_flat = fac.permute(1, 0, 2).reshape(d, -1).contiguous()
        self.dtype, self.device = dtype, mu.device
        self.rtol, self.atol = rtol, atol

    def __repr__(self) -> str:
        return (f"LowRankGaussianMixture(K={self.n_components}, D={self.dim}, r={self.rank}, "
                f"noise_std={self.noise_std})")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def rank(self) -> int:
        return self.factors.shape[2]

    # ---- validation ----------------------------------------------------------------------------------------------
    def _labels(self, labels, n: int) -> Tensor | None:
        if labels is None:
            return None
        lab = torch.as_tensor(labels, device=self.device)
        if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.dtype.is_complex:
            raise ValueError(f"labels: expected integer class indices, got dtype {lab.dtype}")
        if lab.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},) to match the batch, got {tuple(lab.shape)}")
        if n and (int(lab.min()) < 0 or int(lab.max()) >= self.n_components):
            raise ValueError(f"labels: expected classes in [0, {self.n_components}), got range "
                             f"[{int(lab.min())}, {int(lab.max())}]")
        return lab.long()

    def _label_set(self, labels) -> Tensor:
        """Validated labels of any length: an int class or a (B,) tensor."""
        lab = torch.as_tensor(labels, device=self.device)
        lab = lab.reshape(1) if lab.ndim == 0 else lab
        if lab.ndim != 1 or lab.numel() == 0:
            raise ValueError(f"labels: expected a class or a non-empty (B,) tensor of classes, got shape "
                             f"{tuple(lab.shape)}")
        return self._labels(lab, lab.shape[0])

    @staticmethod
    def _guidance(guidance, labels) -> float:
        try:
            w = float(guidance)
        except (TypeError, ValueError):
            raise ValueError(f"guidance: expected a weight w ≥ 1, got {guidance!r}") from None
        if not (math.isfinite(w) and w >= 1.0):
            raise ValueError(f"guidance: expected a finite weight w ≥ 1, got {guidance!r}")
        if w != 1.0 and labels is None:
            raise ValueError(f"guidance: w = {w} needs labels (the guided field w·u(x, t | k) + (1 − w)·u(x, t))")
        return w

    # ---- the fields ----------------------------------------------------------------------------------------------
    def _terms(self, x: Tensor, t: Tensor):
        """Per-class pieces at (x, t): log N(x; a m_k, C_k) (B, K), y_k = U_kᵀ z_k (B, K, r), κ_k − κ⊥ (B, K, r),
        κ⊥ (B,), a (B,), c (B,)."""
        a = 1 - t
        tau2 = self.noise_std**2
        c = a**2 * tau2 + t**2  # (B,)
        kperp = (t - a * tau2) / c
        var = a[:, None, None] ** 2 * self.evals[None] + t[:, None, None] ** 2  # (B, K, r)
        kap = (t[:, None, None] - a[:, None, None] * self.evals[None]) / var
        y = (x @ self.basis_flat).view(x.shape[0], self.n_components, self.rank) \
            - a[:, None, None] * self.mean_proj[None]
        z_sq = (x**2).sum(1, keepdim=True) - 2 * a[:, None] * (x @ self.means.T) + a[:, None] ** 2 * self.mean_sq
        y_sq = y**2
        d, r = self.dim, self.rank
        log_lik = -0.5 * ((z_sq - y_sq.sum(-1)) / c[:, None] + (y_sq / var).sum(-1) + var.log().sum(-1)
                          + (d - r) * c.log()[:, None] + d * math.log(2 * math.pi))
        return log_lik, y, kap - kperp[:, None, None], kperp, a, c

    def _combine(self, x: Tensor, omega: Tensor, y: Tensor, dk: Tensor, kperp: Tensor, a: Tensor) -> Tensor:
        """Σ_k ω_k u(x, t | k) for weights ω (B, K) summing to 1 per row."""
        m_bar = omega @ self.means  # Σ_k ω_k m_k, (B, D)
        low = (omega[..., None] * dk * y).reshape(x.shape[0], -1) @ self.basis_flat.T
        return kperp[:, None] * (x - a[:, None] * m_bar) + low - m_bar

    def _omega(self, log_lik: Tensor, labels: Tensor | None, w: float) -> Tensor:
        post = torch.softmax(log_lik + self.weights.log()[None], dim=1)
        if labels is None:
            return post
        onehot = torch.nn.functional.one_hot(labels, self.n_components).to(post.dtype)
        return onehot if w == 1.0 else w * onehot + (1 - w) * post

    def _field(self, x: Tensor, t: Tensor, labels: Tensor | None, w: float) -> Tensor:
        log_lik, y, dk, kperp, a, _ = self._terms(x, t)
        return self._combine(x, self._omega(log_lik, labels, w), y, dk, kperp, a)

    def velocity(self, x: Tensor, t, labels=None, guidance: float = 1.0) -> Tensor:
        """u(x, t) (labels None), u(x, t | k) (labels, w = 1) or w·u(x, t | k) + (1 − w)·u(x, t), exact.

        x: (B, D); t: a scalar or (B,) in [0, 1]; labels: (B,) classes or None; guidance: w ≥ 1.
        """
        t = self._times(x, t)
        labels = self._labels(labels, x.shape[0])
        return self._field(x, t, labels, self._guidance(guidance, labels))

    def _field_jvp(self, x: Tensor, t: Tensor, v: Tensor, labels: Tensor | None, w: float
                   ) -> tuple[Tensor, Tensor]:
        log_lik, y, dk, kperp, a, c = self._terms(x, t)
        omega = self._omega(log_lik, labels, w)
        u = self._combine(x, omega, y, dk, kperp, a)
        n = x.shape[0]
        vu = (v @ self.basis_flat).view(n, self.n_components, self.rank)  # U_kᵀ v
        tangent = kperp[:, None] * v + (omega[..., None] * dk * vu).reshape(n, -1) @ self.basis_flat.T
        if labels is None or w != 1.0:  # the posterior moves with x: ∂ℓ_k v = −(C_k⁻¹ z_k)·v
            var = a[:, None, None] ** 2 * self.evals[None] + t[:, None, None] ** 2
            zv = (x * v).sum(1, keepdim=True) - a[:, None] * (v @ self.means.T)
            dl = -(zv / c[:, None] + ((1 / var - 1 / c[:, None, None]) * y * vu).sum(-1))
            post = torch.softmax(log_lik + self.weights.log()[None], dim=1)
            dpost = post * (dl - (post * dl).sum(1, keepdim=True))
            domega = dpost if labels is None else (1 - w) * dpost
            tangent = tangent + self._combine(x, domega, y, dk, kperp, a) - kperp[:, None] * x  # Σ ∂ω_k = 0
        return u, tangent

    def velocity_jvp(self, x: Tensor, t, v: Tensor, labels=None, guidance: float = 1.0) -> tuple[Tensor, Tensor]:
        """(u, ∂_x u · v) of ``velocity(x, t, labels, guidance)`` in closed form (no autodiff): with ℓ_k the class
        log-likelihoods, ∂ℓ_k v = −(C_k⁻¹ z_k)·v, ∂(posterior) = post ⊙ (∂ℓ − Σ post ∂ℓ), ∂u_k v = κ⊥ v +
        U_k(δ_k ⊙ U_kᵀ v), and ∂u v = Σ_k ω_k ∂u_k v + Σ_k ∂ω_k u_k. v: (B, D) tangents."""
        t = self._times(x, t)
        self._check_x(v, "v")
        labels = self._labels(labels, x.shape[0])
        return self._field_jvp(x, t, v, labels, self._guidance(guidance, labels))

    def posterior(self, x: Tensor, t) -> Tensor:
        """The posterior class probabilities P(k | x_t = x), shape (B, K)."""
        t = self._times(x, t)
        log_lik = self._terms(x, t)[0]
        return torch.softmax(log_lik + self.weights.log()[None], dim=1)

    # ---- flows -----------------------------------------------------------------------------------------------------
    def _ode_field(self, labels, w):
        def fn(z: Tensor, r: float) -> Tensor:
            return self._field(z, torch.full((z.shape[0],), min(max(r, 0.0), 1.0), dtype=z.dtype,
                                             device=z.device), labels, w)
        return fn

    def _flow_args(self, x, t, s, labels, guidance):
        self._check_x(x)
        t, s = scalar_time("t", t), scalar_time("s", s)
        labels = self._labels(labels, x.shape[0])
        return t, s, labels, self._guidance(guidance, labels)

    def flow_with_error(self, x: Tensor, t, s, labels=None, guidance: float = 1.0) -> OdeSolution:
        """ψ(x, t, s) of the field ``velocity(·, ·, labels, guidance)`` by adaptive Dormand–Prince, with the per-sample
        distance to a 10× tighter solve as its error (tvm_theory.analysis.ode). t, s: scalars in [0, 1]."""
        t, s, labels, w = self._flow_args(x, t, s, labels, guidance)
        return odeint_with_error(self._ode_field(labels, w), x, t, s, rtol=self.rtol, atol=self.atol)

    def flow(self, x: Tensor, t, s, labels=None, guidance: float = 1.0) -> Tensor:
        """ψ(x, t, s) by one adaptive solve; ``flow_with_error`` adds its error estimate."""
        t, s, labels, w = self._flow_args(x, t, s, labels, guidance)
        return odeint(self._ode_field(labels, w), x, t, s, rtol=self.rtol, atol=self.atol)

    # ---- sampling --------------------------------------------------------------------------------------------------
    def _randn(self, *shape: int, generator: torch.Generator | None) -> Tensor:
        """Standard normals drawn on the generator's device (reproducible on any device), moved to the bed's."""
        dev = generator.device if generator is not None else self.device
        return torch.randn(*shape, generator=generator, dtype=self.dtype, device=dev).to(self.device)

    def sample(self, n: int, generator: torch.Generator | None = None, labels=None,
               guidance: float = 1.0) -> Tensor:
        """n samples, shape (n, D): of p0 (labels None), of p0(· | k_i) (labels, w = 1; exact), or of the guided
        law ψ^w(x1, 1, 0) with x1 ~ N(0, I) (w ≠ 1; through the ODE)."""
        self._check_n(n)
        labels = self._labels(labels, n)
        w = self._guidance(guidance, labels)
        if w != 1.0:
            return self.flow(self._randn(n, self.dim, generator=generator), 1.0, 0.0, labels, w)
        if labels is None:
            dev = generator.device if generator is not None else self.device
            labels = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator).to(self.device)
        onehot = torch.nn.functional.one_hot(labels, self.n_components).to(self.dtype)
        eps_r = self._randn(n, self.rank, generator=generator)
        eps_d = self._randn(n, self.dim, generator=generator)
        low = (onehot[..., None] * eps_r[:, None, :]).reshape(n, -1) @ self.factors_flat.T
        return self.means[labels] + low + self.noise_std * eps_d

    def sample_path(self, n: int, t, generator: torch.Generator | None = None, labels=None) -> PathSample:
        """n path points (x0 ~ p0 or p0(· | k_i), x1 ~ N(0, I), x_t, v = x1 − x0) at time(s) t."""
        x0 = self.sample(n, generator, labels)
        return sample_path(x0, self._randn(n, self.dim, generator=generator), t)

    # ---- σ² ----------------------------------------------------------------------------------------------------------
    def class_cond_variance(self, t) -> Tensor:
        """σ²(t | k) for every class, shape (K,), exact: tr Cov(x1 − x0 | x_t, k), the same for every x_t."""
        t = scalar_time("t", t)
        a, tau2 = 1 - t, self.noise_std**2
        lam = self.evals
        on_u = (lam + 1 - (t - a * lam) ** 2 / (a**2 * lam + t**2)).sum(1)
        c = a**2 * tau2 + t**2
        return on_u + (self.dim - self.rank) * (tau2 + 1 - (t - a * tau2) ** 2 / c)

    def cond_variance(self, t: float, n: int = 20_000, generator: torch.Generator | None = None,
                      labels=None) -> Estimate:
        """σ²(t) = E‖v − u(x_t, t)‖² (docs/THEORY.md §1) with its standard error.

        With ``labels`` (a (B,) tensor of classes) it is the mean of the exact σ²(t | k_i) (standard error 0);
        without, the Rao–Blackwellized Monte Carlo mean over n samples x_t ~ p_t of
        Σ_k w_k(x_t) [σ²(t | k) + ‖u(x_t, t | k) − u(x_t, t)‖²] (module docstring).
        """
        per_class = self.class_cond_variance(t)
        t = float(t)
        if labels is not None:
            return Estimate(float(per_class[self._label_set(labels)].mean()))
        x = self.sample_path(n, t, generator).x_t
        tt = torch.full((n,), t, dtype=self.dtype, device=self.device)
        log_lik, y, dk, kperp, a, _ = self._terms(x, tt)
        w = self._omega(log_lik, None, 1.0)
        g = dk * y  # u_k = κ⊥ x + g_k with g_k = −(κ⊥ a + 1) m_k + U_k (δ_k ⊙ y_k)
        alpha = (kperp * a + 1)[:, None]  # (B, 1)
        g_sq = alpha**2 * self.mean_sq[None] - 2 * alpha * (g * self.mean_proj[None]).sum(-1) + (g**2).sum(-1)
        g_bar = self._combine(x, w, y, dk, kperp, a) - kperp[:, None] * x  # Σ_k w_k g_k, (B, D)
        spread = (w * g_sq).sum(1) - (g_bar**2).sum(1)  # Σ_k w_k ‖u_k − u‖²
        per_sample = (w * per_class[None]).sum(1) + spread
        return Estimate(float(per_sample.mean()), float(per_sample.std() / math.sqrt(n)))

    # ---- moments and the Gaussian reference ----------------------------------------------------------------------
    def moments(self, labels=None) -> tuple[Tensor, Tensor]:
        """(mean (D,), W (D, m)) with Cov = τ² I + W Wᵀ: of p0 (labels None; W = [√π_k F_k, √π_k (m_k − m̄)], m =
        K(r + 1)) or of the mixture Σ_i δ_{k_i}/B of the classes of ``labels`` (the law of the rows' x0)."""
        if labels is None:
            pi = self.weights
        else:
            lab = self._label_set(labels)
            pi = torch.bincount(lab, minlength=self.n_components).to(self.dtype) / lab.shape[0]
        mean = pi @ self.means
        root = pi.sqrt()
        w = torch.cat([root[:, None, None] * self.factors, (root[:, None] * (self.means - mean))[..., None]], dim=2)
        return mean, w.permute(1, 0, 2).reshape(self.dim, -1)

    def gaussian_fit_flow(self, x1: Tensor, labels=None) -> Tensor:
        """ψ_G(x1, 1, 0) = m + S^{1/2} x1: the exact flow (docs/THEORY.md §7) of the single Gaussian N(m, S) with the
        moments of ``moments(labels)``; S^{1/2} = τ I + Q (√(σ² + τ²) − τ) Qᵀ from the thin SVD W = Q diag(σ) Rᵀ."""
        self._check_x(x1, "x1")
        mean, w = self.moments(labels)
        q, sig, _ = torch.linalg.svd(w, full_matrices=False)
        tau = self.noise_std
        gain = (sig**2 + tau**2).sqrt() - tau
        return mean + tau * x1 + ((x1 @ q) * gain) @ q.T

    def class_means(self, labels) -> Tensor:
        """m_{k_i} per row, shape (B, D): the class-mean reference."""
        return self.means[self._label_set(labels)]


class ConditionedLowRank(TestBed):
    """A :class:`LowRankGaussianMixture` with its labels and guidance fixed: the field x ↦ velocity(x, t, labels,
    guidance) as a plain :class:`TestBed`, for code written for fields of (x, t) (the bounds, the few-step report,
    the sensitivity diagnostics).

    Row i of any batch has class ``labels[i mod n]`` (n = len(labels)), so batches that stack several copies of the n
    rows (one per time node) keep their classes; a batch whose size is not a multiple of n is an error. ``sample``
    and ``sample_path`` draw n·m rows the same way. Inputs on another device are moved to the bed's.
    """

    def __init__(self, bed: LowRankGaussianMixture, labels, guidance: float = 1.0):
        if not isinstance(bed, LowRankGaussianMixture):
            raise TypeError(f"bed: expected a LowRankGaussianMixture, got {type(bed).__name__}")
        self.bed = bed
        self.labels = None if labels is None else bed._label_set(labels)
        self.guidance = bed._guidance(guidance, self.labels)
        self.dtype, self.device = bed.dtype, bed.device

    def __repr__(self) -> str:
        n = "marginal" if self.labels is None else f"{len(self.labels)} labels"
        return f"ConditionedLowRank({self.bed!r}, {n}, guidance={self.guidance})"

    @property
    def dim(self) -> int:
        return self.bed.dim

    def _rows(self, n: int) -> Tensor | None:
        if self.labels is None:
            return None
        if n % len(self.labels):
            raise ValueError(f"x: expected a batch of a multiple of {len(self.labels)} rows (one label each), got {n}")
        return self.labels.repeat(n // len(self.labels))

    def velocity(self, x: Tensor, t) -> Tensor:
        x = x.to(self.device)
        return self.bed.velocity(x, t.to(self.device) if torch.is_tensor(t) else t, self._rows(x.shape[0]),
                                 self.guidance)

    def velocity_jvp(self, x: Tensor, t, v: Tensor) -> tuple[Tensor, Tensor]:
        """(u, ∂_x u · v) in closed form (``LowRankGaussianMixture.velocity_jvp``)."""
        x = x.to(self.device)
        return self.bed.velocity_jvp(x, t.to(self.device) if torch.is_tensor(t) else t, v.to(self.device),
                                     self._rows(x.shape[0]), self.guidance)

    def flow_with_error(self, x: Tensor, t, s) -> OdeSolution:
        x = x.to(self.device)
        return self.bed.flow_with_error(x, t, s, self._rows(x.shape[0]), self.guidance)

    def flow(self, x: Tensor, t, s) -> Tensor:
        x = x.to(self.device)
        return self.bed.flow(x, t, s, self._rows(x.shape[0]), self.guidance)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        self._check_n(n)
        return self.bed.sample(n, generator, self._rows(n), self.guidance)

    def sample_path(self, n: int, t, generator: torch.Generator | None = None) -> PathSample:
        """Path points of the rows' class laws (for w ≠ 1 this is the training interpolant, not the guided law)."""
        self._check_n(n)
        return self.bed.sample_path(n, t, generator, self._rows(n))

    def cond_variance(self, t: float, **kwargs) -> Estimate:
        return self.bed.cond_variance(t, labels=self.labels, **kwargs)
