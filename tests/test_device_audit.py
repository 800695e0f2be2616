"""tests/device_audit.py, the CPU stand-in for a GPU's device checks, finds what a GPU would refuse and nothing else."""
import numpy as np
import torch

from device_audit import DeviceAudit


def test_mixes_and_numpy_of_device_tensors_are_found_and_legal_uses_are_not():
    existing = torch.ones(3)  # made before the audit: a device tensor (e.g. a model's weights)
    with DeviceAudit() as audit:
        x = torch.randn(3, device="cpu")  # device
        host = torch.arange(3.0)  # host: no device argument
        scalar = torch.tensor(2.0)  # host, 0-dim: CUDA accepts it
        ok = [x * scalar, x[torch.tensor([0, 2])], host.to(x.device) + x, torch.zeros_like(x) + existing,
              torch.as_tensor(x) + x, torch.as_tensor(np.ones(3), device=x.device) + x, host.cpu() + host]
        assert audit.findings == {}, audit.findings
        _ = x + host
        first = dict(audit.findings)
        _ = existing.numpy()
    assert len(ok) == 7 and len(first) == 1 and "add mixes a device tensor with a host tensor of shape (3,)" in \
        next(iter(first.values()))
    assert any(".numpy() of a device tensor" in v for v in audit.findings.values()), audit.findings
    assert len(audit.findings) == 2  # each finding names the line that made it (here: this file is not project code)
