"""Training data drawn on the fly from an analytic low-rank Gaussian mixture whose flow is exactly known
(``data.kind: analytic``; docs/THEORY.md §7, the bed :class:`~tvm_theory.analysis.testbeds.LowRankGaussianMixture`).

The mixture is rebuilt from the run's ``config.yaml`` alone: :func:`analytic_bed` derives every parameter from
``data.analytic_*`` and the model's shape and class count, with a fixed recipe and ``data.analytic_seed``:

* K = ``model.num_classes`` equally likely classes (component k is class k), D = in_channels × input_size²;
* means m_k = ``analytic_mean_std`` · N(0, I_D) (class separation ≈ mean_std·√(2D));
* factors F_k = Q_k diag(s) with Q_k an orthonormal (D, r) frame (QR of a Gaussian matrix) and the standard
  deviations s_j geometric from ``analytic_top_std`` down to ``analytic_min_std`` (r = ``analytic_rank``);
* noise τ = ``analytic_noise_std``: Σ_k = F_k F_kᵀ + τ² I.

The parameters are drawn in float64 on the CPU, in that order (means, then frames), from a torch generator seeded
by numpy's SeedSequence of (``analytic_seed``, "analytic"), so every process and every machine builds the same law
(to the rounding of its QR), and no other seed of the project (noise, data order) repeats its stream.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from tvm_theory.analysis.testbeds import LowRankGaussianMixture

from .synthetic import IMAGENET_TRAIN_ITEMS, SeededStream

ITEMS_PER_EPOCH = IMAGENET_TRAIN_ITEMS  # as many as ImageNet's training set, so epochs mean the same as for latents


def analytic_parameters(data_cfg, shape: tuple[int, int, int], num_classes: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(weights (K,), means (K, D), factors (K, D, r), τ) in float64 on the CPU, from ``data.analytic_*``."""
    d, k, r = int(np.prod(shape)), int(num_classes), int(data_cfg.analytic_rank)
    if r > d:
        raise ValueError(f"data.analytic_rank: expected at most D = {d} (the model's input size), got {r}")
    state = np.random.SeedSequence([int(data_cfg.analytic_seed), *b"analytic"]).generate_state(1, np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state))
    means = data_cfg.analytic_mean_std * torch.randn(k, d, generator=gen, dtype=torch.float64)
    frames, _ = torch.linalg.qr(torch.randn(k, d, r, generator=gen, dtype=torch.float64))
    lo, hi = math.log(data_cfg.analytic_min_std), math.log(data_cfg.analytic_top_std)
    stds = torch.exp(torch.linspace(hi, lo, r, dtype=torch.float64)) if r > 1 else \
        torch.tensor([data_cfg.analytic_top_std], dtype=torch.float64)
    weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
    return weights, means, frames * stds, float(data_cfg.analytic_noise_std)


def analytic_bed(cfg, *, dtype: torch.dtype = torch.float64, device=None) -> LowRankGaussianMixture:
    """The exact law of an ``analytic`` run from its :class:`full_scale.config.Config`, as a test bed."""
    m = cfg.model
    weights, means, factors, tau = analytic_parameters(cfg.data, (m.in_channels, m.input_size, m.input_size),
                                                       m.num_classes)
    return LowRankGaussianMixture(weights, means, factors, tau, dtype=dtype, device=device)


class AnalyticDataset(SeededStream):
    """x0 ~ N(m_k, F_k F_kᵀ + τ² I) of shape (C, H, W) with its class k uniform on {0, …, K − 1}, yielded as the other
    kinds yield theirs (float32 x, int64 scalar label).

    Items are drawn as :class:`~full_scale.data.synthetic.SeededStream` draws them (seed = ``train.seed``). The
    parameters are those of :func:`analytic_parameters`, held in float32."""

    def __init__(self, cfg, *, rank: int = 0, world_size: int = 1, num_items: int = ITEMS_PER_EPOCH):
        super().__init__(rank=rank, world_size=world_size, seed=int(cfg.train.seed), num_items=num_items)
        m = cfg.model
        self.latent_shape = (m.in_channels, m.input_size, m.input_size)
        self.num_classes = int(m.num_classes)
        _, means, factors, tau = analytic_parameters(cfg.data, self.latent_shape, self.num_classes)
        self.means, self.factors, self.tau = means.float().numpy(), factors.float().numpy(), tau

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        d, r = self.means.shape[1], self.factors.shape[2]
        k = int(rng.integers(self.num_classes))
        x = self.means[k] + self.factors[k] @ rng.standard_normal(r, dtype=np.float32) \
            + self.tau * rng.standard_normal(d, dtype=np.float32)
        return torch.from_numpy(x.reshape(self.latent_shape)), torch.tensor(k)
