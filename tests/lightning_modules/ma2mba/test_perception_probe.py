"""The perception probe: frame labels from the true state, and a classifier that reports per label group."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from datamodules.common.wds import DataError, read_shard
from lightning_modules.ma2mba.perception_probe import GROUPS, PAIRS, frame_labels, load_frames, probe

SCENES = [
    {"start": 0, "end": 4, "tint": "navy", "texture": "striped", "shapes": [
        {"colour": "red", "shape": "circle", "appear": 0, "vanish": 4},
        {"colour": "blue", "shape": "cross", "appear": 2, "vanish": 4}]},
    {"start": 4, "end": 6, "tint": "grey", "texture": "plain", "shapes": [
        {"colour": "red", "shape": "square", "appear": 4, "vanish": 5}]},
]


def named(labels: np.ndarray) -> dict[str, set[str]]:
    out, start = {}, 0
    for group, names in GROUPS.items():
        out[group] = {n for n, bit in zip(names, labels[start:start + len(names)]) if bit}
        start += len(names)
    return out


def test_frame_labels_follow_the_state_second_by_second():
    assert named(frame_labels(SCENES, 1)) == {"tint": {"navy"}, "texture": {"striped"}, "colours": {"red"},
                                              "colour-shape pairs": {"red circle"}}
    assert named(frame_labels(SCENES, 2))["colour-shape pairs"] == {"red circle", "blue cross"}
    assert named(frame_labels(SCENES, 4)) == {"tint": {"grey"}, "texture": {"plain"}, "colours": {"red"},
                                              "colour-shape pairs": {"red square"}}
    assert named(frame_labels(SCENES, 5))["colours"] == set()  # the square left at 5
    assert frame_labels(SCENES, 6) is None
    assert len(frame_labels(SCENES, 0)) == sum(len(n) for n in GROUPS.values()) and len(PAIRS) == 40


def test_load_frames_labels_every_second_of_every_scene(ma2mba_world):
    x, y = load_frames(str(ma2mba_world), "val", pixels=False, limit=10_000)
    seconds = 0
    for shard in sorted((ma2mba_world / "val").glob("shard-*.tar")):
        for raw in read_shard(shard):
            seconds += sum(s["end"] - s["start"] for s in json.loads(raw.members["json"])["meta"]["scenes"])
    assert len(x) == len(y) == seconds and x.dim() == 2
    tint = slice(0, len(GROUPS["tint"]))
    assert (y[:, tint].sum(1) == 1).all()  # exactly one background tint per frame
    pixels, _ = load_frames(str(ma2mba_world), "val", pixels=True, limit=5, every=2)
    assert pixels.shape[0] == 5 and pixels.shape[1] == 3 and 0 <= pixels.min() and pixels.max() <= 1


def test_probe_reads_what_the_input_shows_and_not_what_it_hides():
    """Inputs that carry the tint and texture bits but not the shapes: those two groups are learnt, pairs are not."""
    gen = torch.Generator().manual_seed(0)
    n, sizes = 3000, [len(v) for v in GROUPS.values()]

    def split(count):
        y = torch.cat([torch.nn.functional.one_hot(torch.randint(s, (count,), generator=gen), s).float()
                       for s in sizes[:2]]
                      + [(torch.rand(count, s, generator=gen) < 0.2).float() for s in sizes[2:]], dim=1)
        return y[:, :sizes[0] + sizes[1]] + 0.1 * torch.randn(count, sizes[0] + sizes[1], generator=gen), y

    rates = probe(split(n), split(500), steps=300)
    assert rates["tint"] > 0.95 and rates["texture"] > 0.95
    assert rates["colour-shape pairs"] < 0.2  # 40 independent bits at 0.2: all right by chance is rare
    assert set(rates) == set(GROUPS)


def test_missing_split_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/train"):
        load_frames(str(tmp_path / "nowhere"), "train", pixels=False, limit=1)


def test_a_truncated_shard_is_an_error_naming_it(ma2mba_world, tmp_path):
    shutil.copytree(ma2mba_world / "val", tmp_path / "val")
    shard = sorted((tmp_path / "val").glob("shard-*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(DataError, match=f"{shard.name}.*corrupt or truncated"):
        load_frames(str(tmp_path), "val", pixels=False, limit=10_000)
