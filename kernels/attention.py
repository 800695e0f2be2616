"""Public entry point: ``attention(q, k, v, scale=None, backend="auto")`` (docs/THEORY.md §9)."""
import math

import torch
from torch.autograd import forward_ad

from . import _config, _ops
from ._autograd import _Attention, _AttentionWithTangent
from .reference import attention_reference, attention_reference_jvp

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_REFERENCE_DTYPES = _DTYPES + (torch.float64,)  # float64 for reference checks; never integer, bool or complex
_BACKENDS = ("auto", "triton", "reference")
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128


def _check(q, k, v, backend):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (B, H, S, D), got shape {tuple(x.shape)}")
    if backend not in _BACKENDS:
        raise ValueError(f"attention: backend must be one of {_BACKENDS}, got {backend!r}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in _REFERENCE_DTYPES:
        raise TypeError(f"attention: q, k, v must be real floating point ({', '.join(map(str, _REFERENCE_DTYPES))}), "
                        f"got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, H and D")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"attention: sequence lengths must be positive, got S_q={q.shape[2]}, S_k={k.shape[2]}")


def _check_triton(q):
    if q.dtype not in _DTYPES:
        raise TypeError(f"attention: the Triton backend supports {_DTYPES}, got q.dtype={q.dtype}")
    head_dim = q.shape[3]
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"attention: the Triton backend needs {MIN_HEAD_DIM} <= D <= {MAX_HEAD_DIM}, got D={head_dim}")
    if q.device.type != "cuda" and not _config.INTERPRET:
        raise RuntimeError(
            f"attention: backend='triton' on a {q.device.type} tensor needs TRITON_INTERPRET=1 set before "
            "`kernels` is imported (or use backend='reference')")


def transforms_active(*tensors: torch.Tensor) -> bool:
    """Whether a ``torch.func`` transform is active or one of ``tensors`` is a dual tensor of forward-mode AD: where
    ``in_graph=True`` refuses to run. Dynamo traces this check without a graph break."""
    return torch._C._are_functorch_transforms_active() or any(
        forward_ad.unpack_dual(x).tangent is not None for x in tensors)


def _refuse_transforms(name, *tensors):
    """The custom operators (``in_graph``) have no forward-mode rule, and under forward AD PyTorch gives them a zero
    or missing tangent without an error; refuse every ``torch.func`` transform and dual tensors instead."""
    if transforms_active(*tensors):
        raise RuntimeError(f"kernels.{name}(in_graph=True) supports reverse mode only: not under torch.func "
                           "transforms or forward-mode AD (use in_graph=False)")


