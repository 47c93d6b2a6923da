"""The base DataModule: `longwatch/v1` tar shards -> decoded, validated, paper-mapped batches.

Pipeline, per (rank, worker) "slot" (learned from open_clip's `get_wds_dataset`, written as plain
generator stages so every error can name its shard and key):

    train:  resampled shards (rng seeded by seed, epoch, slot)  -> raw samples -> shuffle buffer
    eval:   each shard read once, in order; shards split over slots (or samples, if there are
            fewer shards than slots), so every sample is seen exactly once across ranks and workers
    both:   -> validate JSON, decode video at `fps` (or load feats) -> map_sample -> batch -> collate

Train epochs have a fixed length: each rank yields exactly samples_per_epoch // (world_size *
batch_size) batches, split over its workers, so all ranks step together (the role of webdataset's
`with_epoch`). Shuffling happens on the raw (still encoded) samples, so the buffer holds compressed
videos rather than decoded frames.

Errors (`on_error`): "raise" stops with a DataError naming "split/shard.tar:key" and what is wrong;
"skip" logs that line, counts it, and reports the epoch's total when the loader is exhausted
(`ShardDataModule.skipped[split]`).
"""
from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .resume import ResumableLoader
from .schema import SampleError, validate_sample
from .shards import shard_paths
from .video import VideoError, read_feats_npy, read_frames_npy, read_video, resample_1fps

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
VIDEO_MEMBERS = ("mp4", "frames.npy")


class DataError(ValueError):
    """A sample or shard that cannot be used; the message starts with "split/shard.tar:key"."""

    def __init__(self, message: str, where: str | None = None):
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


