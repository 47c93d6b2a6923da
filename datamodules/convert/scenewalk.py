"""SceneWalk (SALOVA): densely captioned long videos -> segments with captions and `related` ids.

Two published layouts:
- the training JSON/JSONL, one row per video: `id, video, total_time, clip_num,
  scenes[{start_frame, end_frame, start_fps, end_fps}], conversations[{from, value}]` with one
  human/gpt pair per clip (gpt = the clip's description), and optionally the similarity matrices
  `sen_sim[desc][clip]` (caption-caption) and `lb_sim[desc][clip]` (caption-video);
- the parquet release, one row per clip: `id, url, time_stamp{duration, start_frame, end_frame,
  start_fps, end_fps, start_time, end_time}, v2t_score, t2t_score, conversations`.
`related[i]` = clips j with sen_sim[i][j] > 0.83 or lb_sim[i][j] > 0.21 (SALOVA stage 1.5),
plus i itself; thresholds are flags.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .core import AnnotationError, ConvertConfig, Segment, VideoItem, need, parse_rows


def read(cfg: ConvertConfig, failed: list) -> list[VideoItem]:
    items: list[VideoItem] = []
    for path in cfg.annotations:
        if path.suffix.lower() == ".parquet":
            items += _read_parquet(cfg, path, failed)
        else:
            items += [item for _, item in parse_rows(cfg, path, lambda row, i: _video_row(row, path, i), failed)]
    return items


def _video_row(row: Any, path: Path, i: int | str) -> VideoItem:
    video = need(row, "video", str, path, i)
    clip_num = need(row, "clip_num", int, path, i)
    scenes = need(row, "scenes", list, path, i)
    conversations = need(row, "conversations", list, path, i)
    if len(scenes) != clip_num:
        raise AnnotationError(path, i, "scenes", f"{len(scenes)} scenes but clip_num is {clip_num}")
    if len(conversations) != 2 * clip_num:
        raise AnnotationError(path, i, "conversations",
                              f"{len(conversations)} turns; expected one human/gpt pair per clip = {2 * clip_num}")
    segments = []
    for k, scene in enumerate(scenes):
        key = f"scenes[{k}]"
        start_frame = need(scene, "start_frame", int, path, i, key + ".")
        end_frame = need(scene, "end_frame", int, path, i, key + ".")
        start_fps = need(scene, "start_fps", float, path, i, key + ".")
        end_fps = need(scene, "end_fps", float, path, i, key + ".")
        if start_fps <= 0 or end_fps <= 0 or end_frame <= start_frame:
            raise AnnotationError(path, i, key, f"expected end_frame > start_frame and fps > 0, got {scene!r:.120}")
        caption = _caption(conversations[2 * k: 2 * k + 2], path, i, f"conversations[{2 * k}:{2 * k + 2}]")
        segments.append(Segment(start_frame / start_fps, end_frame / end_fps, caption))
    meta = {"id": row.get("id"), "total_time": need(row, "total_time", float, path, i)}
    return VideoItem(video=video, where=f"{path}:{i}", segments=segments, meta=meta,
                     sen_sim=_matrix(row, "sen_sim", clip_num, path, i),
                     lb_sim=_matrix(row, "lb_sim", clip_num, path, i))


def _caption(pair: list, path: Path, i: int | str, key: str) -> str:
    """The gpt turn of one human/gpt pair."""
    roles = [turn.get("from") if isinstance(turn, dict) else None for turn in pair]
    if roles != ["human", "gpt"]:
        raise AnnotationError(path, i, key, f"expected a human turn then a gpt turn, got roles {roles}")
    caption = pair[1].get("value")
    if not isinstance(caption, str) or not caption.strip():
        raise AnnotationError(path, i, f"{key}[1].value", f"expected the clip description, got {caption!r:.80}")
    return caption.strip()


def _matrix(row: dict, key: str, size: int, path: Path, i: int | str) -> list[list[float]] | None:
    """row[key] as a (size, size) matrix of numbers, or None when the row has none."""
    value = row.get(key)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != size
            or not all(isinstance(r, list) and len(r) == size for r in value)
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for r in value for x in r)):
        raise AnnotationError(path, i, key, f"expected a {size}x{size} matrix [desc][clip] of numbers")
    return [[float(x) for x in r] for r in value]


# ---------------------------------------------------------------------------------------------
# Parquet: one row per clip, grouped into videos by `id`

_TIMECODE = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def _seconds(value: Any, path: Path, i: int, key: str) -> float:
    """Seconds from a number or an "HH:MM:SS.mmm" timecode (PySceneDetect writes both)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _TIMECODE.match(value.strip())
        if match:
            hours, minutes, seconds = match.groups()
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        try:
            return float(value)
        except ValueError:
            pass
    raise AnnotationError(path, i, key, f"expected seconds or an HH:MM:SS.mmm timecode, got {value!r:.80}")