def _resolve_scale(q, scale):
    """α: 1/√D by default; a given scale must be finite."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"attention: scale must be finite, got {scale}")
    return scale


@torch.compiler.disable
def _triton_attention(q, k, v, scale):
    # Kept out of compiled regions: Dynamo may ignore a custom jvp inside them (PyTorch #192985) and return wrong
    # tangents with no error; here the graph breaks and the Function runs eagerly.
    return _Attention.apply(q.contiguous(), k.contiguous(), v.contiguous(), scale)[0]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
              backend: str = "auto", in_graph: bool = False) -> torch.Tensor:
    """Scaled dot-product attention O = softmax_row(α Q Kᵀ) V with forward-mode and reverse-mode derivatives.

    Math (docs/THEORY.md §9): with tangents Q̇, K̇, V̇ and T = α(Q̇Kᵀ + QK̇ᵀ), μ = rowsum(P∘T), the tangent is
    Ȯ = P V̇ + (P∘(T − μ1ᵀ)) V. The Triton backend computes O with a flash forward, Ȯ with a second flash pass
    (both saving only per-row statistics), and back-propagates through O and Ȯ without any S_q×S_k buffer.

    Args:
        q: (B, H, S_q, D) queries; k, v: (B, H, S_k, D) keys and values. fp32, fp16 or bf16 (fp32 accumulation);
            16 <= D <= 128 for the Triton backend. Non-contiguous inputs are copied to contiguous memory.
        scale: α, default 1/√D.
        backend: "triton" (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1), "reference" (pure PyTorch,
            memory quadratic in S), or "auto" (Triton on CUDA, the reference elsewhere).
        in_graph: Triton backend only: run the kernels as ``torch.library`` custom operators (``kernels._ops``), which
            ``torch.compile`` keeps inside its graph instead of breaking it. Reverse mode only: under forward-mode AD
            (``forward_ad``) or any ``torch.func`` transform the call raises. For callers that carry tangents by
            hand, as the DiT's ``Block.jvp`` does (docs/KERNEL.md §7).

    Returns:
        (B, H, S_q, D) tensor in q's dtype. Works as a plain call, under ``torch.func.jvp`` and
        ``torch.autograd.forward_ad`` (unless ``in_graph``); gradients flow through O and through its tangent to q, k,
        v and the tangents.
    """
    _check(q, k, v, backend)
    scale = _resolve_scale(q, scale)
    if backend == "reference" or (backend == "auto" and q.device.type != "cuda"):
        return attention_reference(q, k, v, scale)
    _check_triton(q)
    if in_graph:
        _refuse_transforms("attention", q, k, v)
        return _ops.attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(), scale)[0]
    return _triton_attention(q, k, v, scale)


@torch.compiler.disable
def _triton_attention_jvp(q, k, v, tq, tk, tv, scale):
    # One Function for O and Ȯ, so that its backward gets dO and dȮ together and runs one fused pass.
    o, to, *_stats = _AttentionWithTangent.apply(*_kernel_inputs(q, k, v, tq, tk, tv), scale)
    return o, to


def _kernel_inputs(q, *others):
    """q and the others in q's dtype (the tangents may come in another), contiguous."""
    return tuple((x if x.dtype == q.dtype else x.to(q.dtype)).contiguous() for x in (q, *others))


def attention_jvp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tq: torch.Tensor, tk: torch.Tensor,
                  tv: torch.Tensor, scale: float | None = None, backend: str = "auto",
                  in_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, Ȯ) for explicit tangents q̇, k̇, v̇, without ``torch.func.jvp``: the same function and derivative as
    ``torch.func.jvp(attention, (q, k, v), (tq, tk, tv))`` (docs/THEORY.md §9), for callers that carry tangents by hand.

    Reverse mode flows through both outputs to all six inputs (Triton: one Function for O and Ȯ whose backward
    receives both upstream gradients and runs one fused pass through O and Ȯ, docs/KERNEL.md §3, where
    ``torch.func.jvp`` of :func:`attention` runs two; reference: autograd through the closed form
    :func:`~kernels.reference.attention_reference_jvp`). Forward-mode derivatives of the Triton (O, Ȯ) raise (Ȯ's
    are second derivatives of attention); the reference has them. The Triton call is kept out of compiled regions
    (a graph break), like :func:`attention`, unless ``in_graph`` (as for :func:`attention`: custom operators that
    ``torch.compile`` keeps in its graph, reverse mode only); the reference is plain operators and may be compiled.
    """
    _check(q, k, v, backend)
    for name, t, x in (("tq", tq, q), ("tk", tk, k), ("tv", tv, v)):
        if not isinstance(t, torch.Tensor) or t.shape != x.shape:
            raise ValueError(f"attention_jvp: {name} must be a tensor of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    scale = _resolve_scale(q, scale)
    if backend == "reference" or (backend == "auto" and q.device.type != "cuda"):
        return attention_reference_jvp(q, k, v, tq, tk, tv, scale)
    _check_triton(q)
    if in_graph:
        _refuse_transforms("attention_jvp", q, k, v, tq, tk, tv)
        return _ops.attention_jvp_fwd(*_kernel_inputs(q, k, v, tq, tk, tv), scale)[:2]
    return _triton_attention_jvp(q, k, v, tq, tk, tv, scale)
