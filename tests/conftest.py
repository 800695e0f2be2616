"""Shared pytest configuration: GPU and slow markers, deterministic float64 defaults."""
import os

import pytest
import torch
from hypothesis import settings

# Timing-based deadlines are meaningless on a shared 2-core machine; in CI, examples are derandomized so a
# submission's result does not depend on the draw (failures found locally are kept in .hypothesis/).
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# `kernels` reads TRITON_INTERPRET when first imported (full_scale.model.dit imports it too): without a GPU the Triton
# kernels run in the interpreter, so the CPU tests exercise the same kernels as the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU, launch one fixed configuration per kernel instead of autotuning, which compiles and times 6-8 of them per
# kernel, head size, dtype and length bucket (the likely reason the GPU suite ran past 8 minutes);
# tests/test_attention_configs.py launches each of the others. KERNELS_AUTOTUNE=1 in the environment keeps
# autotuning. Set here, before any test module imports `kernels` (kernels/_config.py reads it once).
os.environ.setdefault("KERNELS_AUTOTUNE", "0")

# Two cores on CI and two pytest-xdist workers: one intra-op thread per worker avoids oversubscription.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture
def float64():
    """Run a test with float64 as torch's default dtype (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device available")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
