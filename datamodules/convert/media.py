"""Source videos in, 1 FPS frames out: clip extraction, resizing and scene detection.

Time convention (the same as `datamodules.common.video.read_video` and the schema): output frame i
covers [i, i+1) seconds of the clip, and holds the source frame shown at the middle of that
second, clip_start + i + 0.5. A clip that lasts d seconds gives floor(d) frames. Any source frame
rate works (30000/1001, 25, 1, variable): we pick frames by presentation time, never by index.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from datamodules.common.video import VideoError

_TOLERANCE = 1e-6


@dataclass
class Clip:
    """Frames of one clip resampled to 1 FPS.

    frames: uint8 (T, H, W, 3) RGB, T = floor(duration), H and W even.
    duration: seconds the clip covers in the source (after clamping to the video's end).
    source_fps: the source stream's average frame rate (0.0 when the container does not say).
    source_duration: seconds of the whole source video; None when decoding stopped at the clip's end.
    """

    frames: np.ndarray
    duration: float
    source_fps: float
    source_duration: float | None


def _output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is `short_side`, both rounded down to even."""
    if short_side is not None:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return max(2, width - width % 2), max(2, height - height % 2)


def decode_clip(path: str | os.PathLike, start: float = 0.0, end: float | None = None,
                short_side: int | None = None) -> Clip:
    """Decode [start, end) seconds of a video at 1 FPS.

    Args:
        path: the source video file.
        start: clip start in seconds from the first frame of the video.
        end: clip end in seconds; None (or past the video's end) means the video's end.
        short_side: resize so the shorter side has this many pixels (None keeps the source size);
            sizes are rounded down to even numbers because H.264 yuv420p needs them.
    Returns:
        a `Clip` with floor(duration) frames.
    Raises:
        VideoError naming the file when it cannot be decoded or the clip is shorter than 1 s.
    """
    name = str(path)
    if start < 0 or (end is not None and end <= start):
        raise VideoError(f"{name}: bad clip [{start}, {end})")
    frames: list[np.ndarray] = []
    try:
        with av.open(name, mode="r") as container:
            if not container.streams.video:
                raise VideoError(f"{name}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate) if stream.average_rate else 0.0
            width, height = _output_size(stream.codec_context.width, stream.codec_context.height, short_side)
            origin = None
            if start > 1.0 and stream.start_time is not None:
                # Long videos: jump to the keyframe before the clip instead of decoding from 0.
                origin = float(stream.start_time * stream.time_base)
                container.seek(int((origin + start - 1.0) / stream.time_base), stream=stream, backward=True)
            previous = None  # (time from origin, frame) of the last decoded frame
            frame_duration = 1.0 / fps if fps else 1.0
            limit = math.inf if end is None else whole_seconds(end - start)
            source_end = None  # known only when decoding reaches the video's end
            for frame in container.decode(stream):
                if frame.time is None:
                    raise VideoError(f"{name}: frame without a timestamp")
                if origin is None:
                    origin = frame.time
                time = frame.time - origin
                if frame.duration and frame.time_base is not None:
                    frame_duration = float(frame.duration * frame.time_base)
                # Every slot whose midpoint lies before this frame is showing `previous`.
                while previous is not None and len(frames) < limit and \
                        start + len(frames) + 0.5 < time - _TOLERANCE:
                    frames.append(_to_rgb(previous[1], width, height))
                if end is not None and time >= end - _TOLERANCE:
                    break  # the video goes on past the clip: the clip is whole
                previous = (time, frame)
            else:
                source_end = previous[0] + frame_duration if previous is not None else 0.0
                # The last frame shows until the video ends: fill the slots whose midpoints it covers.
                total = min(limit, whole_seconds(source_end - start))
                while previous is not None and len(frames) < total:
                    frames.append(_to_rgb(previous[1], width, height))
    except VideoError:
        raise
    except (av.FFmpegError, EOFError, OSError) as error:
        raise VideoError(f"{name}: cannot decode video (corrupt or truncated?): {error}") from error
    clip_end = end if source_end is None else (source_end if end is None else min(end, source_end))
    # A slot whose midpoint the last frame reaches but whose second the video does not finish is
    # not a whole frame: keep floor(duration) frames, as the schema counts them.
    del frames[whole_seconds(clip_end - start):]
    if not frames:
        raise VideoError(f"{name}: clip [{start}, {end}) holds no whole second of video "
                         f"(the video ends at {clip_end:.3f} s)")
    return Clip(np.stack(frames), round(clip_end - start, 3), fps,
                None if source_end is None else round(source_end, 3))


def whole_seconds(duration: float) -> int:
    """Frames at 1 FPS of a clip lasting `duration`: floor of the duration as stored (3 decimals),
    with the schema's tolerance, so `num_frames == floor(duration)` holds for the rounded value."""
    return math.floor(round(duration, 3) + 1e-3)


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    if frame.width == width and frame.height == height:
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()


def detect_cuts(path: str | os.PathLike, start: float = 0.0, end: float | None = None,
                threshold: float = 27.0, min_scene_seconds: float = 1.0) -> list[float]:
    """Hard cuts found by PySceneDetect's ContentDetector, in seconds from `start`.

    Runs on the source video at its own frame rate (cuts between 1 FPS frames would mistake fast
    motion for cuts). `min_scene_seconds` is turned into frames of the source rate.
    Returns the sorted cut times strictly inside (0, end - start); [] when the clip is one scene.
    """
    from scenedetect import ContentDetector, detect  # scenedetect is only needed with --scene-detect

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    fps = float(rate) if rate else 30.0
    detector = ContentDetector(threshold=threshold, min_scene_len=max(1, round(min_scene_seconds * fps)))
    # Times as floats: PySceneDetect reads an int as a frame number.
    scenes = detect(str(path), detector, start_time=float(start) if start > 0 else None,
                    end_time=None if end is None else float(end), backend="pyav")
    cuts = sorted({round(scene_start.seconds - start, 3) for scene_start, _ in scenes[1:]})
    limit = math.inf if end is None else end - start
    return [cut for cut in cuts if 0 < cut < limit]


def find_videos(directory: Path) -> dict[str, list[Path]]:
    """Index every file under `directory` by its stem, for annotations that name videos by id."""
    index: dict[str, list[Path]] = {}
    for file in sorted(directory.rglob("*")):
        if file.is_file() and not file.name.startswith("."):
            index.setdefault(file.stem, []).append(file)
    return index
