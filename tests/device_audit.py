"""A CPU stand-in for "does this code keep every tensor on the caller's device?" (tests only).

On a GPU, an operation that mixes a CUDA tensor with a CPU tensor of one or more dimensions fails, and so does
``.numpy()`` of a CUDA tensor; on a CPU-only machine both pass silently, so a GPU run is the first to find them.
:class:`DeviceAudit` finds them on the CPU. It tags every tensor as *device* (an input, or made with an explicit
``device=``, ``.to(device)``, ``*_like`` of a device tensor, or computed from one) or *host* (made by a factory with no
``device=`` argument, by ``.cpu()``, or computed from host tensors only), and records each operation that combines a
device tensor with a host tensor of ≥ 1 dimension (CUDA accepts 0-dim CPU tensors, and CPU index tensors in
``t[idx]``), and each ``.numpy()`` of a device tensor, with the first frame of the project's code that called it.
Tensors that existed before the audit started count as device tensors.
"""
from __future__ import annotations

import sys
import weakref
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

REPO = str(Path(__file__).resolve().parents[1])
FACTORIES = {torch.randn, torch.rand, torch.randint, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
             torch.linspace, torch.logspace, torch.tensor, torch.as_tensor, torch.eye, torch.from_numpy,
             torch.randperm, torch.normal}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
# Where a host tensor is fine: moving data, and reading a value out
MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu, torch.Tensor.copy_}


class DeviceAudit(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.host: dict[int, tuple[weakref.ref, str]] = {}  # id → (weak reference, where it was made)
        self.findings: dict[str, str] = {}  # "file:line" → what happened

    def _where(self) -> str:
        """The innermost calling frame of the project's own code (tests count only when nothing else does)."""
        frame, test_frame = sys._getframe(2), None
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(REPO) and name != __file__ and "/.venv/" not in name:
                if "/tests/" not in name:
                    return f"{name[len(REPO) + 1:]}:{frame.f_lineno}"
                test_frame = test_frame or f"{name[len(REPO) + 1:]}:{frame.f_lineno}"
            frame = frame.f_back
        return test_frame or "?"

    def _is_host(self, t) -> bool:
        entry = self.host.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry is not None and entry[0]() is t

    def _mark_device(self, t) -> None:
        if isinstance(t, torch.Tensor):
            self.host.pop(id(t), None)

    def _mark_host(self, t, origin: str) -> None:
        if isinstance(t, torch.Tensor):
            key = id(t)
            self.host[key] = (weakref.ref(t, lambda _, key=key: self.host.pop(key, None)), origin)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [t for a in (*args, *kwargs.values()) for t in (a if isinstance(a, (list, tuple)) else (a,))
                   if isinstance(t, torch.Tensor)]  # one level of lists: how torch functions take tensors
        if func in FACTORIES:
            host = "device" not in kwargs and not (func is torch.as_tensor and tensors and not self._is_host(tensors[0]))
        elif func is torch.Tensor.cpu:
            host = True
        elif func in (torch.Tensor.to, torch.Tensor.cuda) and (
                func is torch.Tensor.cuda or "device" in kwargs
                or any(isinstance(a, (torch.device, str)) for a in args[1:])):
            host = False
        elif func is torch.Tensor.numpy:
            if tensors and not self._is_host(tensors[0]):
                self.findings.setdefault(self._where(), ".numpy() of a device tensor")
            return out
        else:
            dev = [t for t in tensors if not self._is_host(t)]
            big_host = [t for t in tensors if self._is_host(t) and t.dim() > 0]
            if dev and big_host and func not in INDEXING and func not in MOVES:
                name = getattr(func, "__name__", str(func))
                self.findings.setdefault(self._where(), f"{name} mixes a device tensor with a host tensor of shape "
                                                        f"{tuple(big_host[0].shape)} made at "
                                                        f"{self.host[id(big_host[0])][1]}")
            host = bool(tensors) and not dev
        if host:  # where host-ness began: this call for a factory, else the first host input's origin
            hosts = [t for t in tensors if self._is_host(t)]
            origin = self.host[id(hosts[0])][1] if hosts and func not in FACTORIES else self._where()
            tree_map(lambda t: self._mark_host(t, origin), out)
        else:
            tree_map(self._mark_device, out)  # .to(device) may return its input itself
        return out
