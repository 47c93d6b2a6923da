"""`python -m datamodules.convert FORMAT ANNOTATIONS... --videos DIR --out DIR [options]`."""
from __future__ import annotations

import argparse
import logging
import sys

from .core import ETBENCH_STREAMING_TASKS, FORMATS, LB_THRESHOLD, SEN_THRESHOLD, AnnotationError, ConvertConfig
from .driver import convert


def parse_args(argv: list[str] | None = None) -> ConvertConfig:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.convert",
        description="Turn a published annotation file plus a folder of videos into longwatch/v1 "
                    "shards OUT/<split>/shard-%%06d.tar, videos re-encoded at 1 FPS.")
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("annotations", nargs="+", help="the published file(s): JSON, JSONL or parquet")
    parser.add_argument("--videos", required=True, help="folder holding the videos the annotations name")
    parser.add_argument("--out", required=True, help="dataset root; shards go to OUT/<split>/")
    parser.add_argument("--split", default="train")
    parser.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    parser.add_argument("--scene-detect", action="store_true",
                        help="cut videos without scene boundaries into segments with PySceneDetect")
    parser.add_argument("--scene-threshold", type=float, default=27.0, help="ContentDetector threshold")
    parser.add_argument("--min-scene-seconds", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=None, help="resize so the shorter side has SIZE px")
    parser.add_argument("--sen-sim", choices=("given", "minilm"), default="given",
                        help="minilm: compute missing caption similarities with all-MiniLM-L6-v2")
    parser.add_argument("--sen-threshold", type=float, default=SEN_THRESHOLD)
    parser.add_argument("--lb-threshold", type=float, default=LB_THRESHOLD)
    parser.add_argument("--min-gap", type=float, default=1.0,
                        help="gaps between segments shorter than this (s) are absorbed, longer ones filled")
    parser.add_argument("--etbench-streaming-tasks", default=",".join(ETBENCH_STREAMING_TASKS),
                        help="comma-separated ET-Bench tasks converted to streaming queries")
    parser.add_argument("--subset", default=None, help="YouCook2: keep only this subset (e.g. validation)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="malformed rows and undecodable videos: stop (raise) or report and go on (skip)")
    parser.add_argument("--limit", type=int, default=None, help="convert at most this many videos")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    return ConvertConfig(
        format=args.format, annotations=args.annotations, videos=args.videos, out=args.out, split=args.split,
        shard_size=args.shard_size, scene_detect=args.scene_detect, scene_threshold=args.scene_threshold,
        min_scene_seconds=args.min_scene_seconds, short_side=args.size, sen_sim=args.sen_sim,
        sen_threshold=args.sen_threshold, lb_threshold=args.lb_threshold, min_gap=args.min_gap,
        etbench_streaming_tasks=tuple(t.strip() for t in args.etbench_streaming_tasks.split(",") if t.strip()),
        subset=args.subset, on_error=args.on_error, limit=args.limit, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
        report = convert(cfg)
    except (AnnotationError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
