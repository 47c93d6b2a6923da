"""Test tiers: `make test` runs the CPU tier; `gpu`, `slow` and `slurm` tiers run on demand."""
import os

import pytest
import torch

# Without CUDA, Triton kernels run in the interpreter. It must be set before any @triton.jit in
# kernels/ is evaluated, and any test folder may import them (through a model), so set it here first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Deterministic, quiet, offline: no test may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
