"""Helpers for the converter tests: tiny generated videos and a reader for the shards produced.

Each video is a run of scenes with their own background colour (hard cuts) and a moving square;
a 16x16 block in the top-left corner encodes the second the frame belongs to, so a test can read
back which source second a stored 1 FPS frame was taken from.
"""
from __future__ import annotations

import json
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from datamodules.common.schema import validate_sample
from datamodules.common.video import read_video

SIZE = 64
# Bright and dark in turn, hues far apart: every cut is far above PySceneDetect's threshold.
PALETTE = [(230, 60, 60), (20, 40, 110), (240, 230, 90), (30, 110, 30), (200, 80, 230)]
CODE_STEP = 12  # grey level per second in the corner block; H.264 at crf 18 keeps it within +-4


def frame_at(t: float, cuts: list[float]) -> np.ndarray:
    scene = sum(t >= c for c in cuts)
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = PALETTE[scene % len(PALETTE)]
    x = int(16 + 30 * ((t * 0.2) % 1.0))
    image[40:52, x:x + 12] = 255
    image[:16, :16] = 8 + (int(t) * CODE_STEP) % 240
    return image


def second_shown(frame: np.ndarray) -> int:
    """The source second encoded in a frame's corner block (modulo 20 s)."""
    return int(round((float(frame[2:14, 2:14].mean()) - 8) / CODE_STEP))


def make_video(path: Path, seconds: float, fps: Fraction | int, cuts: list[float] = ()) -> Path:
    """H.264 mp4 of `seconds` at `fps` (any rational rate), hard cuts at `cuts` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for k in range(int(round(seconds * float(fps)))):
            frame = av.VideoFrame.from_ndarray(frame_at(k / float(fps), list(cuts)), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def read_split(out: Path, split: str = "train") -> list[tuple[dict, np.ndarray]]:
    """Every sample of OUT/<split>: (validated json, frames decoded at 1 FPS), in shard order."""
    samples = []
    for shard in sorted((out / split).glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".json"):
                key = name[: -len(".json")]
                document = validate_sample(json.loads(members[name]), f"{shard.name}:{key}", key=key)
                frames = read_video(members[key + ".mp4"], fps=1.0, name=f"{shard.name}:{key}.mp4")
                samples.append((document, frames))
    return samples


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
