"""Exponential moving averages of weights: the TVM target network and the evaluation copy (docs/THEORY.md §3, item 1).

θ_ema ← r · θ_ema + (1 − r) · θ with rate r (the target's 0.99 in the paper; rate 0 is a plain stop-gradient copy).
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """θ_ema ← rate·θ_ema + (1 − rate)·θ for parameters (one fused foreach launch); buffers (e.g. spectral-norm
    vectors) are copied."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: expected an EMA rate in [0, 1], got {rate}")
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"ema: expected a copy of the model, got {len(ema_params)} parameters for {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1.0 - rate)
    copy_buffers(ema, model)


@torch.no_grad()
def copy_buffers(ema: nn.Module, model: nn.Module) -> None:
    """Copy the model's buffers (e.g. spectral-norm vectors) into the EMA's, in order."""
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)
