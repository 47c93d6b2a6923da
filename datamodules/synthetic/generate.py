"""`python -m datamodules.synthetic`: write the synthetic world as `longwatch/v1` shards.

DIR/{train,val,test}/shard-%06d.tar, DIR/tokenizer.json, DIR/world.json. Video i of a split is
drawn from its own random stream seeded by (seed, split, i): the output is the same for a seed
whatever the number of worker processes, and byte-identical from run to run.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datamodules.common.schema import SCHEMA
from datamodules.common.shards import ShardWriter
from datamodules.common.video import write_mp4

from .render import frame_features, render_video
from .tokenizer import sample_texts, save_tokenizer, train_tokenizer
from .world import DEFAULT_QA_TEMPLATES, QA_TEMPLATES, WORLD_VERSION, WorldConfig, annotate, sample_video

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
RETRIEVAL_KS = (1, 3, 5)


@dataclass
class GenerateConfig:
    out: str
    videos: int = 400                       # train videos
    eval_videos: int | None = None          # per eval split; default max(4, videos // 8)
    seed: int = 0
    splits: tuple[str, ...] = ("train", "val", "test")
    shard_size: int = 64
    feats: bool = False                     # also write <key>.feats.npy (16x16 pooled RGB, float16)
    video_format: str = "mp4"               # mp4 | npy (<key>.frames.npy, uint8)
    workers: int = 0                        # processes; 0 = os.cpu_count()
    overwrite: bool = False

    def __post_init__(self):
        if self.videos < 1:
            raise ValueError(f"videos must be >= 1, got {self.videos}")
        if self.eval_videos is None:
            self.eval_videos = max(4, self.videos // 8)
        unknown = [s for s in self.splits if s not in SPLIT_IDS]
        if unknown or not self.splits:
            raise ValueError(f"splits must be among {list(SPLIT_IDS)}, got {list(self.splits)}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.video_format not in ("mp4", "npy"):
            raise ValueError(f"video_format must be 'mp4' or 'npy', got {self.video_format!r}")

    def count(self, split: str) -> int:
        return self.videos if split == "train" else self.eval_videos


def make_sample(world: WorldConfig, seed: int, split: str, index: int, feats: bool = False,
                video_format: str = "mp4") -> tuple[str, dict]:
    """Draw, render and annotate video `index` of `split` -> (key, tar members)."""
    state_seq, render_seq, annotate_seq = np.random.SeedSequence([seed, SPLIT_IDS[split], index]).spawn(3)
    video = sample_video(world, np.random.default_rng(state_seq))
    frames = render_video(video, world, np.random.default_rng(render_seq))
    segments, qa, streaming, templates = annotate(video, world, np.random.default_rng(annotate_seq))
    key = f"{split}-{index:06d}"
    document = {
        "schema": SCHEMA, "key": key, "source": "synthetic", "duration": float(video.duration),
        "num_frames": int(video.duration), "segments": segments, "qa": qa, "streaming": streaming,
        "meta": {"world": WORLD_VERSION, "seed": seed, "split": split, "index": index,
                 "qa_templates": templates, "scenes": [_scene_state(s) for s in video.scenes]},
    }
    members: dict = {"json": document}
    if video_format == "mp4":
        buffer = io.BytesIO()
        write_mp4(buffer, frames, fps=1)
        members["mp4"] = buffer.getvalue()
    else:
        members["frames.npy"] = frames
    if feats:
        members["feats.npy"] = frame_features(frames)
    return key, members


def _scene_state(scene) -> dict:
    """The true state of a scene, absolute seconds, for analysis and tests (not for training)."""
    return {"start": scene.start, "end": scene.end, "texture": scene.texture, "tint": scene.tint,
            "revisit_of": scene.revisit_of,
            "shapes": [{"colour": s.colour, "shape": s.shape, "size": s.size, "motion": s.motion, "cell": s.cell,
                        "appear": scene.start + s.appear, "vanish": scene.start + s.vanish} for s in scene.shapes]}


def _work(args):
    return make_sample(*args)


def random_retrieval_recall(num_segments: int, num_positives: int, k: int) -> float:
    """P(a random ranking of the video's segments puts >= 1 of the positives in the top k)."""
    if k >= num_segments:
        return 1.0
    return 1.0 - math.comb(num_segments - num_positives, k) / math.comb(num_segments, k)


class _SplitStats:
    """Running figures for world.json: sizes, chance levels, answer priors."""

    def __init__(self):
        self.videos = self.seconds = self.segments = self.questions = 0
        self.retrieval = {k: [] for k in RETRIEVAL_KS}
        self.active_seconds = self.query_seconds = 0.0
        self.template_counts = {t: 0 for t in QA_TEMPLATES}
        self.answers: list[tuple[str, list[str], str]] = []  # (template, options, answer_text)

    def add(self, document: dict) -> None:
        self.videos += 1
        self.seconds += document["duration"]
        segments = document["segments"]
        self.segments += len(segments)
        for seg in segments:
            for k in RETRIEVAL_KS:
                self.retrieval[k].append(random_retrieval_recall(len(segments), len(seg["related"]), k))
        for item, template in zip(document["qa"], document["meta"]["qa_templates"]):
            self.questions += 1
            self.template_counts[template] += 1
            self.answers.append((template, item["options"], item["answer_text"]))
        for item in document["streaming"]:
            self.active_seconds += sum(e - s for s, e in item["spans"])
            self.query_seconds += document["duration"]

    def summary(self, prior: dict[str, dict[str, int]]) -> dict:
        # Text-only prior baseline: pick the option most often right in train for the same template.
        correct = sum(max(options, key=lambda o: prior.get(t, {}).get(o, 0)) == answer
                      for t, options, answer in self.answers)
        return {
            "videos": self.videos, "hours": round(self.seconds / 3600, 3), "segments": self.segments,
            "questions": self.questions, "qa_templates": self.template_counts,
            "chance": {
                "qa_accuracy": 0.25,
                "prior.qa_accuracy": round(correct / max(1, len(self.answers)), 4),
                **{f"random_retrieval.recall@{k}": round(float(np.mean(v)) if v else 0.0, 4)
                   for k, v in self.retrieval.items()},
                "streaming.active_fraction": round(self.active_seconds / max(1.0, self.query_seconds), 4),
            },
        }


def generate(cfg: GenerateConfig, world: WorldConfig, progress: bool = True) -> dict:
    """Write every split, the tokenizer and world.json; returns the world.json content."""
    out = Path(cfg.out)
    for split in cfg.splits:
        if (out / split).exists():
            if not cfg.overwrite:
                raise FileExistsError(f"{out / split} exists; pass --overwrite to replace it")
            shutil.rmtree(out / split)
    out.mkdir(parents=True, exist_ok=True)
    if world.size % 16 and cfg.feats:
        raise ValueError(f"--feats pools frames on a 16x16 grid: --size must be a multiple of 16, got {world.size}")
    workers = cfg.workers or os.cpu_count() or 1
    texts: list[str] = []
    stats: dict[str, _SplitStats] = {}
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn") if workers > 1 else None
    pool = context.Pool(workers) if context else None
    try:
        for split in cfg.splits:
            jobs = [(world, cfg.seed, split, i, cfg.feats, cfg.video_format) for i in range(cfg.count(split))]
            results = pool.imap(_work, jobs, chunksize=1) if pool else map(_work, jobs)
            stats[split] = _SplitStats()
            with ShardWriter(out / split, max_samples=cfg.shard_size) as writer:
                for key, members in tqdm(results, total=len(jobs), desc=f"{split:5s}", unit="video",
                                         disable=not progress):
                    writer.write(key, members)
                    stats[split].add(members["json"])
                    if split == "train":
                        texts += sample_texts(members["json"])
    finally:
        if pool:
            pool.close()
            pool.join()
    if not texts:  # no train split asked for: train the tokenizer on whatever was written
        texts = [t for split in cfg.splits for t in _split_texts(out / split)]
    save_tokenizer(train_tokenizer(texts), out)

    prior: dict[str, dict[str, int]] = {}
    for template, _, answer in stats.get("train", _SplitStats()).answers:
        prior.setdefault(template, {}).setdefault(answer, 0)
        prior[template][answer] += 1
    info = {
        "world": WORLD_VERSION, "schema": SCHEMA, "seed": cfg.seed,
        "generator": {"videos": cfg.videos, "eval_videos": cfg.eval_videos, "shard_size": cfg.shard_size,
                      "feats": cfg.feats, "feats_dim": 768 if cfg.feats else None, "video_format": cfg.video_format},
        "config": world.to_dict(),
        "splits": {split: s.summary(prior) for split, s in stats.items()},
        "chance_notes": {
            "qa_accuracy": "uniform guess among 4 options; answers are placed uniformly",
            "prior.qa_accuracy": "text-only baseline: per template, the option most often correct in train",
            "random_retrieval.recall@k": "a random ranking of a video's segments for each segment caption; "
                                         "hit if any related segment is in the top k (= k/num_segments "
                                         "with one positive), averaged over captions",
            "streaming.active_fraction": "fraction of seconds inside a query's spans (an always-on trigger's "
                                         "frame-level precision)",
        },
    }
    (out / "world.json").write_text(json.dumps(info, indent=2) + "\n")
    if progress:
        hours = sum(s.seconds for s in stats.values()) / 3600
        minutes = (time.perf_counter() - started) / 60
        print(f"wrote {sum(s.videos for s in stats.values())} videos, {hours:.2f} video-hours to {out} "
              f"in {minutes * 60:.1f} s ({hours / max(minutes, 1e-9):.1f} video-hours/min, {workers} workers)")
    return info


def _split_texts(directory: Path) -> list[str]:
    import tarfile
    texts = []
    for shard in sorted(directory.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    texts += sample_texts(json.load(tar.extractfile(member)))
    return texts


def parse_args(argv: list[str] | None = None) -> tuple[GenerateConfig, WorldConfig]:
    parser = argparse.ArgumentParser(prog="python -m datamodules.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (e.g. data/synthetic)")
    parser.add_argument("--videos", type=int, default=400, help="train videos (default 400)")
    parser.add_argument("--eval-videos", type=int, default=None, help="videos per eval split (default videos//8, >= 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=list(SPLIT_IDS))
    parser.add_argument("--minutes", type=float, nargs=2, metavar=("MIN", "MAX"), default=(1.0, 4.0))
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (even)")
    parser.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    parser.add_argument("--scenes", type=int, nargs=2, metavar=("MIN", "MAX"), default=(3, 8))
    parser.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"), default=(1, 4))
    parser.add_argument("--distractors", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--qa-per-video", type=int, default=6)
    parser.add_argument("--qa-templates", nargs="+", choices=QA_TEMPLATES, default=list(DEFAULT_QA_TEMPLATES),
                        metavar="TEMPLATE", help=f"question types to ask (default: the first six of {QA_TEMPLATES})")
    parser.add_argument("--streaming-per-video", type=int, default=3)
    parser.add_argument("--feats", action="store_true", help="also write <key>.feats.npy (T, 768) float16")
    parser.add_argument("--format", dest="video_format", choices=["mp4", "npy"], default="mp4")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    cfg = GenerateConfig(out=args.out, videos=args.videos, eval_videos=args.eval_videos, seed=args.seed,
                         splits=tuple(args.splits), shard_size=args.shard_size, feats=args.feats,
                         video_format=args.video_format, workers=args.workers, overwrite=args.overwrite)
    world = WorldConfig(minutes=tuple(args.minutes), size=args.size, scenes=tuple(args.scenes),
                        objects=tuple(args.objects), distractors=args.distractors, noise=args.noise,
                        qa_per_video=args.qa_per_video, qa_templates=tuple(args.qa_templates),
                        streaming_per_video=args.streaming_per_video)
    return cfg, world


def main(argv: list[str] | None = None) -> None:
    cfg, world = parse_args(argv)
    generate(cfg, world)
