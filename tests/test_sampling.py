"""The few-step sampler (docs/THEORY.md §3): grid, one network for every N, exact for an exact flow map."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from toy.models import MLP
from tvm_theory.param import NetworkJump
from tvm_theory.sampling import sample_few_step


class ExactGaussianFlow:
    """Jump = exact flow map of p0 = N(μ, σ0² I): ψ(x, t, s) = (1 − s)μ + (σ_s/σ_t)(x − (1 − t)μ) (§7)."""

    def __init__(self, mu, sig0):
        self.mu, self.sig0 = mu, sig0

    def sd(self, s):
        return torch.sqrt((1 - s) ** 2 * self.sig0**2 + s**2)[:, None]

    def displacement(self, x, t, s):
        return (1 - s)[:, None] * self.mu + self.sd(s) / self.sd(t) * (x - (1 - t)[:, None] * self.mu) - x


@settings(max_examples=10, deadline=None)
@given(n_steps=st.integers(1, 12), sig0=st.floats(0.1, 4.0), mu=st.floats(-3, 3), seed=st.integers(0, 999))
def test_exact_flow_map_gives_the_same_sample_for_every_n(n_steps, sig0, mu, seed):
    x1 = torch.randn(16, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    model = ExactGaussianFlow(mu, sig0)
    traj = sample_few_step(model, x1, n_steps, return_trajectory=True)
    assert len(traj) == n_steps + 1 and traj[0] is x1
    torch.testing.assert_close(traj[-1], mu + sig0 * x1)  # ψ(x1, 1, 0) = μ + σ0 x1


def test_one_step_is_one_network_jump_from_1_to_0():
    torch.manual_seed(0)
    F = MLP(2, 8, 1, 4)
    x1 = torch.randn(5, 2)
    one, zero = torch.ones(5), torch.zeros(5)
    torch.testing.assert_close(sample_few_step(NetworkJump(F), x1, 1), x1 - F(x1, one, zero))
    two = sample_few_step(NetworkJump(F), x1, 2)
    half = torch.full((5,), 0.5)
    mid = x1 - 0.5 * F(x1, one, half)
    torch.testing.assert_close(two, mid - 0.5 * F(mid, half, zero))


def test_bad_input():
    with pytest.raises(ValueError, match="n_steps"):
        sample_few_step(ExactGaussianFlow(0, 1), torch.zeros(2, 1), 0)
    with pytest.raises(ValueError, match="x1: expected finite"):
        sample_few_step(ExactGaussianFlow(0, 1), torch.tensor([[float("nan")]]), 1)
