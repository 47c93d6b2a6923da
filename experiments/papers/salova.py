"""SALOVA in the runner: typed model/data configs and the function that builds module + data."""
from __future__ import annotations

from dataclasses import replace

from datamodules.salova import SalovaDataConfig, SalovaDataModule
from experiments.papers import Paper
from lightning_modules.salova.config import SalovaConfig
from lightning_modules.salova.module import SalovaModule


def build(cfg) -> tuple[SalovaModule, SalovaDataModule]:
    data = SalovaDataModule(cfg.data)
    model_cfg = cfg.model
    if model_cfg.vision.mode == "feats" and not cfg.data.use_feats:
        raise ValueError("model.vision.mode: 'feats' reads precomputed features; set data.use_feats: true")
    if model_cfg.vision.mode != "feats" and cfg.data.use_feats:
        raise ValueError(f"data.use_feats: true, but model.vision.mode is {model_cfg.vision.mode!r}; use 'feats'")
    if cfg.data.max_frames_per_segment > model_cfg.connector.max_frames:
        raise ValueError(f"data.max_frames_per_segment ({cfg.data.max_frames_per_segment}) exceeds "
                         f"model.connector.max_frames ({model_cfg.connector.max_frames})")
    if model_cfg.text.mode == "world" and cfg.data.max_query_tokens > model_cfg.text.max_length:
        raise ValueError(f"data.max_query_tokens ({cfg.data.max_query_tokens}) exceeds model.text.max_length "
                         f"({model_cfg.text.max_length})")
    vocab = model_cfg.llm.vocab_size or data.vocab_size
    if vocab < data.vocab_size:
        raise ValueError(f"model.llm.vocab_size: {vocab} is smaller than the tokenizer's {data.vocab_size} tokens")
    model_cfg = replace(model_cfg, llm=replace(model_cfg.llm, vocab_size=vocab))
    return SalovaModule(model_cfg, vocab), data


PAPER = Paper(name="salova", model_config=SalovaConfig, data_config=SalovaDataConfig, build=build)
