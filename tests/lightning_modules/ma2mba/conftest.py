"""A very small synthetic world for the Video-Ma²mba smoke tests, written once per session."""
from __future__ import annotations

import pytest

from datamodules.synthetic import GenerateConfig, WorldConfig, generate
from datamodules.synthetic.world import QA_TEMPLATES


@pytest.fixture(scope="session")
def ma2mba_world(tmp_path_factory):
    """DIR with train (4 videos of 12-20 s, 2 shards), val and test (2 videos each), feats and the tokenizer;
    every question type, as data/synthetic-ma2mba asks."""
    root = tmp_path_factory.mktemp("ma2mba_world")
    generate(GenerateConfig(out=str(root), videos=4, eval_videos=2, seed=1, shard_size=2, workers=1, feats=True),
             WorldConfig(minutes=(0.2, 0.33), scenes=(2, 3), qa_per_video=3, qa_templates=QA_TEMPLATES), progress=False)
    return root


@pytest.fixture
def shrink() -> list[str]:
    """Overrides that shrink the tiny configs to a smoke-test model: one small layer, two steps."""
    return ["model.lm.d_model=32", "model.lm.n_layer=1", "model.lm.d_state=8", "model.lm.headdim=16",
            "model.lm.chunk_size=16", "model.vision.hidden_size=16", "model.vision.layers=1", "model.vision.heads=2",
            "data.batch_size=1", "trainer.max_steps=2", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
