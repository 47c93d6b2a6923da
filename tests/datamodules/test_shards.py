import json
import subprocess
import tarfile

import numpy as np
import pytest
import webdataset as wds

from datamodules.common.schema import SampleError
from datamodules.common.shards import ShardWriter, shard_paths


def document(key, duration=3.0):
    return {"schema": "longwatch/v1", "key": key, "source": "synthetic", "duration": duration,
            "num_frames": int(duration), "segments": [], "qa": [], "streaming": [], "meta": {}}


def test_rolls_over_and_reads_back_with_webdataset_and_tar(tmp_path):
    with ShardWriter(tmp_path, max_samples=2) as writer:
        for i in range(5):
            key = f"val-{i:06d}"
            writer.write(key, {"json": document(key), "mp4": b"fake-%d" % i, "feats.npy": np.ones((3, 2), np.float16)})
    assert [p.name for p in writer.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert shard_paths(tmp_path) == writer.shards
    listing = subprocess.run(["tar", "tf", str(writer.shards[0])], capture_output=True, text=True, check=True).stdout
    assert listing.split() == ["val-000000.json", "val-000000.mp4", "val-000000.feats.npy",
                               "val-000001.json", "val-000001.mp4", "val-000001.feats.npy"]
    samples = list(wds.WebDataset([str(p) for p in writer.shards], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"val-{i:06d}" for i in range(5)]
    assert samples[3]["mp4"] == b"fake-3" and json.loads(samples[3]["json"])["key"] == "val-000003"


def test_validates_json_and_keys_before_writing(tmp_path):
    writer = ShardWriter(tmp_path, max_samples=4)
    with pytest.raises(SampleError, match="shard-000000.tar:k1: field 'key'"):
        writer.write("k1", {"json": document("other")})
    with pytest.raises(ValueError, match="no dots"):
        writer.write("a.b", {"json": document("a.b")})
    writer.write("k2", {"json": document("k2")})
    with pytest.raises(ValueError, match="twice"):
        writer.write("k2", {"json": document("k2")})
    writer.close()
    with tarfile.open(writer.shards[0]) as tar:
        assert tar.getnames() == ["k2.json"]


def test_no_half_written_shard_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path) as writer:
            writer.write("k", {"json": document("k")})
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
