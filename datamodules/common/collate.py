"""Padding helpers for collating variable-length videos and token sequences."""
from __future__ import annotations

from typing import Sequence

import torch


def pad_sequences(items: Sequence[torch.Tensor], pad_value: float = 0, max_length: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a list of (T_i, ...) tensors along dim 0.

    Returns:
        padded: (B, T_max, ...) with `pad_value` after each item's end, T_max = max T_i (or `max_length`,
            which must be >= every T_i);
        mask: (B, T_max) bool, True on real positions.
    """
    if not items:
        raise ValueError("pad_sequences needs at least one tensor")
    trailing, dtype = items[0].shape[1:], items[0].dtype
    for i, item in enumerate(items):
        if item.shape[1:] != trailing or item.dtype != dtype:
            raise ValueError(f"item {i} has shape {tuple(item.shape)} {item.dtype}; expected (T, "
                             f"{', '.join(map(str, trailing))}) {dtype} like item 0")
    lengths = torch.tensor([item.shape[0] for item in items])
    longest = int(lengths.max())
    if max_length is not None:
        if max_length < longest:
            raise ValueError(f"max_length {max_length} < longest item {longest}")
        longest = max_length
    padded = items[0].new_full((len(items), longest, *trailing), pad_value)
    for i, item in enumerate(items):
        padded[i, :item.shape[0]] = item
    return padded, lengths_to_mask(lengths, longest)


def lengths_to_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, max_length) bool mask, True where position < length."""
    max_length = int(lengths.max()) if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]
