"""A very small synthetic world for the Video-Ma²mba smoke tests, written once per session."""
from __future__ import annotations

import pytest

from datamodules.synthetic import GenerateConfig, WorldConfig, generate


@pytest.fixture(scope="session")
def ma2mba_world(tmp_path_factory):
    """DIR with train (4 videos of 12-20 s, 2 shards), val and test (2 videos each), feats and the tokenizer."""
    root = tmp_path_factory.mktemp("ma2mba_world")
    generate(GenerateConfig(out=str(root), videos=4, eval_videos=2, seed=1, shard_size=2, workers=1, feats=True),
             WorldConfig(minutes=(0.2, 0.33), scenes=(2, 3), qa_per_video=3), progress=False)
    return root
