"""SALOVA's data: per video its segments, its queries and each query's multi-hot segment relevance.

A `longwatch/v1` sample becomes one item (`map_sample`); `collate` packs several videos into one batch with
padding and masks (the official SALOVA code only runs at batch size 1).

- Segments come from the shard's scene annotations; a raw video without any is cut with PySceneDetect's
  content detector on its decoded frames.
- Each segment keeps at most `max_frames_per_segment` frames, sampled evenly over its span; only those frames
  are kept, so a long video costs what its segments sample, not its duration.
- Queries (`queries`): "captions" (stage 1/1.5: a segment's caption, relevant segments = its `related` list),
  "qa" (stage 2: a question, relevant segments = the QA's `segments`), or "both".
  The relevance labels are ground truth in the synthetic world; the SceneWalk converter derives `related`
  from the sen_sim / lb_sim thresholds, so the same code reads both.
- The LLM sees `<|user|> question [options] <|assistant|>` and learns `answer <|endoftext|>`; a caption query
  asks the LLM to describe the focused scene (the caption is the router's query, never the LLM's input).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datamodules.common.text import load_tokenizer, missing_special_tokens
from datamodules.common.wds import ShardDataConfig, ShardDataModule

QUERY_SOURCES = ("captions", "qa", "both")
CAPTION_PROMPT = "describe the scene."


@dataclass
class SalovaDataConfig(ShardDataConfig):
    queries: str = "qa"  # captions | qa | both
    max_queries_per_video: int = 4  # train: a random subset per visit; evaluation keeps all
    max_frames_per_segment: int = 4
    tokenizer: Optional[str] = None  # LLM tokenizer; None = ROOT/tokenizer.json
    max_query_tokens: int = 64
    max_prompt_tokens: int = 96
    max_answer_tokens: int = 64
    scene_threshold: float = 27.0  # PySceneDetect content threshold for videos without segments
    min_scene_frames: int = 4
    # The split `test` (and predict) reads: "val" chooses a config without looking at the test split.
    test_split: str = "test"

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.queries not in QUERY_SOURCES:
            raise ValueError(f"data.queries: {self.queries!r} is not one of {QUERY_SOURCES}")
        for key in ("max_queries_per_video", "max_frames_per_segment", "max_query_tokens", "max_prompt_tokens",
                    "max_answer_tokens", "min_scene_frames"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key}: {getattr(self, key)} must be >= 1")
        if self.test_split not in ("val", "test"):
            raise ValueError(f"data.test_split: {self.test_split!r} is not 'val' or 'test'")


class SalovaTokens:
    """The LLM tokenizer and the special ids the prompt uses. Queries get ids from it too (for the tiny "world"
    text tower); a pretrained text tower tokenises the query strings itself."""

    def __init__(self, llm_path: str | Path):
        self.llm = load_tokenizer(llm_path)
        # An LLM's own tokenizer (Llama, Qwen) lacks our prompt tokens: add them; the model grows its embeddings.
        self.added = missing_special_tokens(self.llm)
        self.llm.add_special_tokens(self.added)
        self.vocab_size = self.llm.get_vocab_size()
        self.special = {}
        for name in ("pad", "endoftext", "user", "assistant", "segment"):
            token = f"<|{name}|>"
            idx = self.llm.token_to_id(token)
            self.special[name] = idx

    def encode(self, text: str, limit: int) -> list[int]:
        return self.llm.encode(text, add_special_tokens=False).ids[:limit]

    def encode_query(self, text: str, limit: int) -> list[int]:
        # End with <|endoftext|>, the position the tiny text tower pools.
        return self.encode(text, limit - 1) + [self.special["endoftext"]]


def segment_frames(segments: list[dict], num_frames: int, per_segment: int) -> list[list[int]]:
    """Frame ids (1 FPS, frame i covers [i, i+1)) sampled evenly inside each segment, at most `per_segment`."""
    out = []
    for seg in segments:
        first = min(int(math.floor(seg["start"])), num_frames - 1)
        stop = max(first + 1, min(int(math.ceil(seg["end"])), num_frames))
        count = min(per_segment, stop - first)
        # Centres of `count` equal bins over [first, stop).
        out.append([first + int((i + 0.5) * (stop - first) / count) for i in range(count)])
    return out


def detect_scenes(frames: np.ndarray, threshold: float, min_scene_frames: int) -> list[dict]:
    """PySceneDetect's content detector over decoded frames (T, H, W, 3) RGB -> segments covering the video."""
    from scenedetect.common import FrameTimecode
    from scenedetect.detectors import ContentDetector

    detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_frames)
    cuts = [0]
    for i, frame in enumerate(frames):
        bgr = np.ascontiguousarray(frame[..., ::-1])
        cuts += [c.frame_num for c in detector.process_frame(FrameTimecode(i, fps=1.0), bgr)]
    bounds = sorted(set(cuts)) + [len(frames)]
    return [{"start": float(a), "end": float(b), "caption": "", "related": [i]}
            for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]


