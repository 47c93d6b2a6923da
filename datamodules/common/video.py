"""Video in and out: H.264 mp4 through PyAV, decoding resampled to 1 FPS, and `.npy` frame stacks.

Time convention (shared with the JSON schema): output frame i covers [i/fps, (i+1)/fps). When the
source has another frame rate we keep, for each output frame, the source frame shown at the middle
of that interval (the middle, not the start, so a container start offset or PTS rounding of a few
milliseconds never picks the neighbour). A video that lasts `end` seconds gives floor(end * fps)
frames, which is `num_frames` in the schema at 1 FPS.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import BinaryIO, Union

import av
import numpy as np

Source = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]
_TOLERANCE = 1e-6


class VideoError(ValueError):
    """A video or frame array that cannot be decoded; the message names the source."""


def _name(src: Source, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return f"<{type(src).__name__} video>"


def _check_frames(frames: np.ndarray, name: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"{name}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise VideoError(f"{name}: no frames")
    return frames


def write_mp4(dest: Union[str, os.PathLike, BinaryIO], frames: np.ndarray, fps: int = 1, crf: int = 18) -> None:
    """Encode frames as H.264 (libx264, yuv420p) in an mp4 container.

    Args:
        dest: a path or a writable binary file object (e.g. io.BytesIO).
        frames: uint8 (T, H, W, 3) RGB; H and W must be even (yuv420p halves the chroma planes).
        fps: frames per second written into the stream (1 for every longwatch shard).
        crf: x264 constant rate factor; 18 keeps the synthetic world's colours crisp.
    Output is byte-identical for identical input on one machine: x264 runs single-threaded
    (its output depends on the thread count) and without macroblock-tree rate control, which
    we measured to vary from run to run in this build.
    """
    name = _name(dest, None)
    frames = _check_frames(frames, name)
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise VideoError(f"{name}: H.264 yuv420p needs even sizes, got {height}x{width}")
    if not (isinstance(fps, int) and fps > 0):
        raise VideoError(f"{name}: fps must be a positive integer, got {fps!r}")
    with av.open(dest, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _open(src: Source):
    if isinstance(src, (bytes, bytearray, memoryview)):
        return av.open(io.BytesIO(bytes(src)), mode="r")
    if isinstance(src, (str, os.PathLike)):
        return av.open(str(src), mode="r")
    return av.open(src, mode="r")


def read_video(src: Source, fps: float = 1.0, max_frames: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode a video and resample it to `fps`.

    Args:
        src: mp4 bytes, a path, or a readable binary file object.
        fps: output frame rate (1.0 for longwatch).
        max_frames: stop after this many output frames (decoding stops early too).
        name: how errors name the source (e.g. "shard-000003.tar:train-000012.mp4").
    Returns:
        uint8 (T, H, W, 3) RGB with T = floor(decoded duration * fps), capped by max_frames.
    Raises:
        VideoError for unreadable, truncated or empty videos.
    """
    name = _name(src, name)
    if fps <= 0:
        raise VideoError(f"{name}: fps must be > 0, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"{name}: max_frames must be >= 1 or None, got {max_frames}")
    step = 1.0 / fps
    out: list[np.ndarray] = []
    try:
        with _open(src) as container:
            if not container.streams.video:
                raise VideoError(f"{name}: no video stream (truncated, corrupt or not a video?)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            start = None
            previous = None  # (time, av.VideoFrame) of the last decoded frame not yet superseded
            frame_duration = 1.0 / float(stream.average_rate) if stream.average_rate else step
            for frame in container.decode(stream):
                if frame.time is None:
                    raise VideoError(f"{name}: frame without a timestamp")
                if start is None:
                    start = frame.time
                time = frame.time - start
                if frame.duration and frame.time_base is not None:
                    frame_duration = float(frame.duration * frame.time_base)
                # Every output slot whose midpoint falls before this frame's time is covered by `previous`.
                while previous is not None and (len(out) + 0.5) * step < time - _TOLERANCE:
                    if max_frames is not None and len(out) >= max_frames:
                        break
                    out.append(previous[1].to_ndarray(format="rgb24"))
                if max_frames is not None and len(out) >= max_frames:
                    break
                previous = (time, frame)
            else:
                if previous is not None:
                    end = previous[0] + frame_duration
                    total = math.floor(end * fps + _TOLERANCE)
                    if max_frames is not None:
                        total = min(total, max_frames)
                    while len(out) < total:
                        out.append(previous[1].to_ndarray(format="rgb24"))
                    # A last slot whose midpoint was passed but that the video does not fill
                    # (e.g. 19.987 s at 29.97 FPS) is not a whole second: T = floor(duration * fps).
                    del out[total:]
    except VideoError:
        raise
    except (av.FFmpegError, EOFError, OSError) as error:
        raise VideoError(f"{name}: cannot decode video (corrupt or truncated?): {error}") from error
    if not out:
        raise VideoError(f"{name}: no frames decoded (empty, corrupt or truncated video)")
    return np.stack(out)


def probe_duration(src: Source, name: str | None = None) -> float:
    """Seconds covered by the decoded frames (last frame time + its duration - first frame time)."""
    return len(read_video(src, fps=1000.0, name=name)) / 1000.0


def read_frames_npy(src: Source, name: str | None = None) -> np.ndarray:
    """Load `<key>.frames.npy`: uint8 (T, H, W, 3), already at 1 FPS."""
    frames = _load_npy(src, _name(src, name))
    return _check_frames(frames, _name(src, name))


def read_feats_npy(src: Source, name: str | None = None) -> np.ndarray:
    """Load `<key>.feats.npy`: float16/float32 (T, D) precomputed per-frame features."""
    name = _name(src, name)
    feats = _load_npy(src, name)
    if feats.ndim != 2 or feats.dtype not in (np.float16, np.float32):
        raise VideoError(f"{name}: features must be float16/float32 (T, D), got {feats.dtype} {tuple(feats.shape)}")
    if feats.shape[0] == 0:
        raise VideoError(f"{name}: no frames")
    return feats


def resample_1fps(stack: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
    """Resample a 1-FPS stack (frames or features) to `fps`, `num_frames` output frames.

    As `read_video` does: output frame i covers [i/fps, (i+1)/fps) and takes the 1-FPS frame shown at
    that interval's middle, so fps 0.25 keeps frames 2, 6, 10, ...
    """
    if num_frames <= 0:
        return stack[:0]
    source = np.floor((np.arange(num_frames) + 0.5) / fps + _TOLERANCE).astype(np.int64)
    return stack[np.minimum(source, len(stack) - 1)]


def _load_npy(src: Source, name: str) -> np.ndarray:
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            return np.load(io.BytesIO(bytes(src)), allow_pickle=False)
        return np.load(Path(src) if isinstance(src, (str, os.PathLike)) else src, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise VideoError(f"{name}: cannot read .npy array (corrupt or truncated?): {error}") from error
