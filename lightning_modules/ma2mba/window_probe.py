"""Does a trained Video-Ma²mba read the video, and over how many scenes? The window probe.

For windows of N consecutive scenes of the val videos it asks the questions the synthetic world
computes for that window alone (question first, as `data.clip_scenes` trains them) and compares
the answer's mean NLL after the window's own frames with the NLL after another window's frames
(resampled to the same length, so the prompt is unchanged). A model that reads the video scores
lower with its own frames; one that answers from priors scores the same.

    python -m lightning_modules.ma2mba.window_probe CKPT [key=value ...] --scenes 1 3 [--questions 200]

(config overrides such as data.fps=0.25 go before --scenes, which takes every number after it)
"""
from __future__ import annotations

import argparse
import random

import torch
from tqdm import tqdm

from datamodules.common.wds import DataError, decode_sample, read_shard


def window_items(data, split: str, limit: int) -> list[dict]:
    """Train-style question-first items (frames of a window, one question each) from `split`'s videos."""
    items = []
    for shard in data.shards(split):
        for raw in read_shard(shard):
            if isinstance(raw, DataError):
                raise raw
            items += data.map_sample(decode_sample(raw, data.cfg), "train")
            if len(items) >= limit:
                return items[:limit]
    return items


@torch.no_grad()
def own_vs_other_nll(model, items: list[dict], seed: int = 0) -> tuple[float, float]:
    """Mean answer NLL with each item's own frames, and with another item's frames resampled to its length."""
    rng = random.Random(seed)
    own = other = 0.0
    for item in tqdm(items, desc="window probe", leave=False):
        donor = items[rng.randrange(len(items))]["video"]
        stretch = torch.linspace(0, donor.shape[0] - 1, item["video"].shape[0]).round().long()
        ids, labels = item["input_ids"][None], item["labels"][None]
        own += model(ids, labels, [item["video"]])[0].item()
        other += model(ids, labels, [donor[stretch]])[0].item()
    return own / len(items), other / len(items)


def main(argv=None) -> None:
    from experiments import config as config_lib
    from experiments.papers.ma2mba import build

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--exp", default="ma2mba/tiny_stage2_clips", help="config the checkpoint was trained with")
    parser.add_argument("--scenes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. data.root=...)")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    print("| scenes per window | questions | answer NLL, own frames | answer NLL, other frames |")
    print("|---|---|---|---|")
    for n in args.scenes:
        overrides = [*args.overrides, "data.question_first=true", f"data.clip_scenes=[{n},{n}]"]
        module, data = build(config_lib.load(args.exp, overrides))
        module.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=False)["state_dict"])
        items = window_items(data, "val", args.questions)
        own, other = own_vs_other_nll(module.eval().model, items)
        print(f"| {n} | {len(items)} | {own:.3f} | {other:.3f} |")


if __name__ == "__main__":
    main()
