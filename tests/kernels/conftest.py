"""Kernel tests: helpers importable. (TRITON_INTERPRET is set in tests/conftest.py, before any
test folder can import a @triton.jit kernel.)"""
import sys
from pathlib import Path

# pytest runs with --import-mode=importlib, which does not put test folders on sys.path;
# the shared SSD inputs and tolerances live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
