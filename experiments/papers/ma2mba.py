"""Video-Ma²mba in the runner: typed model/data configs and the function that builds module + data."""
from __future__ import annotations

from datamodules.ma2mba import Ma2mbaDataConfig, Ma2mbaDataModule
from experiments.papers import Paper
from lightning_modules.ma2mba.config import Ma2mbaConfig
from lightning_modules.ma2mba.model import SpecialTokens
from lightning_modules.ma2mba.module import Ma2mbaModule


def build(cfg) -> tuple[Ma2mbaModule, Ma2mbaDataModule]:
    data = Ma2mbaDataModule(cfg.data, stage=cfg.model.stage)
    if cfg.model.lm_path is None and data.vocab_size > cfg.model.lm.vocab_size:
        raise ValueError(f"model.lm.vocab_size: {cfg.model.lm.vocab_size} is smaller than the tokenizer's "
                         f"{data.vocab_size} tokens ({cfg.data.tokenizer or cfg.data.root})")
    if cfg.model.vision.mode == "feats" and not cfg.data.use_feats:
        raise ValueError("model.vision.mode: 'feats' reads precomputed features; set data.use_feats: true")
    if cfg.model.vision.mode != "feats" and cfg.data.use_feats:
        raise ValueError(f"data.use_feats: true, but model.vision.mode is {cfg.model.vision.mode!r}; use 'feats'")
    tokens = SpecialTokens(frame=data.frame, pad=data.pad, eot=data.eot)
    module = Ma2mbaModule(cfg.model, tokens, baselines=data.baselines("test"), decode=data.decode)
    return module, data


PAPER = Paper(name="ma2mba", model_config=Ma2mbaConfig, data_config=Ma2mbaDataConfig, build=build)
