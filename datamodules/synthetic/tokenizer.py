"""A byte-level BPE tokenizer trained on the synthetic world's text, saved as DIR/tokenizer.json."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from datamodules.common.text import SPECIAL_TOKENS

# Chat scaffolding the papers' prompts use, so its words get merges too.
PROMPT_TEXT = (
    "You are a helpful assistant that watches long videos.",
    "Answer with the option's letter from the given choices directly.",
    "Describe this scene.", "Watch the video and answer the question.",
    "Options:", "A.", "B.", "C.", "D.", "Answer:", "yes", "no",
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> Tokenizer:
    """Byte-level BPE; the special tokens take ids 0..7 in the order of `SPECIAL_TOKENS`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(texts) + list(PROMPT_TEXT), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != i:
            raise AssertionError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {i}")
    return tokenizer


def sample_texts(sample: dict) -> list[str]:
    """Every string of a `longwatch/v1` sample a model reads or writes."""
    texts = [seg["caption"] for seg in sample["segments"]]
    for item in sample["qa"]:
        texts += [item["question"], *item["options"]]
    texts += [item["query"] for item in sample["streaming"]]
    return texts


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> Path:
    path = Path(directory) / "tokenizer.json"
    tokenizer.save(str(path))
    return path
