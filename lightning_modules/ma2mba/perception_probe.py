"""Can a frame's content be read from what the LM is given? The perception probe.

Each 1-FPS frame of the synthetic world is labelled from the sample's true state (`meta.scenes`): its
background's tint and texture, the colours on screen, and the (colour, shape) pairs on screen. A classifier
trained on the train split's frames names them on val's frames; the exact-match rate of each label group says
how much of it that input exposes, at least. `--input feats` reads the world's precomputed features (what the
tiny default feeds the projector) with an MLP; `--input pixels` decodes the frames and uses a small CNN, the
upper end of what a frozen encoder could give.

    python -m lightning_modules.ma2mba.perception_probe --root data/synthetic --input feats
    python -m lightning_modules.ma2mba.perception_probe --root data/synthetic --input pixels --frames 30000
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from datamodules.common.shards import shard_paths
from datamodules.common.wds import DataError, ShardDataConfig, decode_sample, read_shard
from datamodules.synthetic.world import COLOURS, SHAPES, TEXTURES, TINTS

PAIRS = [f"{c} {s}" for c in COLOURS for s in SHAPES]
GROUPS = {"tint": list(TINTS), "texture": list(TEXTURES), "colours": list(COLOURS), "colour-shape pairs": PAIRS}


def frame_labels(scenes: list[dict], t: int) -> np.ndarray | None:
    """Multi-hot labels of second t (absolute, as meta.scenes' times), groups in GROUPS order; None between scenes."""
    scene = next((s for s in scenes if s["start"] <= t < s["end"]), None)
    if scene is None:
        return None
    on_screen = [s for s in scene["shapes"] if s["appear"] <= t < s["vanish"]]
    hot = {"tint": {scene["tint"]}, "texture": {scene["texture"]}, "colours": {s["colour"] for s in on_screen},
           "colour-shape pairs": {f"{s['colour']} {s['shape']}" for s in on_screen}}
    return np.concatenate([np.isin(names, list(hot[g])).astype(np.float32) for g, names in GROUPS.items()])


def load_frames(root: str, split: str, pixels: bool, limit: int, every: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (feats (N, D) float32, or frames (N, 3, H, W) float32 in [0, 1]) and labels (N, #labels) of a split."""
    cfg = ShardDataConfig(root=root, use_feats=not pixels)
    directory = Path(root, split)
    shards = shard_paths(directory)
    if not shards:
        raise FileNotFoundError(f"no shards in {directory}")

    def labelled_frames():
        for shard in tqdm(shards, desc=f"{split} frames", leave=False):
            for raw in read_shard(shard):
                if isinstance(raw, DataError):
                    raise raw
                sample = decode_sample(raw, cfg)
                video, scenes = sample["frames"] if pixels else sample["feats"], sample["json"]["meta"]["scenes"]
                for t in range(0, len(video), every):
                    y = frame_labels(scenes, t)
                    if y is not None:
                        yield torch.as_tensor(np.asarray(video[t])), torch.from_numpy(y)

    pairs = list(itertools.islice(labelled_frames(), limit))
    if not pairs:
        raise ValueError(f"no frame of {directory} lies inside a scene of its meta.scenes")
    x, y = (torch.stack(column) for column in zip(*pairs))
    return (x.permute(0, 3, 1, 2).float() / 255 if pixels else x.float()), y


def classifier(x: torch.Tensor, outputs: int) -> nn.Module:
    if x.dim() == 2:  # features: the projector's shape, wider
        return nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Linear(256, 128), nn.GELU(), nn.Linear(128, outputs))
    side = x.shape[-1] // 8
    return nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
                         nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(), nn.Flatten(), nn.Linear(64 * side * side, 256),
                         nn.GELU(), nn.Linear(256, outputs))


def probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], steps: int,
          batch: int = 256, seed: int = 0) -> dict[str, float]:
    """Train on `train`, return each group's exact-match rate on `val` (every label of the group right)."""
    torch.manual_seed(seed)
    (x, y), (vx, vy) = train, val
    net = classifier(x, y.shape[1])
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
    for _ in tqdm(range(steps), desc="probe", leave=False):
        idx = torch.randint(len(x), (batch,))
        loss = F.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        right = torch.cat([net(vx[i:i + 512]) for i in range(0, len(vx), 512)]) > 0
    rates, start = {}, 0
    for group, names in GROUPS.items():
        end = start + len(names)
        rates[group] = (right[:, start:end] == (vy[:, start:end] > 0)).all(1).float().mean().item()
        start = end
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--input", choices=("feats", "pixels"), default="feats")
    parser.add_argument("--frames", type=int, default=100_000, help="train frames at most (val: an eighth)")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)
    pixels = args.input == "pixels"
    every = 2 if pixels else 1  # neighbouring seconds look alike; pixels cost memory
    train = load_frames(args.root, "train", pixels, args.frames, every)
    val = load_frames(args.root, "val", pixels, max(1, args.frames // 8), every)
    rates = probe(train, val, args.steps)
    print(f"{args.input}: {tuple(train[0].shape[1:])} per frame, {len(train[0])} train / {len(val[0])} val frames, "
          f"{args.steps} steps")
    print("| label group | val exact match |\n|---|---|")
    for group, rate in rates.items():
        print(f"| {group} | {rate:.3f} |")


if __name__ == "__main__":
    main()
