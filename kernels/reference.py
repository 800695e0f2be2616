"""Pure-PyTorch attention, the same function as the Triton kernels (docs/THEORY.md §9).

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


def attention_reference_jvp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tq: torch.Tensor, tk: torch.Tensor,
                            tv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, Ȯ) by the closed form of docs/THEORY.md §9 in plain operators (differentiable by autograd, traceable by
    ``torch.compile``): P = softmax(α QKᵀ), T = α(Q̇Kᵀ + QK̇ᵀ), μ = rowsum(P∘T), Ȯ = P V̇ + (P∘(T − μ1ᵀ)) V."""
    dtype = q.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    q, k, v, tq, tk, tv = (a.to(compute) for a in (q, k, v, tq, tk, tv))
    p = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)
    t = (torch.matmul(tq, k.transpose(-1, -2)) + torch.matmul(q, tk.transpose(-1, -2))) * scale
    pt = p * t
    dp = pt - p * pt.sum(-1, keepdim=True)
    return torch.matmul(p, v).to(dtype), (torch.matmul(p, tv) + torch.matmul(dp, v)).to(dtype)
