"""STRIDE training JSONL -> one sample per clip, a streaming query per row.

Each line is a list of three typed items:
    [{"type": "text", "content": query, "output": response},
     {"type": "video", "path", "fps", "start_seconds", "end_seconds"},
     {"type": "activation_output", "entries": [{"start_seconds", "end_seconds", "mask", "value"}]}]
with entry times relative to the clip start. The clip [start_seconds, end_seconds) is cut out of
the source video and stored at 1 FPS, so the sample's times stay relative to the clip start, as in
the file; meta["clip"] keeps the offsets in the source. The active spans are the entries with
value == 1 (consecutive ones joined); every entry, mask included, is kept in meta["stride"]. Rows on
the same clip (same path and offsets) share one sample.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import AnnotationError, ConvertConfig, Stream, VideoItem, need, parse_rows, span


def read(cfg: ConvertConfig, failed: list) -> list[VideoItem]:
    clips: dict[tuple[str, float, float], VideoItem] = {}
    for path in cfg.annotations:
        for i, (clip, stream, info) in parse_rows(cfg, path, lambda row, i: _row(row, path, i), failed):
            item = clips.get(clip)
            if item is None:
                item = clips[clip] = VideoItem(video=clip[0], where=f"{path}:{i}", clip=(clip[1], clip[2]),
                                               meta={"clip_offsets": [clip[1], clip[2]], "stride": []})
            info["entry"] = f"streaming[{len(item.streaming)}]"
            item.streaming.append(stream)
            item.meta["stride"].append(info)
    return list(clips.values())


def _row(row: Any, path: Path, i: int | str) -> tuple[tuple[str, float, float], Stream, dict]:
    if not isinstance(row, list):
        raise AnnotationError(path, i, "<row>", f"expected a list of typed items, got {type(row).__name__}")
    parts: dict[str, tuple[int, dict]] = {}
    for k, part in enumerate(row):
        kind = need(part, "type", str, path, i, f"[{k}].")
        if kind in parts:
            raise AnnotationError(path, i, f"[{k}].type", f"a second {kind!r} item")
        parts[kind] = (k, part)
    for kind in ("text", "video", "activation_output"):
        if kind not in parts:
            raise AnnotationError(path, i, "type", f"no item of type {kind!r} (found {sorted(parts)})")

    k, text = parts["text"]
    query = need(text, "content", str, path, i, f"[{k}].").strip()
    if not query:
        raise AnnotationError(path, i, f"[{k}].content", "empty query")
    k, video = parts["video"]
    source = need(video, "path", str, path, i, f"[{k}].")
    start = need(video, "start_seconds", float, path, i, f"[{k}].")
    end = need(video, "end_seconds", float, path, i, f"[{k}].")
    if not 0 <= start < end:
        raise AnnotationError(path, i, f"[{k}].end_seconds", f"expected 0 <= start_seconds < end_seconds, "
                                                             f"got [{start}, {end}]")
    k, activation = parts["activation_output"]
    entries = need(activation, "entries", list, path, i, f"[{k}].")
    spans, kept = [], []
    for j, entry in enumerate(entries):
        within = f"[{k}].entries[{j}]."
        s, e = span([need(entry, "start_seconds", float, path, i, within),
                     need(entry, "end_seconds", float, path, i, within)], path, i, within + "end_seconds")
        value = need(entry, "value", (int, bool), path, i, within)
        if value not in (0, 1):
            raise AnnotationError(path, i, within + "value", f"expected 0 or 1, got {value!r}")
        if value == 1:
            if spans and abs(spans[-1][1] - s) < 1e-6:  # runs of active slots form one span
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
        kept.append({"start_seconds": s, "end_seconds": e, "mask": entry.get("mask"), "value": int(value)})
    info = {"row": i, "output": text.get("output"), "fps": video.get("fps"), "entries": kept}
    return (source, float(start), float(end)), Stream(query, spans), info
