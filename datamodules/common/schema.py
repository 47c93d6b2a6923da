"""The `longwatch/v1` sample schema: one JSON document per video, validated on write and on read.

The schema is written down in `datamodules/README.md`; this module is its executable form.
`validate_sample` checks types *and* consistency (segments in time order and inside the video,
answer index inside the options, spans ordered with start <= end, ids pointing at real segments),
because a wrong annotation that loads silently is worse than one that fails loudly.
"""
from __future__ import annotations

import math
import re
from typing import Any

SCHEMA = "longwatch/v1"
# Known producers; `source` is any lowercase identifier so a new converter needs no schema change.
KNOWN_SOURCES = ("synthetic", "scenewalk", "etbench", "stride", "youcook2", "llava-video")
TOP_LEVEL = ("schema", "key", "source", "duration", "num_frames", "segments", "qa", "streaming", "meta")
# Times written by converters are rounded; allow this much slack on "inside the video" checks.
TIME_TOLERANCE = 1e-3

_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_SOURCE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


class SampleError(ValueError):
    """A sample breaks the schema. `where` is "shard.tar:key", `field` a path like "qa[2].answer"."""

    def __init__(self, where: str, field: str, message: str):
        self.where, self.field, self.message = where, field, message
        super().__init__(f"{where}: field '{field}': {message}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (SampleError, (self.where, self.field, self.message))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, message: str):
        raise SampleError(self.where, field, message)

    def fields(self, obj: Any, field: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(obj, dict):
            self.fail(field or "<root>", f"expected an object, got {type(obj).__name__} {_show(obj)}")
        prefix = f"{field}." if field else ""
        for name in required:
            if name not in obj:
                self.fail(prefix + name, "missing")
        unknown = sorted(set(obj) - set(required) - set(optional))
        if unknown:
            self.fail(prefix + unknown[0], f"unknown field (allowed: {', '.join(required + optional)}; "
                                           "put free-form data under 'meta')")
        return obj

    def string(self, value: Any, field: str, nonempty: bool = True) -> str:
        if not isinstance(value, str):
            self.fail(field, f"expected a string, got {type(value).__name__} {_show(value)}")
        if nonempty and not value.strip():
            self.fail(field, f"must not be empty, got {_show(value)}")
        return value

    def number(self, value: Any, field: str) -> float:
        if not _is_number(value):
            self.fail(field, f"expected a finite number, got {type(value).__name__} {_show(value)}")
        return float(value)

    def integer(self, value: Any, field: str) -> int:
        if not _is_int(value):
            self.fail(field, f"expected an integer, got {type(value).__name__} {_show(value)}")
        return value

    def array(self, value: Any, field: str) -> list:
        if not isinstance(value, list):
            self.fail(field, f"expected a list, got {type(value).__name__} {_show(value)}")
        return value

    def segment_ids(self, value: Any, field: str, num_segments: int) -> list[int]:
        ids = self.array(value, field)
        for j, idx in enumerate(ids):
            self.integer(idx, f"{field}[{j}]")
            if not 0 <= idx < num_segments:
                self.fail(f"{field}[{j}]", f"segment id {idx} out of range [0, {num_segments})")
        if len(set(ids)) != len(ids):
            self.fail(field, f"repeated segment ids {_show(ids)}")
        return list(ids)

    def time_range(self, start: Any, end: Any, field: str, duration: float,
                   names: tuple[str, str] = (".start", ".end")) -> tuple[float, float]:
        s = self.number(start, field + names[0])
        e = self.number(end, field + names[1])
        if s < -TIME_TOLERANCE:
            self.fail(field, f"starts before the video: start {s}")
        if e > duration + TIME_TOLERANCE:
            self.fail(field, f"ends after the video: end {e} > duration {duration}")
        if s > e:
            self.fail(field, f"start {s} > end {e}")
        return s, e


def validate_sample(obj: dict, where: str, key: str | None = None) -> dict:
    """Check one `longwatch/v1` document and return a normalised copy (times as floats).

    Args:
        obj: the parsed JSON of `<key>.json`.
        where: "shard.tar:key", put at the head of every error message.
        key: the webdataset `__key__` the document was stored under; when given, `obj["key"]` must equal it.
    Raises:
        SampleError naming `where`, the field path and the bad value.
    """
    c = _Checker(where)
    c.fields(obj, "", TOP_LEVEL)
    if obj["schema"] != SCHEMA:
        c.fail("schema", f"expected {SCHEMA!r}, got {_show(obj['schema'])}")
    sample_key = c.string(obj["key"], "key")
    if not _KEY.match(sample_key):
        c.fail("key", f"keys are letters, digits, '_' and '-' only (no dots), got {_show(sample_key)}")
    if key is not None and sample_key != key:
        c.fail("key", f"{_show(sample_key)} differs from the shard member key {_show(key)}")
    source = c.string(obj["source"], "source")
    if not _SOURCE.match(source):
        c.fail("source", f"expected a lowercase identifier such as {KNOWN_SOURCES}, got {_show(source)}")

    duration = c.number(obj["duration"], "duration")
    if duration <= 0:
        c.fail("duration", f"must be > 0, got {duration}")
    num_frames = c.integer(obj["num_frames"], "num_frames")
    if num_frames != math.floor(duration + TIME_TOLERANCE):
        c.fail("num_frames", f"{num_frames} frames at 1 FPS does not match duration {duration} "
                             f"(expected floor(duration) = {math.floor(duration + TIME_TOLERANCE)})")

    segments = []
    previous_end = 0.0
    raw_segments = c.array(obj["segments"], "segments")
    for i, seg in enumerate(raw_segments):
        field = f"segments[{i}]"
        c.fields(seg, field, ("start", "end", "caption", "related"))
        start, end = c.time_range(seg["start"], seg["end"], field, duration)
        if end <= start:
            c.fail(field, f"empty segment: start {start} >= end {end}")
        if start < previous_end - TIME_TOLERANCE:
            c.fail(f"{field}.start", f"segments must be in time order without overlap: "
                                     f"start {start} < previous end {previous_end}")
        previous_end = end
        caption = c.string(seg["caption"], f"{field}.caption")
        related = c.segment_ids(seg["related"], f"{field}.related", len(raw_segments))
        if i not in related:
            c.fail(f"{field}.related", f"must include the segment's own id {i}, got {_show(related)}")
        segments.append({"start": start, "end": end, "caption": caption, "related": related})

    qa = []
    for i, item in enumerate(c.array(obj["qa"], "qa")):
        field = f"qa[{i}]"
        c.fields(item, field, ("question", "options", "answer", "answer_text", "segments"))
        question = c.string(item["question"], f"{field}.question")
        options = c.array(item["options"], f"{field}.options")
        for j, option in enumerate(options):
            c.string(option, f"{field}.options[{j}]")
        answer = c.integer(item["answer"], f"{field}.answer")
        answer_text = c.string(item["answer_text"], f"{field}.answer_text")
        if options:
            if len(options) < 2:
                c.fail(f"{field}.options", f"multiple choice needs >= 2 options, got {_show(options)}")
            if len(set(options)) != len(options):
                c.fail(f"{field}.options", f"repeated options {_show(options)}")
            if not 0 <= answer < len(options):
                c.fail(f"{field}.answer", f"index {answer} out of range for {len(options)} options")
            if options[answer] != answer_text:
                c.fail(f"{field}.answer_text", f"{_show(answer_text)} differs from options[{answer}] "
                                               f"= {_show(options[answer])}")
        elif answer != -1:
            c.fail(f"{field}.answer", f"open-ended questions (options []) need answer -1, got {answer}")
        ids = c.segment_ids(item["segments"], f"{field}.segments", len(segments))
        qa.append({"question": question, "options": list(options), "answer": answer,
                   "answer_text": answer_text, "segments": ids})

    streaming = []
    for i, item in enumerate(c.array(obj["streaming"], "streaming")):
        field = f"streaming[{i}]"
        c.fields(item, field, ("query", "spans"))
        query = c.string(item["query"], f"{field}.query")
        spans = []
        previous_end = -math.inf
        for j, span in enumerate(c.array(item["spans"], f"{field}.spans")):
            span_field = f"{field}.spans[{j}]"
            if not isinstance(span, list) or len(span) != 2:
                c.fail(span_field, f"expected [start, end], got {_show(span)}")
            start, end = c.time_range(span[0], span[1], span_field, duration, names=("[0]", "[1]"))
            if start < previous_end:
                c.fail(span_field, f"spans must be in time order without overlap: start {start} "
                                   f"< previous end {previous_end}")
            previous_end = end
            spans.append([start, end])
        streaming.append({"query": query, "spans": spans})

    if not isinstance(obj["meta"], dict):
        c.fail("meta", f"expected an object, got {type(obj['meta']).__name__} {_show(obj['meta'])}")

    return {"schema": SCHEMA, "key": sample_key, "source": source, "duration": duration,
            "num_frames": num_frames, "segments": segments, "qa": qa, "streaming": streaming,
            "meta": dict(obj["meta"])}
