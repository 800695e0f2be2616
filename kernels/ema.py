"""Two exponential moving averages of one set of weights in one pass (docs/THEORY.md §3, item 1; docs/KERNEL.md §9).

For every tensor i of the weights θ and the two averages a, b:

    a_i ← lerp(a_i, θ_i, w_a),   b_i ← lerp(b_i, θ_i, w_b),   lerp(e, θ, w) = e + w·(θ − e)   (w < ½)
                                                                           = θ − (1 − w)·(θ − e)  (w ≥ ½)

with w = 1 − rate (``torch.lerp``'s two branches, so the result matches ``torch._foreach_lerp_``). Two
``_foreach_lerp_`` calls read θ twice: 6 passes over the weights' bytes (read a, θ, write a; read b, θ, write b).
This kernel reads θ once: 5 passes. One launch covers every tensor of one dtype: each program takes ``BLOCK``
elements of one tensor, and a table built once per set of tensors (cached on their addresses, sizes and dtypes)
tells it which tensor, from which element, and where the three tensors live.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Sequence

import torch
import triton
import triton.language as tl

from . import _config

BLOCK = 2048
_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _lerp(e, theta, w):
    d = theta - e
    return tl.where(w < 0.5, e + w * d, theta - (1.0 - w) * d)


@triton.jit
def _two_lerps_kernel(chunk_tensor, chunk_start, numel, theta_ptrs, a_ptrs, b_ptrs, w_a, w_b, skip,
                      DTYPE: tl.constexpr, BLOCK: tl.constexpr, HAS_SKIP: tl.constexpr):
    if HAS_SKIP:
        if tl.load(skip) != 0:  # a step the host has not read yet turned out not finite: write nothing
            return
    c = tl.program_id(0)
    i = tl.load(chunk_tensor + c)
    start = tl.multiple_of(tl.load(chunk_start + c), BLOCK)
    n = tl.load(numel + i)
    # Every address is a multiple of 16 bytes (checked when the plan is made), so whole chunks load 16 B at a time.
    theta_ptr = tl.multiple_of(tl.load(theta_ptrs + i).to(tl.pointer_type(DTYPE)), 16)
    a_ptr = tl.multiple_of(tl.load(a_ptrs + i).to(tl.pointer_type(DTYPE)), 16)
    b_ptr = tl.multiple_of(tl.load(b_ptrs + i).to(tl.pointer_type(DTYPE)), 16)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        theta = tl.load(theta_ptr + offs).to(tl.float32)
        tl.store(a_ptr + offs, _lerp(tl.load(a_ptr + offs).to(tl.float32), theta, w_a).to(DTYPE))
        tl.store(b_ptr + offs, _lerp(tl.load(b_ptr + offs).to(tl.float32), theta, w_b).to(DTYPE))
    else:  # the tensor's last, partial chunk
        mask = offs < n
        theta = tl.load(theta_ptr + offs, mask=mask).to(tl.float32)
        tl.store(a_ptr + offs, _lerp(tl.load(a_ptr + offs, mask=mask).to(tl.float32), theta, w_a).to(DTYPE),
                 mask=mask)
        tl.store(b_ptr + offs, _lerp(tl.load(b_ptr + offs, mask=mask).to(tl.float32), theta, w_b).to(DTYPE),
                 mask=mask)


def runs_on(device: torch.device | str) -> bool:
    """Whether :func:`lerp_two_` can run on ``device``: CUDA, or any device under ``TRITON_INTERPRET=1``."""
    return torch.device(device).type == "cuda" or _config.INTERPRET


def _check(params: list[torch.Tensor], ema_a: list[torch.Tensor], ema_b: list[torch.Tensor]) -> None:
    for j, p in enumerate(params):
        if p.dtype not in _DTYPES:
            raise TypeError(f"params[{j}]: expected one of {sorted(map(str, _DTYPES))}, got {p.dtype}")
        if p.device != params[0].device:
            raise ValueError(f"params[{j}]: expected every tensor on {params[0].device}, got {p.device}")
    for name, tensors in (("params", params), ("ema_a", ema_a), ("ema_b", ema_b)):
        if len(tensors) != len(params):
            raise ValueError(f"{name}: expected {len(params)} tensors (one per weight), got {len(tensors)}")
        for j, (t, p) in enumerate(zip(tensors, params)):
            if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                raise ValueError(f"{name}[{j}]: expected {tuple(p.shape)} {p.dtype} on {p.device} like "
                                 f"params[{j}], got {tuple(t.shape)} {t.dtype} on {t.device}")
            if not t.is_contiguous():
                raise ValueError(f"{name}[{j}]: expected a contiguous tensor")
            if t.data_ptr() % 16:
                raise ValueError(f"{name}[{j}]: expected data at an address that is a multiple of 16 bytes (a tensor "
                                 "of its own, not a view at an offset); use torch._foreach_lerp_ for such tensors")
    if params and not runs_on(params[0].device):
        raise RuntimeError(f"lerp_two_: tensors on {params[0].device} need TRITON_INTERPRET=1 set before "
                           "`kernels` is imported (or use torch._foreach_lerp_)")


def _plan(device: torch.device, ptrs, numels, dtypes) -> list[tuple[torch.dtype, tuple[torch.Tensor, ...]]]:
    """Per dtype: (chunk → tensor index, chunk → first element, numel, θ / a / b addresses) on ``device``."""
    plan = []
    for dtype in dict.fromkeys(dtypes):
        idx = [j for j, d in enumerate(dtypes) if d == dtype]
        chunk_tensor, chunk_start = [], []
        for i, j in enumerate(idx):
            starts = range(0, numels[j], BLOCK)
            chunk_tensor.extend([i] * len(starts))
            chunk_start.extend(starts)
        if not chunk_tensor:
            continue
        as_tensor = functools.partial(torch.tensor, dtype=torch.int64, device=device)
        addresses = [as_tensor([ptrs[j][k] for j in idx]) for k in range(3)]
        plan.append((dtype, (torch.tensor(chunk_tensor, dtype=torch.int32, device=device), as_tensor(chunk_start),
                             as_tensor([numels[j] for j in idx]), *addresses)))
    return plan


# The last few plans, keyed on the tensors' addresses, sizes and dtypes (a new optimizer state, a model moved to
# another device or weights loaded with ``assign=True`` give new addresses, hence a new, checked plan).
_PLANS: OrderedDict = OrderedDict()
_MAX_PLANS = 4


@torch.no_grad()
def lerp_two_(ema_a: Sequence[torch.Tensor], ema_b: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
              weight_a: float, weight_b: float, skip: torch.Tensor | None = None) -> None:
    """In place: ``ema_a[i].lerp_(params[i], weight_a)`` and ``ema_b[i].lerp_(params[i], weight_b)`` for every i,
    reading each ``params[i]`` once. Tensors: contiguous, float32/bfloat16/float16 (computed in float32), on CUDA
    (or on the CPU under ``TRITON_INTERPRET=1``); ``ema_a[i]`` and ``ema_b[i]`` have the shape, dtype and device of
    ``params[i]``, and no two tensors share memory. The checks run once per set of tensors (by address).

    ``skip``: a one-element tensor on the tensors' device, read by the kernel: where it is non-zero nothing is
    written. It lets a trainer launch the update before the host knows whether the step was finite."""
    for name, w in (("weight_a", weight_a), ("weight_b", weight_b)):
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"{name}: expected an interpolation weight in [0, 1], got {w}")
    params, ema_a, ema_b = list(params), list(ema_a), list(ema_b)
    if skip is not None and (skip.numel() != 1 or (params and skip.device != params[0].device)):
        raise ValueError(f"skip: expected one element on the tensors' device, got {tuple(skip.shape)} on "
                         f"{skip.device}")
    if len(ema_a) != len(params) or len(ema_b) != len(params):
        _check(params, ema_a, ema_b)
    if not params:
        return
    key = (params[0].device, tuple((p.data_ptr(), a.data_ptr(), b.data_ptr()) for p, a, b in zip(params, ema_a, ema_b)),
           tuple(p.numel() for p in params), tuple(p.dtype for p in params))
    plan = _PLANS.get(key)
    if plan is None:
        _check(params, ema_a, ema_b)
        plan = _PLANS[key] = _plan(*key)
        while len(_PLANS) > _MAX_PLANS:
            _PLANS.popitem(last=False)
    for dtype, tables in plan:
        _two_lerps_kernel[(tables[0].numel(),)](*tables, float(weight_a), float(weight_b),
                                                tables[0] if skip is None else skip, DTYPE=_DTYPES[dtype],
                                                BLOCK=BLOCK, HAS_SKIP=skip is not None)
