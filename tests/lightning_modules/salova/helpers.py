"""Small SALOVA fixtures: a tokenizer with the contract's special tokens, tiny configs, hand-made videos."""
from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from datamodules.common.text import SPECIAL_TOKENS
from datamodules.salova import SalovaDataConfig, SalovaTokens, collate_items, make_item
from lightning_modules.common.vision import VisionConfig
from lightning_modules.salova.config import ConnectorConfig, LLMConfig, RouterConfig, SalovaConfig, TextConfig

WORDS = "a red green blue circle square triangle moves left right what colour is the on background scene".split()


def make_tokens(tmp_path) -> SalovaTokens:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=8)) for _ in range(200)]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL_TOKENS)))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return SalovaTokens(path)


def tiny_config(**overrides) -> SalovaConfig:
    cfg = dict(
        vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, layers=2, heads=2),
        connector=ConnectorConfig(width=32, num_latents=4, depth=2, heads=2, max_frames=8),
        router=RouterConfig(width=32, depth=2, heads=2, max_segments=16, top_k=3),
        text=TextConfig(hidden_size=32, layers=1, heads=2, max_length=32),
        llm=LLMConfig(hidden_size=32, intermediate_size=64, layers=1, heads=2, kv_heads=2, max_positions=512),
    )
    cfg.update(overrides)
    return SalovaConfig(**cfg)


def make_doc(key: str, rng: random.Random, segments: int, frames: int) -> dict:
    cuts = sorted(rng.sample(range(1, frames), segments - 1))
    bounds = [0] + cuts + [frames]
    segs = [{"start": float(a), "end": float(b), "caption": " ".join(rng.choices(WORDS, k=5)), "related": [i]}
            for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    qa = []
    for _ in range(rng.randint(1, 3)):
        options = rng.sample(WORDS, rng.choice([3, 4]))
        answer = rng.randrange(len(options))
        qa.append({"question": " ".join(rng.choices(WORDS, k=rng.randint(3, 9))), "options": options,
                   "answer": answer, "answer_text": options[answer],
                   "segments": sorted(rng.sample(range(segments), rng.randint(1, min(2, segments))))})
    return {"key": key, "segments": segs, "qa": qa}


def make_batch(tokens: SalovaTokens, videos: int, seed: int, items_only: bool = False, queries: str = "both"):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = SalovaDataConfig(root=".", queries=queries, max_frames_per_segment=8)
    items = []
    for v in range(videos):
        frames = rng.randint(12, 40)
        doc = make_doc(f"v{v}", rng, rng.randint(2, 6), frames)
        video = torch.randint(0, 256, (frames, 32, 32, 3), dtype=torch.uint8, generator=gen)
        items.append(make_item(doc, video, tokens, cfg, train=False, where=f"test:{doc['key']}"))
    return items if items_only else collate_items(items)
