"""STRIDE in the runner: typed model/data configs and the function that builds module + data."""
from __future__ import annotations

from datamodules.stride import StrideDataConfig, StrideDataModule
from experiments.papers import Paper
from lightning_modules.stride.config import StrideConfig
from lightning_modules.stride.module import StrideModule


def build(cfg) -> tuple[StrideModule, StrideDataModule]:
    model, data_cfg = cfg.model, cfg.data
    if data_cfg.window != model.window:
        raise ValueError(f"data.window={data_cfg.window} must equal model.window={model.window}")
    if model.features == "feats" and not data_cfg.use_feats:
        raise ValueError("model.features: 'feats' reads precomputed features; set data.use_feats: true")
    if model.features != "feats" and data_cfg.use_feats:
        raise ValueError(f"data.use_feats: true, but model.features is {model.features!r}; use 'feats'")
    if data_cfg.response_gap_s != model.streaming.close_gap_s:
        raise ValueError(f"data.response_gap_s={data_cfg.response_gap_s} must equal model.streaming.close_gap_s="
                         f"{model.streaming.close_gap_s}: LIVE is taught to answer when STRIDE's rule would")
    data = StrideDataModule(data_cfg)
    vocab = data.tokenizer.get_vocab_size()
    if vocab > model.vocab_size:
        raise ValueError(f"model.vocab_size: {model.vocab_size} is smaller than the tokenizer's {vocab} tokens "
                         f"({data_cfg.tokenizer or data_cfg.root})")
    return StrideModule(model, response_gap_s=data_cfg.response_gap_s), data


PAPER = Paper(name="stride", model_config=StrideConfig, data_config=StrideDataConfig, build=build)
