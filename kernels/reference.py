"""Pure-PyTorch attention, the same function as the Triton kernels (THEORY.md §9).

O = softmax_row(α QKᵀ) V with α = scale (default 1/√D). Computed in fp32 for fp16/bf16 inputs (float64 stays
float64) and returned in the input dtype. Differentiable in every mode PyTorch offers (autograd, ``torch.func.jvp``,
``torch.autograd.forward_ad``), at the price of an S_q×S_k matrix in memory.
"""
import torch


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q kᵀ) v over the last two dimensions of (..., S, D) tensors."""
    compute = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    logits = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(logits, dim=-1), v.to(compute)).to(q.dtype)
