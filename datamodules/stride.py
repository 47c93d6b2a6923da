"""STRIDE data: per-query activation labels on 1-second slots, training windows, and the three mask modes.

For each streaming query of a `longwatch/v1` sample (`streaming: [{query, spans}]`):
- `activation_labels`: slot i (the frame covering [i, i+1)) is active iff it overlaps a span.
- Training windows end at a clip end c (frames [0, c) have arrived) and cover slots [c - W, c).
  Each ground-truth span [a, b) (in slots) is cut three ways: the clip ends before it (c <= a),
  inside it (a < c <= b: the span has started, its end is not yet seen), or after it (c > b).
  A few clip ends per query are drawn anywhere (background windows).
- The clip may start after the window start (always at the stream start, and at random otherwise):
  slots before the clip start are unseen, fixed to inactive, never masked, never in the loss.
  At inference the same holds for slots before the end of the last triggered span.
- Mask modes (FACTS.md), drawn per window with the configured probabilities:
  `all`      every seen slot masked;
  `spans`    random runs revealed (up to `max_reveal` of the seen slots), at least one span
             boundary still masked (both of its slots);
  `boundary` a contiguous block straddling a span start or end, plus scattered slots;
  `edge`     (ours) the newest few seen slots, plus scattered slots: the online situation, where the
             older labels are given (kept once stable) and the newest ones are still to be decided.
- LIVE-style targets for the baseline: "respond: started" at each span's first slot, "respond: over"
  at the frame whose arrival puts the stream clock `response_gap_s` past the span end.

This module knows nothing of models: it hands out frames (or precomputed features) and integer labels.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from datamodules.common.text import load_tokenizer
from datamodules.common.wds import ShardDataConfig, ShardDataModule

MASK_MODES = ("all", "spans", "boundary", "edge")
INACTIVE, ACTIVE, MASK = 0, 1, 2
SILENT, RESPOND_START, RESPOND_END = 0, 1, 2
IGNORE = -100
CUTS = ("before", "inside", "after")


# ------------------------------------------------------------------------------------------ labels

def activation_labels(spans, num_slots: int, where: str = "sample") -> np.ndarray:
    """Spans [[start, end], ...] in seconds -> (num_slots,) int64, 1 where slot [i, i+1) overlaps a span."""
    labels = np.zeros(num_slots, dtype=np.int64)
    for span in spans:
        if len(span) != 2 or not float(span[0]) < float(span[1]):
            raise ValueError(f"{where}: streaming span {span!r} must be [start, end] with start < end (seconds)")
        first, last = int(np.floor(float(span[0]))), int(np.ceil(float(span[1])))
        labels[max(0, first):max(0, min(num_slots, last))] = ACTIVE
    return labels


def label_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of active slots as [a, b) slot ranges."""
    padded = np.concatenate([[0], labels, [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def span_cuts(a: int, b: int, num_slots: int, reach: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Clip ends for the span [a, b): one per cut that fits the video, as (cut name, clip end c).

    before: c in [a - reach, a] (>= 1); inside: c in [a + 1, b]; after: c in [b + 1, b + reach] (<= T).
    """
    cuts = []
    if a >= 1:
        cuts.append(("before", int(rng.integers(max(1, a - reach), a + 1))))
    cuts.append(("inside", int(rng.integers(a + 1, b + 1))))
    if b < num_slots:
        cuts.append(("after", int(rng.integers(b + 1, min(num_slots, b + reach) + 1))))
    return cuts


def cut_window(labels: np.ndarray, clip_end: int, clip_start: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Window of slots [clip_end - W, clip_end) -> (labels (W,) with unseen slots 0, seen (W,) bool)."""
    if not 0 <= clip_start < clip_end <= len(labels):
        raise ValueError(f"clip [{clip_start}, {clip_end}) must lie within the {len(labels)} slots and hold a frame")
    slots = np.arange(clip_end - window, clip_end)
    seen = slots >= clip_start
    window_labels = np.where(seen, labels[np.clip(slots, 0, None)], INACTIVE)
    return window_labels.astype(np.int64), seen


def boundaries(labels: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Positions j with both j-1 and j seen and labels[j] != labels[j-1] (a span starts or ends at j)."""
    j = np.arange(1, len(labels))
    return j[seen[j] & seen[j - 1] & (labels[j] != labels[j - 1])]


# ------------------------------------------------------------------------------------------ masks

def mask_all(labels: np.ndarray, seen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return seen.copy()


def mask_spans(labels: np.ndarray, seen: np.ndarray, rng: np.random.Generator, max_reveal: float = 0.3,
               max_run: int | None = None) -> np.ndarray:
    """Reveal random runs of seen slots (at most max_reveal of them); keep >= 1 boundary fully masked."""
    masked = seen.copy()
    seen_at = np.flatnonzero(seen)
    budget = int(np.floor(rng.uniform(0.0, max_reveal) * len(seen_at)))
    max_run = max_run or max(1, len(labels) // 8)
    revealed = 0
    while revealed < budget:
        length = int(rng.integers(1, max_run + 1))
        start = int(seen_at[rng.integers(len(seen_at))])
        for j in range(start, min(len(labels), start + length)):
            if masked[j] and revealed < budget:
                masked[j], revealed = False, revealed + 1
    edges = boundaries(labels, seen)
    if len(edges) and not any(masked[j - 1] and masked[j] for j in edges):
        j = int(edges[rng.integers(len(edges))])
        masked[j - 1] = masked[j] = True
    return masked


def mask_boundary(labels: np.ndarray, seen: np.ndarray, rng: np.random.Generator, scatter: float = 0.15,
                  max_side: int | None = None) -> np.ndarray:
    """A block straddling a span start or end (j-1 and j both inside), plus each other seen slot with
    probability `scatter`. Without a boundary in view, the block straddles a random seen slot."""
    seen_at = np.flatnonzero(seen)
    edges = boundaries(labels, seen)
    pivot = int(edges[rng.integers(len(edges))]) if len(edges) else int(seen_at[rng.integers(len(seen_at))])
    max_side = max_side or max(1, len(labels) // 8)
    left, right = int(rng.integers(1, max_side + 1)), int(rng.integers(1, max_side + 1))
    masked = seen & (rng.random(len(labels)) < scatter)
    block = np.zeros(len(labels), dtype=bool)
    block[max(0, pivot - left):min(len(labels), pivot + right)] = True
    return masked | (block & seen)


def mask_edge(labels: np.ndarray, seen: np.ndarray, rng: np.random.Generator, scatter: float = 0.15,
              max_edge: int | None = None) -> np.ndarray:
    """The newest r seen slots (r uniform in [1, max_edge], default W/8), plus each other seen slot with
    probability `scatter`: at inference the denoiser is given the older (stable) labels and decides the
    newest slots, which no other mode trains for."""
    seen_at = np.flatnonzero(seen)
    max_edge = max_edge or max(1, len(labels) // 8)
    masked = seen & (rng.random(len(labels)) < scatter)
    masked[seen_at[-int(rng.integers(1, max_edge + 1)):]] = True
    return masked


def draw_mask(mode: str, labels: np.ndarray, seen: np.ndarray, rng: np.random.Generator,
              max_reveal: float, scatter: float) -> np.ndarray:
    if mode == "all":
        return mask_all(labels, seen, rng)
    if mode == "spans":
        return mask_spans(labels, seen, rng, max_reveal)
    if mode == "boundary":
        return mask_boundary(labels, seen, rng, scatter)
    if mode == "edge":
        return mask_edge(labels, seen, rng, scatter)
    raise ValueError(f"unknown mask mode {mode!r}; known: {MASK_MODES}")


def live_targets(labels: np.ndarray, gap_s: float) -> np.ndarray:
    """(T,) frame tokens for the LIVE baseline: started at each run's first slot, over at frame b + gap - 1."""
    targets = np.full(len(labels), SILENT, dtype=np.int64)
    for a, b in label_runs(labels):
        targets[a] = RESPOND_START
        over = b + int(np.ceil(gap_s)) - 1
        if over < len(labels):
            targets[over] = RESPOND_END
    return targets


# ------------------------------------------------------------------------------------------ module

@dataclass
class StrideDataConfig(ShardDataConfig):
    """`data:` section of a STRIDE run (adds windowing and masking to the shard settings)."""

    window: int = 32  # W slots, must equal model.window
    background_windows: int = 2  # clip ends drawn anywhere, per query
    cut_reach: int = 8  # before/after cuts end at most this many slots from the span
    late_start_prob: float = 0.5  # chance a clip starts after its window start (unseen prefix)
    mask_modes: dict[str, float] = field(default_factory=lambda: {"all": 1.0, "spans": 1.0, "boundary": 1.0})
    max_reveal: float = 0.3  # `spans` mode reveals at most this fraction of seen slots
    scatter: float = 0.15  # `boundary` and `edge` modes: chance each other seen slot is masked
    response_gap_s: float = 1.0  # LIVE target and TimeDiff reference: span end + this
    max_query_tokens: int = 24
    tokenizer: str | None = None  # tokenizer.json or HF dir; default: <root>/tokenizer.json

    def __post_init__(self):
        super().__post_init__()
        if self.window < 2:
            raise ValueError(f"data.window must be >= 2, got {self.window}")
        unknown = set(self.mask_modes) - set(MASK_MODES)
        if unknown or not self.mask_modes or any(p < 0 for p in self.mask_modes.values()) \
                or sum(self.mask_modes.values()) <= 0:
            raise ValueError(f"data.mask_modes must map a subset of {MASK_MODES} to weights >= 0 with a positive "
                             f"sum, got {dict(self.mask_modes)}")
        if not 0.0 <= self.max_reveal < 1.0 or not 0.0 <= self.scatter <= 1.0:
            raise ValueError(f"data.max_reveal must lie in [0, 1) and data.scatter in [0, 1], got "
                             f"{self.max_reveal}, {self.scatter}")
        if not 0.0 <= self.late_start_prob <= 1.0:
            raise ValueError(f"data.late_start_prob must lie in [0, 1], got {self.late_start_prob}")
        if self.background_windows < 0 or self.cut_reach < 1 or self.max_query_tokens < 1:
            raise ValueError("data.background_windows must be >= 0, data.cut_reach and data.max_query_tokens >= 1")
        if self.response_gap_s < 1.0:
            raise ValueError(f"data.response_gap_s must be >= 1 s, got {self.response_gap_s}")


def query_windows(labels: np.ndarray, cfg: StrideDataConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All training windows of one query: three cuts per span plus background clip ends.

    Returns arrays over N windows: clip_end (N,), seen/labels/tokens/loss_mask/live (N, W), cut (N,) str.
    """
    num_slots, window = len(labels), cfg.window
    ends = [cut for a, b in label_runs(labels) for cut in span_cuts(a, b, num_slots, cfg.cut_reach, rng)]
    ends += [("background", int(rng.integers(1, num_slots + 1))) for _ in range(cfg.background_windows)]
    modes = [m for m in MASK_MODES if cfg.mask_modes.get(m, 0.0) > 0]
    weights = np.array([cfg.mask_modes[m] for m in modes], dtype=float)
    live = live_targets(labels, cfg.response_gap_s)
    out = {k: [] for k in ("clip_end", "seen", "labels", "tokens", "loss_mask", "live", "cut")}
    for cut, clip_end in ends:
        clip_start = max(0, clip_end - window)
        if rng.random() < cfg.late_start_prob:
            clip_start = int(rng.integers(clip_start, clip_end))
        window_labels, seen = cut_window(labels, clip_end, clip_start, window)
        mode = modes[int(rng.choice(len(modes), p=weights / weights.sum()))]
        masked = draw_mask(mode, window_labels, seen, rng, cfg.max_reveal, cfg.scatter)
        slots = np.arange(clip_end - window, clip_end)
        out["clip_end"].append(clip_end)
        out["seen"].append(seen)
        out["labels"].append(window_labels)
        out["tokens"].append(np.where(masked, MASK, window_labels))
        out["loss_mask"].append(masked)
        out["live"].append(np.where(seen, live[np.clip(slots, 0, None)], IGNORE))
        out["cut"].append(cut)
    return {k: np.array(v) for k, v in out.items()}


class StrideDataModule(ShardDataModule):
    """One item per video: its frames (or features), query tokens, and the training windows of every query."""

    def __init__(self, cfg: StrideDataConfig):
        super().__init__(cfg)
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.root)

    def encode_query(self, text: str) -> torch.Tensor:
        ids = self.tokenizer.encode(text).ids[: self.cfg.max_query_tokens]
        out = torch.zeros(self.cfg.max_query_tokens, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def _rng(self, sample: dict, split: str) -> np.random.Generator:
        """Train: fresh windows each time a video comes round, seeded by the stream's `draw_seed` (a pure
        function of seed, epoch, reader slot and position), so a resumed run draws exactly what an
        uninterrupted one would. Val/test: the same windows always."""
        key = zlib.crc32(sample["key"].encode())
        if split == "train":
            if "draw_seed" not in sample:
                raise ValueError(f"{sample.get('shard', '?')}:{sample['key']}: train sample lacks 'draw_seed' "
                                 "(the shard stream sets it; map_sample needs it for resumable draws)")
            return np.random.default_rng([*(int(s) for s in sample["draw_seed"]), key])
        return np.random.default_rng([self.cfg.seed, key])

    def map_sample(self, sample: dict, split: str) -> dict | list[dict]:
        meta, key = sample["json"], sample["key"]
        where = f"{sample.get('shard', '?')}:{key}"
        video = sample["feats"] if "feats" in sample else sample["frames"]
        num_slots = int(video.shape[0])
        queries = [q for q in meta.get("streaming", []) if q.get("spans")] if split == "train" \
            else list(meta.get("streaming", []))
        if not queries or num_slots < 1:
            return []  # nothing to learn or score about when to speak
        rng = self._rng(sample, split)
        per_query = []
        for qi, q in enumerate(queries):
            labels = activation_labels(q["spans"], num_slots, f"{where} streaming[{qi}]")
            windows = query_windows(labels, self.cfg, rng)
            windows["query"] = np.full(len(windows["clip_end"]), qi)
            per_query.append((labels, windows))
        cat = {k: np.concatenate([w[k] for _, w in per_query]) for k in per_query[0][1] if k != "cut"}
        item = {
            "key": key, "duration": float(meta.get("duration", num_slots)), "num_frames": num_slots,
            "queries": [q["query"] for q in queries],
            "spans": [[(float(s), float(e)) for s, e in q["spans"]] for q in queries],
            "query_ids": torch.stack([self.encode_query(q["query"]) for q in queries]),
            "slot_labels": torch.from_numpy(np.stack([labels for labels, _ in per_query])),
            **{k: torch.from_numpy(v) for k, v in cat.items()},
        }
        item["feats" if "feats" in sample else "frames"] = torch.as_tensor(video)
        return item

    def collate(self, items: list[dict]) -> dict:
        """Videos padded to the longest; windows concatenated, each pointing at its video (`win_video`)."""
        if not items:
            raise ValueError("StrideDataModule.collate: empty batch")
        name = "feats" if "feats" in items[0] else "frames"
        longest = max(int(it["num_frames"]) for it in items)
        video = items[0][name]
        padded = video.new_zeros((len(items), longest, *video.shape[1:]))
        for b, it in enumerate(items):
            padded[b, : it["num_frames"]] = it[name]
        counts = [len(it["clip_end"]) for it in items]
        batch = {
            name: padded,
            "win_video": torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
            "win_query_ids": torch.cat([it["query_ids"][it["query"]] for it in items]),
            "num_frames": torch.tensor([it["num_frames"] for it in items]),
            "videos": [{k: it[k] for k in ("key", "duration", "num_frames", "queries", "spans", "query_ids",
                                           "slot_labels")} for it in items],
        }
        for k in ("clip_end", "seen", "labels", "tokens", "loss_mask", "live"):
            batch[k] = torch.cat([it[k] for it in items])
        return batch