def make_item(doc: dict, video: torch.Tensor, tokens: SalovaTokens, cfg: SalovaDataConfig, train: bool,
              where: str, rng: random.Random | None = None) -> dict | None:
    """One video -> the frames its segments sample + its queries; None when it has no query of the kind asked.

    video: uint8 frames (T, H, W, 3) or float features (T, D). See `collate` for the item's use.
    """
    segments = doc["segments"]
    if not segments:
        if video.dtype != torch.uint8:
            raise ValueError(f"{where}: no segments and only precomputed features: cannot cut scenes")
        segments = detect_scenes(video.numpy(), cfg.scene_threshold, cfg.min_scene_frames)
    frame_ids = segment_frames(segments, video.shape[0], cfg.max_frames_per_segment)
    used = sorted({f for ids in frame_ids for f in ids})
    local = {f: i for i, f in enumerate(used)}

    queries = []
    if cfg.queries in ("qa", "both"):
        for qa in doc["qa"]:
            labels = [0.0] * len(segments)
            for j in qa["segments"]:
                labels[j] = 1.0
            prompt = qa["question"] + (" options: " + "; ".join(qa["options"]) + "." if qa["options"] else "")
            queries.append({"kind": "qa", "text": qa["question"], "labels": labels, "segments": qa["segments"],
                            "prompt": prompt, "answer": qa["answer_text"], "options": qa["options"],
                            "answer_index": qa["answer"]})
    if cfg.queries in ("captions", "both"):
        for i, seg in enumerate(segments):
            if not seg["caption"]:
                continue
            labels = [0.0] * len(segments)
            for j in seg["related"]:
                labels[j] = 1.0
            queries.append({"kind": "caption", "text": seg["caption"], "labels": labels, "segments": seg["related"],
                            "prompt": CAPTION_PROMPT, "answer": seg["caption"], "options": [], "answer_index": -1})
    if not queries:
        return None
    if train and len(queries) > cfg.max_queries_per_video:  # evaluation keeps every query
        queries = (rng or random).sample(queries, cfg.max_queries_per_video)

    eot, user, assistant = (tokens.special[k] for k in ("endoftext", "user", "assistant"))
    for q in queries:
        q["query_ids"] = tokens.encode_query(q["text"], cfg.max_query_tokens)
        q["prompt_ids"] = [user] + tokens.encode(q["prompt"], cfg.max_prompt_tokens - 2) + [assistant]
        q["answer_ids"] = tokens.encode(q["answer"], cfg.max_answer_tokens - 1) + [eot]
        q["options_ids"] = [tokens.encode(o, cfg.max_answer_tokens - 1) + [eot] for o in q["options"]]
    return {
        "key": doc["key"],
        "video": video[used],
        "segment_frames": [[local[f] for f in ids] for ids in frame_ids],
        "segment_times": [(s["start"], s["end"]) for s in segments],
        "captions": [s["caption"] for s in segments],
        "queries": queries,
        "segment_token_id": tokens.special["segment"],
    }


