"""Writing WebDataset tar shards: `DIR/shard-%06d.tar`, rolling over every `max_samples` samples.

Plain POSIX tars written with the stdlib `tarfile`, members `<key>.<ext>` grouped per sample, so
stock `webdataset.WebDataset` and `tar` both read them. Member metadata (mtime, owner, mode) is
fixed, which makes a shard's bytes a pure function of its samples: same seed, same shards.
A shard is written under a temporary name and renamed when complete, so a crash never leaves a
half-written tar that looks valid.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .schema import validate_sample

SHARD_PATTERN = "shard-%06d.tar"
_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_EXT = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def encode_member(value: Any, ext: str) -> bytes:
    """bytes pass through; str -> UTF-8; dict/list -> JSON; np.ndarray -> .npy (no pickle)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return buffer.getvalue()
    raise TypeError(f"member '.{ext}': cannot encode {type(value).__name__}; give bytes, str, dict or np.ndarray")


def shard_paths(directory: str | os.PathLike) -> list[Path]:
    """The `shard-*.tar` files of one split directory, in order."""
    return sorted(Path(directory).glob("shard-*.tar"))


class ShardWriter:
    """Write samples into rolling tar shards.

    >>> with ShardWriter("data/x/train", max_samples=64) as writer:
    ...     writer.write("train-000000", {"json": sample_dict, "mp4": mp4_bytes})

    Args:
        directory: created if missing; shards are named `shard-%06d.tar` from `start_index`.
        max_samples: samples per shard before rolling over to the next.
        validate: check each "json" member against `longwatch/v1` (and its key) before writing.
    """

    def __init__(self, directory: str | os.PathLike, max_samples: int = 100, start_index: int = 0,
                 validate: bool = True):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self.validate = validate
        self.shards: list[Path] = []
        self._index = start_index
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._keys: set[str] = set()

    def write(self, key: str, members: Mapping[str, Any]) -> None:
        """Add one sample: `members` maps extensions ("json", "mp4", "feats.npy", ...) to content."""
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"sample key {key!r}: use letters, digits, '_' and '-' only (no dots, no slashes)")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice")
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        for ext in members:
            if not _EXT.match(ext):
                raise ValueError(f"sample {key!r}: bad member extension {ext!r} (no leading dot, e.g. 'feats.npy')")
        if self._tar is None or self._count >= self.max_samples:
            self._roll()
        if self.validate and "json" in members:
            document = members["json"]
            if isinstance(document, (bytes, str)):
                document = json.loads(document)
            validate_sample(document, f"{self._final_path().name}:{key}", key=key)
        self._keys.add(key)
        for ext, value in members.items():
            data = encode_member(value, ext)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def _final_path(self) -> Path:
        return self.directory / (SHARD_PATTERN % self._index)

    def _roll(self) -> None:
        if self._tar is not None:
            self._finish()
            self._index += 1
        self._tar = tarfile.open(self._final_path().with_suffix(".tar.tmp"), "w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def _finish(self) -> None:
        self._tar.close()
        final = self._final_path()
        os.replace(final.with_suffix(".tar.tmp"), final)
        self.shards.append(final)
        self._tar = None

    def close(self) -> list[Path]:
        """Finish the open shard; returns every shard written."""
        if self._tar is not None:
            self._finish()
        return list(self.shards)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # leave no half-written shard behind
            self._tar.close()
            self._final_path().with_suffix(".tar.tmp").unlink(missing_ok=True)
            self._tar = None