def _clip_row(row: Any, path: Path, i: int) -> dict:
    video_id = need(row, "id", (str, int), path, i)
    stamp = need(row, "time_stamp", dict, path, i)
    if stamp.get("start_time") is not None and stamp.get("end_time") is not None:
        start = _seconds(stamp["start_time"], path, i, "time_stamp.start_time")
        end = _seconds(stamp["end_time"], path, i, "time_stamp.end_time")
    else:
        frames = [need(stamp, key, kind, path, i, "time_stamp.")
                  for key, kind in (("start_frame", int), ("start_fps", float), ("end_frame", int), ("end_fps", float))]
        start, end = frames[0] / frames[1], frames[2] / frames[3]
    if end <= start:
        raise AnnotationError(path, i, "time_stamp", f"end {end} <= start {start}")
    conversations = need(row, "conversations", list, path, i)
    if len(conversations) != 2:
        raise AnnotationError(path, i, "conversations", f"expected one human/gpt pair, got {len(conversations)} turns")
    return {"id": str(video_id), "url": row.get("url"), "start": start, "end": end,
            "caption": _caption(conversations, path, i, "conversations"),
            "v2t": row.get("v2t_score"), "t2t": row.get("t2t_score")}


def _read_parquet(cfg: ConvertConfig, path: Path, failed: list) -> list[VideoItem]:
    videos: dict[str, list[tuple[int, dict]]] = {}
    for i, clip in parse_rows(cfg, path, lambda row, i: _clip_row(row, path, i), failed):
        videos.setdefault(clip["id"], []).append((i, clip))
    items = []
    for video_id, rows in videos.items():
        rows.sort(key=lambda r: r[1]["start"])
        clips = [clip for _, clip in rows]
        first = rows[0][0]
        meta: dict[str, Any] = {"id": video_id, "url": clips[0]["url"]}
        sen = _score_rows([c["t2t"] for c in clips], path, first, "t2t_score", meta)
        lb = _score_rows([c["v2t"] for c in clips], path, first, "v2t_score", meta)
        alternatives = [video_id + ext for ext in (".mp4", ".mkv", ".webm")]
        url_id = _id_from_url(clips[0]["url"])
        if url_id:
            alternatives.append(url_id)
        items.append(VideoItem(video=video_id, where=f"{path}:{first}", alternatives=alternatives,
                               segments=[Segment(c["start"], c["end"], c["caption"]) for c in clips],
                               meta=meta, sen_sim=sen, lb_sim=lb))
    return items


def _score_rows(scores: list[Any], path: Path, row: int, key: str, meta: dict) -> list[list[float]] | None:
    """Per-clip scores: lists of one score per clip of the video are rows of a [desc][clip] matrix;
    plain numbers are the clip's own caption score, kept in meta (they relate no two clips)."""
    if all(s is None for s in scores):
        return None
    if all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
        meta[key] = [float(s) for s in scores]
        return None
    if all(isinstance(s, list) and len(s) == len(scores) for s in scores):
        return [[float(x) for x in s] for s in scores]
    raise AnnotationError(path, row, key, "expected a number per clip, or per clip a list with one "
                                          f"score per clip of the video ({len(scores)} clips)")


def _id_from_url(url: Any) -> str | None:
    """The YouTube id in ".../watch?v=ID" or "youtu.be/ID", else the URL's last path part."""
    if not isinstance(url, str) or not url:
        return None
    match = re.search(r"(?:v=|youtu\.be/)([A-Za-z0-9_\-]{6,})", url)
    if match:
        return match.group(1)
    return url.rstrip("/").rsplit("/", 1)[-1] or None