def _pad(rows: list[list[int]], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged int lists -> (R, L) long, mask (R, L) bool; L >= 1 so that empty batches keep a shape."""
    length = max([len(r) for r in rows] + [1])
    ids = torch.full((len(rows), length), value, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = True
    return ids, mask


def collate_items(items: list[dict]) -> dict:
    """Several videos -> one padded batch (shapes in lightning_modules/salova/model.py):

    frames (T, 3, H, W) float in [0, 1] (or feats (T, D)): every sampled frame of the batch, video after video;
    seg_frame_index (N, F) into T, seg_frame_mask (N, F); video_segments (B, S) into N, video_segment_mask (B, S);
    query_video (Q,) into B; query_is_caption (Q,) bool; query_ids / query_mask (Q, L); labels (Q, S) multi-hot;
    prompt_ids / prompt_mask;
    answer_ids / answer_mask; options_ids / options_mask (Q, O, Lo); answer_index (Q,) (-1: open-ended);
    segment_token_id; plus `meta` (keys, texts, segment times) for reports.
    """
    if not items:
        raise ValueError("collate: empty batch")
    videos, seg_frames, video_segments, queries, query_video = [], [], [], [], []
    offset = 0
    for b, item in enumerate(items):
        start = len(seg_frames)
        seg_frames += [[offset + f for f in ids] for ids in item["segment_frames"]]
        video_segments.append(list(range(start, len(seg_frames))))
        videos.append(item["video"])
        offset += item["video"].shape[0]
        queries += item["queries"]
        query_video += [b] * len(item["queries"])
    frames = torch.cat(videos)
    if frames.dtype == torch.uint8:
        frames = frames.permute(0, 3, 1, 2).float().div_(255.0)
    else:
        frames = frames.float()
    seg_frame_index, seg_frame_mask = _pad(seg_frames)
    segments, segment_mask = _pad(video_segments)
    s = segments.shape[1]
    labels = torch.zeros(len(queries), s)
    for i, q in enumerate(queries):
        labels[i, :len(q["labels"])] = torch.tensor(q["labels"])
    query_ids, query_mask = _pad([q["query_ids"] for q in queries])
    prompt_ids, prompt_mask = _pad([q["prompt_ids"] for q in queries])
    answer_ids, answer_mask = _pad([q["answer_ids"] for q in queries])
    n_options = max([len(q["options_ids"]) for q in queries] + [1])
    option_rows = [(q["options_ids"] + [[]] * n_options)[:n_options] for q in queries]
    options_ids, options_mask = _pad([o for row in option_rows for o in row])
    options_ids = options_ids.view(len(queries), n_options, -1)
    options_mask = options_mask.view(len(queries), n_options, -1)
    return {
        "frames": frames,
        "seg_frame_index": seg_frame_index, "seg_frame_mask": seg_frame_mask,
        "video_segments": segments, "video_segment_mask": segment_mask,
        "query_video": torch.tensor(query_video, dtype=torch.long),
        "query_is_caption": torch.tensor([q["kind"] == "caption" for q in queries], dtype=torch.bool),
        "query_ids": query_ids, "query_mask": query_mask, "labels": labels,
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "answer_ids": answer_ids, "answer_mask": answer_mask,
        "options_ids": options_ids, "options_mask": options_mask,
        "answer_index": torch.tensor([q["answer_index"] for q in queries], dtype=torch.long),
        "segment_token_id": items[0]["segment_token_id"],
        "meta": {
            "keys": [item["key"] for item in items],
            "segment_times": [item["segment_times"] for item in items],
            "captions": [item["captions"] for item in items],
            "queries": [{k: q[k] for k in ("kind", "text", "answer", "options", "answer_index", "segments")}
                        for q in queries],
        },
    }


class SalovaDataModule(ShardDataModule):
    """WebDataset shards -> SALOVA batches of several videos (see `make_item`, `collate_items`)."""

    def __init__(self, config: SalovaDataConfig):
        super().__init__(config)
        self.config = config
        root = Path(config.root)
        self.tokens = SalovaTokens(config.tokenizer or root / "tokenizer.json")
        self._rng = random.Random(0)

    @property
    def vocab_size(self) -> int:
        return self.tokens.vocab_size

    def world_chance(self, split: str) -> dict[str, float]:
        """The chance levels `ROOT/world.json` records for a split (synthetic worlds only: e.g. `qa_accuracy`,
        `prior.qa_accuracy` = the text-only prior); {} for data without a world.json (converted real sets)."""
        path = Path(self.config.root) / "world.json"
        if not path.is_file():
            return {}
        world = json.loads(path.read_text())
        try:
            return dict(world["splits"][split]["chance"])
        except KeyError as err:
            raise ValueError(f"{path}: no splits.{split}.chance ({err} missing)") from None

    def test_dataloader(self):
        return self.loader(self.config.test_split)

    def predict_dataloader(self):
        return self.loader(self.config.test_split)

    def map_sample(self, sample: dict, split: str) -> list[dict]:
        video = sample["frames"] if "frames" in sample else sample["feats"]
        item = make_item(sample["json"], video, self.tokens, self.config, train=split == "train",
                         where=f"{sample.get('shard', '?')}:{sample.get('key', '?')}", rng=self._rng)
        return [] if item is None else [item]

    def collate(self, items: list[dict]) -> dict:
        return collate_items(items)
