"""Tokenizer loading shared by every paper: a `tokenizers` JSON file or a local HF tokenizer dir."""
from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer

# The contract's special tokens, in id order (`<|pad|>` is id 0 in tokenizers we train).
SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                  "<|frame|>", "<|segment|>", "<|mask|>")


def load_tokenizer(path_or_dir: str | os.PathLike) -> Tokenizer:
    """Load `tokenizer.json`, or `DIR/tokenizer.json` when given a directory (our data root or an HF dir).

    Never downloads: a missing path is a FileNotFoundError naming it.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (give a tokenizer.json file or a directory holding one; "
                                "`python -m datamodules.synthetic` writes DIR/tokenizer.json)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"{path}: not a valid `tokenizers` file: {error}") from error


def missing_special_tokens(tokenizer: Tokenizer) -> list[str]:
    """The contract's special tokens absent from `tokenizer` (an HF tokenizer may need them added)."""
    return [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
