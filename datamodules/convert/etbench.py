"""E.T. Bench: `[{idx, task, source, video, duration, q, tgt, src?, p?, o?, g?, a?}]` -> one sample per video.

Rows of a grounding-type task (tvg, epm, tal, dvc, slc by default) become streaming queries: the
prompt `q` with `tgt` as activation spans (clipped to the video, overlaps merged: DVC/SLC events
may overlap). Every other row becomes a QA entry: multiple choice when it has options `o` and the
answer index `p`; otherwise open-ended with the ground truth rendered as text (`tgt` spans as
"s - e seconds", or the `g` captions). `a` is a model's response, never ground truth, so it is only
kept in meta. Each entry's idx, task, source, tgt, src and g are kept in meta["etbench"].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import QA, AnnotationError, ConvertConfig, Stream, VideoItem, need, parse_rows, span


def read(cfg: ConvertConfig, failed: list) -> list[VideoItem]:
    videos: dict[str, VideoItem] = {}
    for path in cfg.annotations:
        for i, (video, entry, info) in parse_rows(cfg, path, lambda row, i: _row(row, path, i, cfg), failed):
            item = videos.get(video)
            if item is None:
                item = videos[video] = VideoItem(video=video, where=f"{path}:{i}", meta={"etbench": []})
            if isinstance(entry, Stream):
                info["entry"] = f"streaming[{len(item.streaming)}]"
                item.streaming.append(entry)
            else:
                info["entry"] = f"qa[{len(item.qa)}]"
                item.qa.append(entry)
            item.meta["etbench"].append(info)
    return list(videos.values())


def _row(row: Any, path: Path, i: int | str, cfg: ConvertConfig) -> tuple[str, QA | Stream, dict]:
    task = need(row, "task", str, path, i).lower()
    video = need(row, "video", str, path, i)
    question = need(row, "q", str, path, i).strip()
    if not question:
        raise AnnotationError(path, i, "q", "empty prompt")
    tgt = _spans(_list(row, "tgt", path, i), path, i)
    captions = _list(row, "g", path, i)
    info = {"idx": row.get("idx"), "task": task, "source": row.get("source"),
            "duration": need(row, "duration", float, path, i)}
    for key in ("tgt", "src", "g", "a"):
        if row.get(key) is not None:
            info[key] = row[key]

    if task in cfg.etbench_streaming_tasks:
        if not tgt:
            raise AnnotationError(path, i, "tgt", f"task {task!r} is a grounding task but has no target spans")
        return video, Stream(question, tgt), info
    if row.get("o") is not None:
        options = need(row, "o", list, path, i)
        for k, option in enumerate(options):
            if not isinstance(option, str) or not option.strip():
                raise AnnotationError(path, i, f"o[{k}]", f"expected option text, got {option!r:.80}")
        answer = need(row, "p", int, path, i)
        if not 0 <= answer < len(options):
            raise AnnotationError(path, i, "p", f"answer index {answer} out of range for {len(options)} options")
        if len(set(options)) != len(options) or len(options) < 2:
            raise AnnotationError(path, i, "o", f"expected >= 2 distinct options, got {options!r:.120}")
        return video, QA(question, options, answer, options[answer]), info
    if tgt:
        answer_text = ", ".join(f"{s:g} - {e:g} seconds" for s, e in tgt)
    elif captions:
        answer_text = " ".join(str(c).strip() for c in captions)
    else:
        raise AnnotationError(path, i, "o", f"task {task!r}: no ground truth (needs o and p, tgt or g)")
    return video, QA(question, [], -1, answer_text), info


def _list(row: dict, key: str, path: Path, i: int | str) -> list:
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise AnnotationError(path, i, key, f"expected a list, got {type(value).__name__} {value!r:.80}")
    return value


def _spans(tgt: list, path: Path, i: int | str) -> list[tuple[float, float]]:
    """`tgt` as spans: [[s, e], ...]; a flat [s, e] is one span; bare numbers are instants [t, t]."""
    numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in tgt)
    if numbers and len(tgt) == 2 and tgt[0] < tgt[1]:
        return [span(tgt, path, i, "tgt")]
    if numbers:
        return [span([t, t], path, i, f"tgt[{k}]") for k, t in enumerate(tgt)]
    return [span(s, path, i, f"tgt[{k}]") for k, s in enumerate(tgt)]
