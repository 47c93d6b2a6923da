"""Kernel tests: Triton runs in the interpreter on CPU-only machines; helpers importable.

TRITON_INTERPRET must be set before any @triton.jit in kernels/ is evaluated; kernels.ssd
imports its Triton module lazily, so setting it here, at collection, is early enough.
On a CUDA machine we leave it unset so the `gpu` tier compiles real kernels.
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest runs with --import-mode=importlib, which does not put test folders on sys.path;
# the shared SSD inputs and tolerances live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
