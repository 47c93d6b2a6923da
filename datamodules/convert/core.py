"""What every converter shares: its config, its errors, annotation loading, and the item model.

A format module (scenewalk.py, etbench.py, ...) reads its published file into `VideoItem`s: one
per stored video (or clip), with segments, QA and streaming queries in seconds from the start of
that clip. `driver.convert` then finds the video, decodes it at 1 FPS, fits the annotations to
the decoded duration (`fit_segments`, `fit_spans`) and writes `longwatch/v1` samples.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

log = logging.getLogger("datamodules.convert")
T = TypeVar("T")

FORMATS = ("scenewalk", "etbench", "stride", "youcook2", "llava-video")
# SALOVA's stage-1.5 labels (FACTS.md): positive if sentence similarity > 0.83 or video-text
# similarity > 0.21. The released code uses 0.8 / 0.18; both are a flag away.
SEN_THRESHOLD = 0.83
LB_THRESHOLD = 0.21
# ET-Bench tasks whose target is "when": they become streaming queries with spans.
ETBENCH_STREAMING_TASKS = ("tvg", "epm", "tal", "dvc", "slc")
# The schema needs a non-empty caption on every segment; stretches without one (YouCook2's gaps
# between steps, scenes cut by PySceneDetect) get this text and are listed in meta["uncaptioned"].
UNCAPTIONED = "(uncaptioned)"


@dataclass
class ConvertConfig:
    """Everything `python -m datamodules.convert` takes; checked on construction."""

    format: str
    annotations: list[Path]
    videos: Path
    out: Path
    split: str = "train"
    shard_size: int = 64
    scene_detect: bool = False         # cut videos without scene boundaries with PySceneDetect
    scene_threshold: float = 27.0      # ContentDetector threshold
    min_scene_seconds: float = 1.0
    short_side: int | None = None      # resize frames so the shorter side has this many pixels
    sen_sim: str = "given"             # given: use the file's sen_sim; minilm: compute missing ones
    sen_threshold: float = SEN_THRESHOLD
    lb_threshold: float = LB_THRESHOLD
    min_gap: float = 1.0               # gaps between segments shorter than this are absorbed
    etbench_streaming_tasks: tuple[str, ...] = ETBENCH_STREAMING_TASKS
    subset: str | None = None          # YouCook2: keep only this `subset` (training/validation/testing)
    on_error: str = "raise"            # raise | skip, for malformed rows and undecodable videos
    limit: int | None = None           # convert at most this many videos (smoke runs)
    progress: bool = True

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r}: expected one of {', '.join(FORMATS)}")
        self.annotations = [Path(p) for p in self.annotations]
        if not self.annotations:
            raise ValueError("annotations: give at least one annotation file")
        for path in self.annotations:
            if not path.is_file():
                raise FileNotFoundError(f"annotations: no such file {path}")
        self.videos, self.out = Path(self.videos), Path(self.out)
        if not self.videos.is_dir():
            raise FileNotFoundError(f"videos: no such directory {self.videos}")
        if not self.split or "/" in self.split or self.split.startswith("."):
            raise ValueError(f"split {self.split!r}: expected a plain name such as train, val, test")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.short_side is not None and self.short_side < 2:
            raise ValueError(f"short_side must be >= 2 pixels, got {self.short_side}")
        if self.sen_sim not in ("given", "minilm"):
            raise ValueError(f"sen_sim {self.sen_sim!r}: expected 'given' or 'minilm'")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error {self.on_error!r}: expected 'raise' or 'skip'")
        if self.min_gap < 0 or self.min_scene_seconds <= 0 or self.scene_threshold <= 0:
            raise ValueError("min_gap must be >= 0; min_scene_seconds and scene_threshold > 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")
        self.etbench_streaming_tasks = tuple(self.etbench_streaming_tasks)


class AnnotationError(ValueError):
    """A malformed annotation row: names the file, the row and the key at fault."""

    def __init__(self, file: str | Path, row: int | str, key: str, message: str):
        self.file, self.row, self.key, self.message = str(file), row, key, message
        super().__init__(f"{file}: row {row}: key '{key}': {message}")


# ---------------------------------------------------------------------------------------------
# Reading annotation files


def read_rows(path: Path) -> Iterator[tuple[int | str, Any]]:
    """Yield (row id, row) from a JSON list, a JSON object (YouCook2's `database`), JSONL or parquet.

    Row ids are what error messages print: the list index for JSON, the 1-based line number for
    JSONL, the row index for parquet, the key for a JSON object.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # only the parquet variant of SceneWalk needs it

        table = pq.read_table(path)
        for index, row in enumerate(table.to_pylist()):
            yield index, row
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise AnnotationError(path, number, "<line>", f"not valid JSON: {error}") from None
    else:
        try:
            with path.open(encoding="utf-8") as file:
                document = json.load(file)
        except json.JSONDecodeError as error:
            raise AnnotationError(path, "-", "<file>", f"not valid JSON: {error}") from None
        if isinstance(document, list):
            yield from enumerate(document)
        else:
            yield "-", document


def parse_rows(cfg: ConvertConfig, path: Path, parse: Callable[[Any, int | str], T],
               failed: list[tuple[str, str]],
               rows: Iterable[tuple[int | str, Any]] | None = None) -> Iterator[tuple[int | str, T]]:
    """Yield (row id, parse(row, row id)) for every row of `path` (or of `rows`, read from it).

    A malformed row raises its AnnotationError (on_error="raise") or is logged, recorded in
    `failed` as ("file:row", message) and skipped (on_error="skip").
    """
    for row_id, row in read_rows(path) if rows is None else rows:
        try:
            yield row_id, parse(row, row_id)
        except AnnotationError as error:
            if cfg.on_error == "raise":
                raise
            log.warning("skipped malformed row: %s", error)
            failed.append((f"{path}:{row_id}", str(error)))


def need(row: Any, key: str, kind: type | tuple[type, ...], file: Path, row_id: int | str, within: str = "") -> Any:
    """row[key], checked to be of `kind` (a float slot also takes an int, never a bool).

    `within` prefixes the key in messages when `row` is nested, e.g. "scenes[2]."."""
    if not isinstance(row, dict):
        raise AnnotationError(file, row_id, within.rstrip(".") or "<row>",
                              f"expected an object, got {type(row).__name__}")
    if key not in row:
        raise AnnotationError(file, row_id, within + key, "missing")
    value = row[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = kinds + (int,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise AnnotationError(file, row_id, within + key, f"expected {names}, got {type(value).__name__} {value!r:.80}")
    if isinstance(value, float) and not math.isfinite(value):
        raise AnnotationError(file, row_id, within + key, f"expected a finite number, got {value}")
    return value


def span(value: Any, file: Path, row_id: int | str, key: str) -> tuple[float, float]:
    """A [start, end] pair of finite numbers with start <= end."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise AnnotationError(file, row_id, key, f"expected [start, end] in seconds, got {value!r:.80}")
    start, end = float(value[0]), float(value[1])
    if start > end:
        raise AnnotationError(file, row_id, key, f"start {start} > end {end}")
    return start, end


# ---------------------------------------------------------------------------------------------
# The item model: what a format module hands to the driver


@dataclass
class Segment:
    """A scene in seconds from the clip start. caption None: no caption (filled with UNCAPTIONED)."""

    start: float
    end: float
    caption: str | None = None


@dataclass
class QA:
    question: str
    options: list[str]
    answer: int                     # index into options; -1 when open-ended
    answer_text: str
    segments: list[int] = field(default_factory=list)


@dataclass
class Stream:
    query: str
    spans: list[tuple[float, float]]


@dataclass
class VideoItem:
    """One sample to write: a video (or a clip of one) and its annotations.

    video: the file as the annotations name it (a relative path or an id).
    where: "file:row" of the (first) row it came from, for messages.
    clip: (start, end) seconds of the source video to keep; end None = to the video's end.
    sen_sim, lb_sim: (S, S) similarity of caption i with segment j when the format gives them.
    """

    video: str
    where: str
    clip: tuple[float, float | None] = (0.0, None)
    segments: list[Segment] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    streaming: list[Stream] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    sen_sim: list[list[float]] | None = None
    lb_sim: list[list[float]] | None = None
    alternatives: list[str] = field(default_factory=list)  # other names the video file may have


# ---------------------------------------------------------------------------------------------
# Fitting annotations to the decoded video


def fit_segments(segments: list[Segment], duration: float, min_gap: float) -> tuple[list[Segment], list[int | None]]:
    """Turn annotated segments into contiguous scenes covering [0, duration].

    Segments are clipped to the video, overlaps trimmed (a later segment starts where the
    previous ends), gaps shorter than `min_gap` absorbed by the previous segment (or the next, at
    the start), longer gaps filled with an uncaptioned segment. Segments that fall outside the
    video or vanish are dropped.
    Returns (new segments, old_to_new) where old_to_new[i] is the new id of input segment i or None.
    """
    order = sorted(range(len(segments)), key=lambda i: (segments[i].start, segments[i].end))
    old_to_new: list[int | None] = [None] * len(segments)
    out: list[Segment] = []
    cursor = 0.0
    for i in order:
        seg = segments[i]
        start, end = max(seg.start, cursor, 0.0), min(seg.end, duration)
        if end - start < 1e-3:
            continue
        gap = start - cursor
        if gap > 0:
            if gap >= min_gap:
                out.append(Segment(cursor, start, None))
            elif out:
                out[-1].end = start
            else:
                start = 0.0
        old_to_new[i] = len(out)
        out.append(Segment(start, end, seg.caption))
        cursor = end
    if out and duration - cursor > 0:
        if duration - cursor >= min_gap:
            out.append(Segment(cursor, duration, None))
        else:
            out[-1].end = duration
    for seg in out:
        seg.start, seg.end = round(seg.start, 3), round(seg.end, 3)
    return out, old_to_new


def cut_segments(cuts: list[float], duration: float) -> list[Segment]:
    """Uncaptioned scenes between sorted cut times, covering [0, duration]."""
    bounds = [0.0] + [c for c in cuts if 0 < c < duration] + [duration]
    return [Segment(round(a, 3), round(b, 3), None) for a, b in zip(bounds, bounds[1:]) if b - a >= 1e-3]


def fit_spans(spans: list[tuple[float, float]], duration: float) -> tuple[list[list[float]], int]:
    """Clip spans to [0, duration], sort them, merge overlapping ones (the schema wants them
    disjoint); spans that only touch stay apart, so consecutive events keep their boundary.

    Returns (spans, dropped) where dropped counts spans lying wholly outside the video.
    """
    kept, dropped = [], 0
    for start, end in sorted(spans):
        start, end = max(start, 0.0), min(end, duration)
        if start > end or start >= duration:
            dropped += 1
            continue
        if kept and start < kept[-1][1]:
            kept[-1][1] = max(kept[-1][1], end)
        else:
            kept.append([start, end])
    return [[round(s, 3), round(e, 3)] for s, e in kept], dropped


def related_ids(captioned: list[int], sen: list[list[float]] | None, lb: list[list[float]] | None,
                sen_threshold: float, lb_threshold: float, size: int) -> list[list[int]]:
    """related[i] = {i} + {j captioned : sen[i][j] > sen_threshold or lb[i][j] > lb_threshold}.

    `sen`/`lb` are indexed by position in `captioned` (caption row, segment column); `size` is the
    number of segments. Uncaptioned segments relate to themselves only.
    """
    related = [[i] for i in range(size)]
    for a, i in enumerate(captioned):
        matches = {i}
        for b, j in enumerate(captioned):
            if (sen is not None and sen[a][b] > sen_threshold) or (lb is not None and lb[a][b] > lb_threshold):
                matches.add(j)
        related[i] = sorted(matches)
    return related
