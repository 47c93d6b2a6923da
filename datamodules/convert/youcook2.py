"""YouCook2: `{"database": {vid: {duration, subset, recipe_type, annotations[{id, segment:[s,e], sentence}]}}}`.

Each video becomes one sample. Its annotated steps become captioned segments; the stretches
between steps (YouCook2 leaves the intro, the plating and pauses unannotated) become uncaptioned
segments, so segments stay contiguous and cover the video as the schema asks; gaps under
`min_gap` seconds are absorbed by the neighbouring step instead. One dense-captioning streaming
entry asks to describe each step as it happens, with the steps as its spans. Videos are found by
their YouTube id anywhere under --videos (YouCook2 ships them as <subset>/<recipe>/<vid>.<ext>).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import AnnotationError, ConvertConfig, Segment, Stream, VideoItem, need, parse_rows, read_rows, span

DENSE_CAPTION_QUERY = "Describe each cooking step as it happens."


def read(cfg: ConvertConfig, failed: list) -> list[VideoItem]:
    items = []
    for path in cfg.annotations:
        for _, document in read_rows(path):
            database = need(document, "database", dict, path, "-")
            # Filter first: the test subset comes without annotations and is not malformed for that.
            rows = ((vid, entry) for vid, entry in database.items()
                    if cfg.subset is None or isinstance(entry, dict) and entry.get("subset") == cfg.subset)
            items += [item for _, item in parse_rows(cfg, path, lambda entry, vid: _video(vid, entry, path),
                                                     failed, rows=rows)]
    return items


def _video(vid: str, entry: Any, path: Path) -> VideoItem:
    row = f"database.{vid}"
    duration = need(entry, "duration", float, path, row)
    annotations = need(entry, "annotations", list, path, row)
    segments, spans = [], []
    for k, note in enumerate(annotations):
        start, end = span(need(note, "segment", list, path, row, f"annotations[{k}]."), path, row,
                          f"annotations[{k}].segment")
        sentence = need(note, "sentence", str, path, row, f"annotations[{k}].").strip()
        if not sentence:
            raise AnnotationError(path, row, f"annotations[{k}].sentence", "empty sentence")
        segments.append(Segment(start, end, sentence))
        spans.append((start, end))
    meta = {"youtube_id": vid, "subset": entry.get("subset"), "recipe_type": entry.get("recipe_type"),
            "annotation_duration": duration, "steps": [[s.start, s.end] for s in segments]}
    streaming = [Stream(DENSE_CAPTION_QUERY, spans)] if spans else []
    return VideoItem(video=vid, where=f"{path}:{row}", segments=segments, streaming=streaming, meta=meta,
                     alternatives=[f"{vid}.mp4", f"{vid}.mkv", f"{vid}.webm"])
