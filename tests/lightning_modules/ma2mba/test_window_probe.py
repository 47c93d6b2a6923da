"""The window probe: own-frames vs other-frames answer NLL on windows of scenes."""
from __future__ import annotations

import math

import torch

from experiments import config as config_lib
from experiments.papers.ma2mba import build
from lightning_modules.ma2mba.window_probe import own_vs_other_nll, window_items


def test_probe_compares_a_window_with_its_own_and_with_other_frames(ma2mba_world, shrink):
    torch.manual_seed(0)
    cfg = config_lib.load("ma2mba/tiny_stage2_clips", [f"data.root={ma2mba_world}", "data.clip_scenes=[1,1]", *shrink])
    module, data = build(cfg)
    items = window_items(data, "val", 6)
    assert len(items) == 6
    frames = data.frame
    # One scene's frames per item (each val video has 2-3 scenes), one placeholder per frame.
    assert all(int((it["input_ids"] == frames).sum()) == it["video"].shape[0] for it in items)
    model = module.eval().model
    # Its own frames as the "other" ones: the same NLL, exactly.
    own, other = own_vs_other_nll(model, items[:1])
    assert own == other and math.isfinite(own)
    # Other windows' frames change what the (random) model predicts.
    own, other = own_vs_other_nll(model, items, seed=1)
    assert math.isfinite(own) and math.isfinite(other) and own != other
