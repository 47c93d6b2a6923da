import pytest
import torch

from datamodules.common.collate import lengths_to_mask, pad_sequences


def test_pad_sequences_matches_a_loop():
    items = [torch.randn(t, 3, 2) for t in (4, 1, 6)]
    padded, mask = pad_sequences(items, pad_value=-1.0)
    assert padded.shape == (3, 6, 3, 2) and mask.shape == (3, 6)
    for i, item in enumerate(items):
        assert torch.equal(padded[i, :len(item)], item)
        assert (padded[i, len(item):] == -1).all()
        assert mask[i].tolist() == [j < len(item) for j in range(6)]


def test_pad_sequences_checks():
    with pytest.raises(ValueError, match="item 1"):
        pad_sequences([torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="max_length"):
        pad_sequences([torch.zeros(5)], max_length=3)
    assert pad_sequences([torch.zeros(2, dtype=torch.uint8)], max_length=4)[0].shape == (1, 4)
    assert lengths_to_mask(torch.tensor([0, 2]), 3).tolist() == [[False] * 3, [True, True, False]]
