"""Data-side benchmark: synthetic generation speed and loader throughput.

    python -m datamodules.benchmarks [--videos 48] [--minutes 1 4] [--out-dir DIR]

Prints a markdown table and writes it to datamodules/benchmarks/results/data_<hw>_<date>.md with the
command that made it. Wall time depends on what else runs on the machine, so CPU time (this process
and its children) and the load average are reported beside it.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

from datamodules.common.wds import RawDataModule, ShardDataConfig, ShardStream, StreamLoader
from datamodules.synthetic import GenerateConfig, WorldConfig, generate

RESULTS = Path(__file__).parent / "results"


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def hardware() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}cpu", model


def bench_generation(root: Path, videos: int, minutes: tuple[float, float], workers: int) -> dict:
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    info = generate(GenerateConfig(out=str(root), videos=videos, eval_videos=max(4, videos // 8), seed=0,
                                   feats=True, workers=workers, overwrite=True, shard_size=8),
                    WorldConfig(minutes=minutes), progress=False)
    wall, cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
    hours = sum(split["hours"] for split in info["splits"].values())
    return {"videos": sum(split["videos"] for split in info["splits"].values()), "hours": hours,
            "wall": wall, "cpu": cpu}


def bench_loader(root: Path, workers: int, use_feats: bool, batch_size: int = 4) -> dict:
    """One pass over the train split read as an eval split (each sample once), decoding everything."""
    dm = RawDataModule(ShardDataConfig(root=str(root), batch_size=batch_size, num_workers=workers,
                                       use_feats=use_feats))
    # The train shards read the eval way (each sample once, in order): a fixed amount of work to time.
    stream = ShardStream(dm.shards("train"), "train-once", dm.cfg, dm.map_sample, dm.collate)
    loader = StreamLoader(stream, num_workers=workers)
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    samples = frames = 0
    for batch in loader:
        samples += len(batch["keys"])
        frames += int(batch["mask"].sum())
    return {"samples": samples, "frames": frames, "wall": time.perf_counter() - start_wall,
            "cpu": cpu_seconds() - start_cpu}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48, help="train videos to generate (eval splits add 1/8)")
    parser.add_argument("--minutes", type=float, nargs=2, default=(1.0, 4.0))
    parser.add_argument("--out-dir", default=None, help="where to write the world (default: a temp dir)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    command = " ".join(["python -m datamodules.benchmarks", shlex.join(sys.argv[1:] if argv is None else argv)]).strip()

    tmp = tempfile.TemporaryDirectory()
    root = Path(args.out_dir or tmp.name) / "world"
    rows = []
    for workers in (1, 2):
        g = bench_generation(root, args.videos, tuple(args.minutes), workers)
        rows.append(f"| generate ({workers} process{'es' if workers > 1 else ''}) | {g['videos']} videos, "
                    f"{g['hours']:.2f} h | {g['wall']:.1f} | {g['cpu']:.1f} | "
                    f"{g['hours'] / (g['wall'] / 60):.1f} video-h/min wall, "
                    f"{g['hours'] / (g['cpu'] / 60):.1f} video-h per CPU-min |")
    for use_feats in (False, True):
        for workers in (0, 2):
            r = bench_loader(root, workers, use_feats)
            what = "feats.npy" if use_feats else "mp4 decode"
            rows.append(f"| load {what}, {workers} workers | {r['samples']} samples, {r['frames']} frames | "
                        f"{r['wall']:.1f} | {r['cpu']:.1f} | {r['frames'] / r['wall']:.0f} frames/s, "
                        f"{r['samples'] / r['wall']:.1f} samples/s |")

    hw, model = hardware()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table = "\n".join([
        f"# Data benchmark: {hw} ({model}), {datetime.date.today().isoformat()}", "",
        f"Command: `{command}`  ", f"Load average at the end (1, 5, 15 min): {load}  ",
        "Frames are 64x64 RGB at 1 FPS; loader rows read the train split once with batch size 4. "
        "CPU seconds include worker processes; wall time includes waiting for other jobs on a shared machine.",
        "", "| what | amount | wall s | CPU s | throughput |", "|---|---|---|---|---|", *rows, ""])
    print(table)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"data_{hw}_{datetime.date.today().isoformat()}.md"
        path.write_text(table)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
