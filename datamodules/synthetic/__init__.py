"""The synthetic long-video world (see world.py); `python -m datamodules.synthetic --help`."""
from .generate import GenerateConfig, generate, make_sample
from .world import WorldConfig

__all__ = ["GenerateConfig", "WorldConfig", "generate", "make_sample"]