@dataclass
class ShardDataConfig:
    root: str = "data/synthetic"          # holds {train,val,test}/shard-*.tar
    batch_size: int = 2
    num_workers: int = 0
    shuffle_buffer: int = 64              # raw (encoded) samples held for shuffling in train
    samples_per_epoch: int | None = None  # train items per epoch over all ranks; None = samples in train shards
    on_error: str = "raise"               # "raise" | "skip"
    fps: float = 1.0
    max_frames: int | None = None         # keep the first max_frames frames of each video
    frame_size: int | None = None         # resize frames to a square of this side; None keeps the stored size
    use_feats: bool = False               # read <key>.feats.npy instead of decoding video
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.root, (str, os.PathLike)) or not str(self.root):
            raise ValueError(f"data.root must be a directory path, got {self.root!r}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1 (1 = no shuffling), got {self.shuffle_buffer}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError(f"data.samples_per_epoch must be >= 1 or null, got {self.samples_per_epoch}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if not self.fps > 0:
            raise ValueError(f"data.fps must be > 0, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"data.max_frames must be >= 1 or null, got {self.max_frames}")
        if self.frame_size is not None and self.frame_size < 1:
            raise ValueError(f"data.frame_size must be >= 1 or null, got {self.frame_size}")


# --------------------------------------------------------------------------------------- reading tars

@dataclass
class RawSample:
    """One sample as stored: its members' bytes, still encoded."""

    key: str
    shard: str               # "split/shard-000003.tar"
    members: dict[str, bytes]

    @property
    def where(self) -> str:
        return f"{self.shard}:{self.key}"


def shard_name(path: str | os.PathLike) -> str:
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def read_shard(path: str | os.PathLike) -> Iterator[RawSample | DataError]:
    """Group a plain tar's members `<key>.<ext>` into samples, in order.

    A broken tar ends in a DataError item rather than a raise, so the caller applies the error policy
    and moves on to the next shard. tarfile takes a file cut at a header boundary for a complete
    archive, and stops silently at a garbled header, so we also check that iteration stopped at the
    end-of-archive marker (two zero blocks): otherwise the last sample read may be incomplete and is
    not yielded.
    """
    name, current, last_key = shard_name(path), None, None

    def broken(reason: str) -> DataError:
        where = f"{name}:{last_key}" if last_key else name
        return DataError(f"corrupt or truncated tar after {'key ' + repr(last_key) if last_key else 'its start'}: "
                         f"{reason}", where)

    try:
        size = os.path.getsize(path)
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    yield DataError(f"member {member.name!r} has no extension", f"{name}:{base}")
                    continue
                key, ext = base.split(".", 1)
                key = member.name[: len(member.name) - len(base)] + key
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    yield broken(f"member {member.name!r} has {len(data)} of its {member.size} bytes")
                    return
                if current is not None and current.key != key:
                    yield current
                    current = None
                if current is None:
                    current, last_key = RawSample(key, name, {}), key
                if ext in current.members:
                    yield DataError(f"member .{ext} appears twice", f"{name}:{key}")
                current.members[ext] = data
            end_of_members = tar.offset
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        yield broken(f"{type(error).__name__}: {error}")
        return  # the partial sample read so far cannot be trusted
    with open(path, "rb") as raw:
        raw.seek(end_of_members)
        marker = raw.read(2 * tarfile.BLOCKSIZE)
    if marker != bytes(2 * tarfile.BLOCKSIZE):
        yield broken(f"no end-of-archive marker at byte {end_of_members} (file size {size}): "
                     "a damaged header or a cut file")
        return
    if current is not None:
        yield current


def count_samples(shards: Iterable[str | os.PathLike]) -> int:
    """Distinct keys over shards, reading tar headers only (tarfile seeks past member data)."""
    total = 0
    for path in shards:
        try:
            with tarfile.open(path) as tar:
                total += len({m.name.rsplit("/", 1)[-1].split(".", 1)[0] for m in tar.getmembers() if m.isfile()})
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DataError(f"cannot index shard: {type(error).__name__}: {error}", shard_name(path)) from error
    return total


# ----------------------------------------------------------------------------------------- decoding

def decode_sample(raw: RawSample, cfg: ShardDataConfig) -> dict:
    """Validate the JSON and decode frames (or load feats) -> the dict `map_sample` receives:
    {"json": validated dict, "frames": uint8 (T, H, W, 3) or "feats": float32 (T, D), "key", "shard"}."""
    where = raw.where
    if "json" not in raw.members:
        raise DataError(f"missing member .json (has {sorted(raw.members)})", where)
    try:
        document = json.loads(raw.members["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f".json is not valid JSON: {error}", where) from error
    try:
        document = validate_sample(document, where, key=raw.key.rsplit("/", 1)[-1])
    except SampleError as error:
        raise DataError(f"field '{error.field}': {error.message}", where) from error

    sample = {"json": document, "key": raw.key, "shard": raw.shard}
    expected = math.floor(document["duration"] * cfg.fps + 1e-6)
    if cfg.max_frames is not None:
        expected = min(expected, cfg.max_frames)
    try:
        if cfg.use_feats:
            if "feats.npy" not in raw.members:
                raise DataError(f"data.use_feats is set but the sample has no .feats.npy (has {sorted(raw.members)})",
                                where)
            feats = read_feats_npy(raw.members["feats.npy"], name=f"{where}.feats.npy")
            if len(feats) != document["num_frames"]:
                raise DataError(f".feats.npy has {len(feats)} frames, json num_frames is {document['num_frames']}",
                                where)
            sample["feats"] = torch.from_numpy(resample_1fps(feats, cfg.fps, expected).astype(np.float32))
            return sample
        if "mp4" in raw.members:
            frames = read_video(raw.members["mp4"], fps=cfg.fps, max_frames=cfg.max_frames, name=f"{where}.mp4")
        elif "frames.npy" in raw.members:
            frames = resample_1fps(read_frames_npy(raw.members["frames.npy"], name=f"{where}.frames.npy"),
                                   cfg.fps, expected)
        else:
            raise DataError(f"no video member: expected one of {['.' + m for m in VIDEO_MEMBERS]}, "
                            f"has {sorted(raw.members)}", where)
    except VideoError as error:  # its message already starts with "split/shard.tar:key.mp4"
        wrapped = DataError(str(error))
        wrapped.where = where
        raise wrapped from error
    if len(frames) != expected:
        raise DataError(f"decoded {len(frames)} frames at {cfg.fps} FPS but the json says duration "
                        f"{document['duration']} s -> {expected} frames (truncated video?)", where)
    frames = torch.from_numpy(frames)
    if cfg.frame_size is not None and frames.shape[1:3] != (cfg.frame_size, cfg.frame_size):
        frames = resize_frames(frames, cfg.frame_size)
    sample["frames"] = frames
    return sample


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3), antialiased bilinear."""
    chw = frames.permute(0, 3, 1, 2).float()
    out = F.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ------------------------------------------------------------------------------------------ the stream

class ShardStream(IterableDataset):
    """Batches of one split for one rank; its DataLoader workers split the work between them.

    Args:
        shards: shard paths of the split (sorted).
        split: "train" (resampled, shuffled, fixed length) or an eval split (each sample once, in order).
        map_sample / collate: the paper DataModule's functions.
        rank, world_size: this process's place among the data-parallel ranks.
        num_batches: batches this rank yields per train epoch (ignored for eval splits).
        errors: shared counter of skipped samples (a multiprocessing Value, so workers can add to it).
    """

    def __init__(self, shards: list[str], split: str, cfg: ShardDataConfig,
                 map_sample: Callable[[dict, str], Any], collate: Callable[[list], Any],
                 rank: int = 0, world_size: int = 1, num_batches: int | None = None, errors=None):
        self.shards, self.split, self.cfg = [str(s) for s in shards], split, cfg
        self.map_sample, self.collate = map_sample, collate
        self.rank, self.world_size = rank, world_size
        self.train = split == "train"
        if self.train and not num_batches:
            raise ValueError("a train stream needs num_batches >= 1")
        self.num_batches = num_batches
        self.errors = errors
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError(f"{self.split} stream has no fixed length")
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_slot(worker, workers)

    def iter_slot(self, worker: int, workers: int) -> Iterator[Any]:
        """The batches of DataLoader worker `worker` of `workers` on this rank."""
        slot, slots = self.rank * workers + worker, self.world_size * workers
        if self.train:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, slot])
            raw = _shuffle(_resampled(self.shards, rng), self.cfg.shuffle_buffer, rng)
            # This worker's share of the rank's batches: the DataLoader interleaves workers round-robin.
            quota = len(range(worker, self.num_batches, workers))
        else:
            raw, quota = self._eval_raw(slot, slots), None
        batches = _batched(self._items(raw, (self.cfg.seed, self.epoch, slot)), self.cfg.batch_size, drop_last=self.train)
        for count, batch in enumerate(batches):
            if quota is not None and count >= quota:
                return
            yield self.collate(batch)

    def _eval_raw(self, slot: int, slots: int) -> Iterator[RawSample | DataError]:
        if len(self.shards) >= slots:  # whole shards per slot: no slot reads another's bytes
            for shard in self.shards[slot::slots]:
                yield from read_shard(shard)
            return
        index = 0  # fewer shards than slots: every slot reads all shards and keeps every slots-th sample
        for shard in self.shards:
            for item in read_shard(shard):
                if isinstance(item, DataError):
                    if slot == 0:  # report a broken shard once, not once per slot
                        yield item
                    continue
                if index % slots == slot:
                    yield item
                index += 1

    def _items(self, raw: Iterable[RawSample | DataError], stream: tuple[int, int, int]) -> Iterator[Any]:
        """Decoded, mapped items. Each sample carries `draw_seed`, a pure function of (seed, epoch,
        reader slot, position in the stream): map_sample seeds its random choices (crops, windows,
        masks) with it, so a resumed run replays them exactly and no two draws repeat."""
        for position, item in enumerate(raw):
            if isinstance(item, DataError):
                self._fail(item)
                continue
            try:
                sample = decode_sample(item, self.cfg)
            except DataError as error:
                self._fail(error)
                continue
            sample["draw_seed"] = [*stream, position]
            try:
                mapped = self.map_sample(sample, self.split)
            except Exception as error:  # a bug or a mismatch in the paper's mapping: never skipped
                error.add_note(f"while map_sample processed {item.where}")
                raise
            yield from (mapped if isinstance(mapped, list) else [mapped])

    def _fail(self, error: DataError) -> None:
        if self.cfg.on_error == "raise":
            raise error
        log.warning("skipping bad sample (data.on_error='skip'): %s", error)
        if self.errors is not None:
            with self.errors.get_lock():
                self.errors.value += 1


def _resampled(shards: list[str], rng: np.random.Generator) -> Iterator[RawSample | DataError]:
    """An endless stream of samples from shards drawn with replacement."""
    while True:
        yield from read_shard(shards[int(rng.integers(len(shards)))])


def _shuffle(items: Iterator, buffer_size: int, rng: np.random.Generator) -> Iterator:
    """Reservoir-style shuffle: fill a buffer, then emit a random element for each new one."""
    buffer: list = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = int(rng.integers(buffer_size))
        buffer[index], item = item, buffer[index]
        yield item
    while buffer:  # only reached for finite streams
        yield buffer.pop(int(rng.integers(len(buffer))))


def _batched(items: Iterator, batch_size: int, drop_last: bool) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch and not drop_last:
        yield batch


class StreamLoader(DataLoader):
    """A DataLoader over a ShardStream that sets the stream's epoch before each pass and reports the
    samples skipped in it. Workers are not persistent: each epoch they get the new epoch number."""

    def __init__(self, dataset: ShardStream, epoch_fn: Callable[[], int | None] | None = None, **kwargs):
        kwargs.setdefault("batch_size", None)  # batching happens in the workers
        super().__init__(dataset, **kwargs)
        self.epoch_fn = epoch_fn
        self.epochs_started = 0
        self.last_skipped = 0

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch = self.epochs_started if epoch is None else epoch
        self.dataset.set_epoch(epoch)
        self.epochs_started += 1
        errors = self.dataset.errors
        before = errors.value if errors is not None else 0
        yield from super().__iter__()
        self.last_skipped = (errors.value if errors is not None else 0) - before
        if self.last_skipped:
            log.warning("%s epoch %d: skipped %d bad samples (data.on_error='skip'); see the warnings above",
                        self.dataset.split, epoch, self.last_skipped)


# ---------------------------------------------------------------------------------------- DataModule

class ShardDataModule(L.LightningDataModule):
    """Streams `cfg.root/{train,val,test}/shard-*.tar`. Subclasses (one per paper) implement:

    - `map_sample(sample, split) -> dict | list[dict]`: sample = {"json": validated dict, "frames": uint8
      (T, H, W, 3) or "feats": float32 (T, D), "key": str, "shard": str}; a list yields several items.
    - `collate(items) -> dict`: a batch from `batch_size` items (see `datamodules.common.collate`).
    """

    def __init__(self, cfg: ShardDataConfig):
        super().__init__()
        self.cfg = cfg
        self._errors: dict[str, Any] = {}

    # --- to implement in subclasses
    def map_sample(self, sample: dict, split: str) -> dict | list[dict]:
        raise NotImplementedError(f"{type(self).__name__}.map_sample: turn a decoded sample into model items")

    def collate(self, items: list) -> dict:
        raise NotImplementedError(f"{type(self).__name__}.collate: turn a list of items into a batch")

    # --- plumbing
    def shards(self, split: str) -> list[Path]:
        directory = Path(self.cfg.root) / split
        found = shard_paths(directory)
        if not found:
            raise DataError(f"no shards matching {directory}/shard-*.tar (generate data with "
                            f"`python -m datamodules.synthetic --out {self.cfg.root}` or check data.root)")
        return found

    def _place(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _epoch(self) -> int | None:
        """The Trainer's epoch when one drives us (right after resuming too); None lets the loader count."""
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else None

    def train_batches_per_rank(self, world_size: int) -> int:
        per_epoch = self.cfg.samples_per_epoch or count_samples(self.shards("train"))
        batches = per_epoch // (world_size * self.cfg.batch_size)
        if batches < 1:
            raise DataError(f"samples_per_epoch {per_epoch} < world_size {world_size} x batch_size "
                            f"{self.cfg.batch_size}: no full batch per rank")
        return batches

    def stream(self, split: str, rank: int | None = None, world_size: int | None = None) -> ShardStream:
        """The IterableDataset of `split` for one rank (defaults: this process's rank)."""
        if rank is None or world_size is None:
            rank, world_size = self._place()
        shards = self.shards(split)
        num_batches = None
        if split == "train":
            slots = world_size * max(1, self.cfg.num_workers)
            if len(shards) < slots:
                raise DataError(f"{len(shards)} train shards in {Path(self.cfg.root) / split} for {world_size} "
                                f"ranks x {max(1, self.cfg.num_workers)} workers = {slots} readers: each needs "
                                "its own shards to keep their samples apart; lower data.num_workers or write "
                                "smaller shards (--shard-size)")
            num_batches = self.train_batches_per_rank(world_size)
        if split not in self._errors:
            self._errors[split] = multiprocessing.Value("l", 0)
        return ShardStream(shards, split, self.cfg, self.map_sample, self.collate, rank=rank,
                           world_size=world_size, num_batches=num_batches, errors=self._errors[split])

    def loader(self, split: str, rank: int | None = None, world_size: int | None = None) -> StreamLoader:
        return StreamLoader(self.stream(split, rank, world_size), epoch_fn=self._epoch,
                            num_workers=self.cfg.num_workers)

    def __getstate__(self) -> dict:
        # Spawned DataLoader workers pickle map_sample's owner (us): leave the Trainer behind.
        state = self.__dict__.copy()
        state["trainer"] = None
        return state

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped so far per split (on_error='skip')."""
        return {split: counter.value for split, counter in self._errors.items()}

    def train_dataloader(self) -> ResumableLoader:
        # each epoch's order is a function of (seed, epoch): a resumed run skips what it trained on
        return ResumableLoader(self.loader("train"), lambda: getattr(self, "trainer", None))

    def val_dataloader(self) -> StreamLoader:
        return self.loader("val")

    def test_dataloader(self) -> StreamLoader:
        return self.loader("test")

    def predict_dataloader(self) -> StreamLoader:
        return self.loader("test")


class RawDataModule(ShardDataModule):
    """No paper mapping: batches of padded frames (or feats) + masks + the validated JSON.
    For inspection, benchmarks and tests of the pipeline itself."""

    def map_sample(self, sample: dict, split: str) -> dict:
        video = sample["feats"] if "feats" in sample else sample["frames"]
        return {"video": video, "key": sample["key"], "json": sample["json"]}

    def collate(self, items: list[dict]) -> dict:
        from .collate import pad_sequences
        video, mask = pad_sequences([item["video"] for item in items])
        return {"video": video, "mask": mask, "keys": [item["key"] for item in items],
                "json": [item["json"] for item in items]}
