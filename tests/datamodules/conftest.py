"""Shared fixtures: a tiny synthetic world written once per session (seconds on 2 cores)."""
from __future__ import annotations

import pytest

from datamodules.synthetic import GenerateConfig, WorldConfig, generate

TINY_WORLD = dict(minutes=(1.0, 1.5), scenes=(3, 5))


def write_tiny_world(out, seed=0, feats=True, videos=6, eval_videos=3, shard_size=2, **world):
    cfg = GenerateConfig(out=str(out), videos=videos, eval_videos=eval_videos, seed=seed, shard_size=shard_size,
                         feats=feats, workers=1)
    return generate(cfg, WorldConfig(**{**TINY_WORLD, **world}), progress=False)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """DIR with train (6 videos, 3 shards), val and test (3 videos, 2 shards each), feats included."""
    root = tmp_path_factory.mktemp("tiny_world")
    write_tiny_world(root)
    return root
