"""The few-step sampler (docs/THEORY.md §3).

Grid t_k = linspace(1, 0, N + 1); x ← x + f_θ(x, t_k, t_{k+1}) with f_θ = (t_{k+1} − t_k) · w · F_θ(x, t_k, t_{k+1},
c, 1/w); x starts as N(0, I) noise; no noise is injected. One network serves every N.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_finite
from .param import JumpModel


@torch.no_grad()
def sample_few_step(model: JumpModel, x1: Tensor, n_steps: int = 1, *, return_trajectory: bool = False):
    """Run N jumps from noise ``x1`` (t = 1) to data (t = 0) with a :class:`~tvm_theory.param.JumpModel`.

    Returns x0 of x1's shape, or the list [x1, x_{t_1}, …, x0] when ``return_trajectory`` is set.
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive int, got {n_steps!r}")
    check_finite("x1", x1)
    grid = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64).tolist()
    x, traj = x1, [x1]
    for t_k, t_next in zip(grid[:-1], grid[1:]):
        t = torch.full((x.shape[0],), t_k, dtype=x.dtype, device=x.device)
        s = torch.full((x.shape[0],), t_next, dtype=x.dtype, device=x.device)
        x = x + model.displacement(x, t, s)
        traj.append(x)
    return traj if return_trajectory else x
