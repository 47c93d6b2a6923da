"""Can the tiny LM learn to bind an object to its scene, given perfect perception? The binding probe.

It trains a fresh `Mamba2LM` (the tiny default's config unless overridden) and a 2-layer projector from
scratch on sequences of scenes whose frames are ideal features: a one-hot background (35 kinds) and the
multi-hot set of colours on screen (8 kinds), one token per frame, repeated for the scene's length. After the
frames (and `--gap` filler tokens) come a marker and a colour token; the LM names a background at the last
position (35-way). Tasks:

- `bind`: the background of the one scene where that colour appears (what the world's object questions need:
  an associative recall, key = colour, value = background);
- `last`: the background of the last scene (recency; the colour is ignored).

It prints held-out accuracy as training goes. Chance is 1/35; naming some background of the video gives about
1 / (number of scenes). Nothing here reads the world's shards: it isolates the LM's part of the problem.

    python -m lightning_modules.ma2mba.binding_probe --task bind --steps 800 [--scene-frames 4 20] [--gap 0]
        [--transformers] [Mamba2Config overrides: init=transformers n_layer=2 ...]
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.common.mamba2 import Mamba2Config, Mamba2LM
from lightning_modules.ma2mba.config import Ma2mbaConfig

BACKGROUNDS, COLOURS = 35, 8
MARKER, FIRST_COLOUR, FIRST_BACKGROUND = 1, 10, 100  # token ids of the query and of the answers
TASKS = ("bind", "last")


def draw_videos(rng: np.random.Generator, count: int, task: str, scene_frames: tuple[int, int]):
    """-> [(frames (T, 43) float32, colour)], answers: 3-8 scenes, distinct backgrounds, 1-4 colours each; the
    asked colour is in exactly one scene."""
    videos, answers = [], []
    while len(videos) < count:
        scenes = int(rng.integers(3, 9))
        backgrounds = rng.choice(BACKGROUNDS, scenes, replace=False)
        colours = [rng.choice(COLOURS, int(rng.integers(1, 5)), replace=False) for _ in range(scenes)]
        once = [c for c in range(COLOURS) if sum(c in cs for cs in colours) == 1]
        if not once:
            continue
        colour = int(rng.choice(once))
        frames = []
        for background, cs in zip(backgrounds, colours):
            feature = np.zeros(BACKGROUNDS + COLOURS, np.float32)
            feature[background] = 1
            feature[BACKGROUNDS + cs] = 1
            frames.append(np.repeat(feature[None], int(rng.integers(scene_frames[0], scene_frames[1] + 1)), 0))
        videos.append((np.concatenate(frames), colour))
        bound = next(b for b, cs in zip(backgrounds, colours) if colour in cs)
        answers.append(int(bound if task == "bind" else backgrounds[-1]))
    return videos, answers


def transformers_mamba2(cfg: Mamba2Config) -> nn.Module:
    """transformers' Mamba2ForCausalLM with the same dims and its own initialisation (the peer, to tell our LM's
    learning apart from Mamba-2's), answering `lm(inputs_embeds=...).logits` and `.backbone.embedding` as ours."""
    from transformers import Mamba2Config as PeerConfig, Mamba2ForCausalLM

    peer = Mamba2ForCausalLM(PeerConfig(
        vocab_size=cfg.padded_vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
        state_size=cfg.d_state, head_dim=cfg.headdim, num_heads=cfg.nheads, n_groups=cfg.ngroups, expand=cfg.expand,
        conv_kernel=cfg.d_conv, chunk_size=cfg.chunk_size, tie_word_embeddings=cfg.tie_embeddings))
    peer.backbone.embedding = peer.backbone.embeddings
    return peer


class Probe(nn.Module):
    def __init__(self, lm: Mamba2Config, gap: int, peer: bool = False):
        super().__init__()
        self.lm = transformers_mamba2(lm) if peer else Mamba2LM(lm)
        self.projector = nn.Sequential(nn.Linear(BACKGROUNDS + COLOURS, lm.d_model), nn.GELU(),
                                       nn.Linear(lm.d_model, lm.d_model))
        self.gap = gap

    def forward(self, videos) -> torch.Tensor:
        """-> (b, 35) logits over the backgrounds at the last position; rows are left-padded to one length."""
        embed = self.lm.backbone.embedding
        rows = [torch.cat([self.projector(torch.from_numpy(frames)),
                           embed(torch.tensor([MARKER] * (self.gap + 1) + [FIRST_COLOUR + colour]))])
                for frames, colour in videos]
        length = max(r.shape[0] for r in rows)
        x = torch.stack([F.pad(r, (0, 0, length - r.shape[0], 0)) for r in rows])
        return self.lm(inputs_embeds=x).logits[:, -1, FIRST_BACKGROUND:FIRST_BACKGROUND + BACKGROUNDS]


def train(task: str = "bind", steps: int = 800, batch: int = 16, lr: float = 1e-3, scene_frames=(4, 20),
          gap: int = 0, lm: Mamba2Config | None = None, seed: int = 0, evaluate_every: int = 100,
          held_out: int = 512, peer: bool = False, log=print) -> list[tuple[int, float]]:
    """Train from scratch (AdamW, 10% warmup, cosine, clip 1.0); -> [(step, held-out accuracy)]."""
    if task not in TASKS:
        raise ValueError(f"binding_probe: task {task!r} is not one of {TASKS}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = Probe(lm or Ma2mbaConfig().lm, gap, peer)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    test_videos, test_answers = draw_videos(np.random.default_rng(seed + 1), held_out, task, scene_frames)
    curve = []
    for step in range(1, steps + 1):
        scale = min(1.0, step / max(1, 0.1 * steps)) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        videos, answers = draw_videos(rng, batch, task, scene_frames)
        loss = F.cross_entropy(probe(videos), torch.tensor(answers))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        optimizer.step()
        if step % evaluate_every == 0 or step == steps:
            with torch.no_grad():
                right = sum((probe(test_videos[i:i + 64]).argmax(-1) == torch.tensor(test_answers[i:i + 64])).sum().item()
                            for i in range(0, held_out, 64))
            curve.append((step, right / held_out))
            log(f"{task} step {step}: train loss {loss.item():.3f}, held-out accuracy {right / held_out:.3f}")
    return curve


def main(argv=None) -> None:
    from experiments import config as config_lib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="bind")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scene-frames", type=int, nargs=2, default=(4, 20), metavar=("MIN", "MAX"))
    parser.add_argument("--gap", type=int, default=0, help="filler tokens between the frames and the query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transformers", action="store_true", help="train transformers' Mamba2 instead of ours")
    parser.add_argument("lm", nargs="*", help="Mamba2Config overrides, e.g. n_layer=2 d_state=64")
    args = parser.parse_args(argv)
    # The tiny default's LM with the overrides, typed and checked by the runner's own config loader.
    lm = config_lib.load("ma2mba/tiny_stage2", [f"model.lm.{override}" for override in args.lm]).model.lm
    torch.set_flush_denormal(True)
    train(args.task, args.steps, args.batch, args.lr, tuple(args.scene_frames), args.gap, lm, args.seed,
          peer=args.transformers)


if __name__ == "__main__":
    main()
