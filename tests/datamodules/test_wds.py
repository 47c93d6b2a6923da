import collections
import io
import json
import shutil

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.common.shards import ShardWriter
from datamodules.common.video import write_mp4
from datamodules.common.wds import DataError, RawDataModule, ShardDataConfig, ShardDataModule

KEYS = {"train": [f"train-{i:06d}" for i in range(6)], "val": [f"val-{i:06d}" for i in range(3)]}


def module(root, **overrides):
    return RawDataModule(ShardDataConfig(**{"root": str(root), "batch_size": 1, "use_feats": True, **overrides}))


def slot_keys(stream, worker, workers):
    return [key for batch in stream.iter_slot(worker, workers) for key in batch["keys"]]


def test_config_checks():
    with pytest.raises(ValueError, match="on_error"):
        ShardDataConfig(on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        ShardDataConfig(batch_size=0)
    with pytest.raises(ValueError, match="max_frames"):
        ShardDataConfig(max_frames=0)


def test_base_class_says_what_to_implement(tiny_world):
    dm = ShardDataModule(ShardDataConfig(root=str(tiny_world), use_feats=True))
    with pytest.raises(NotImplementedError, match="map_sample"):
        next(iter(dm.val_dataloader()))


def test_empty_shard_list_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"no shards matching .*train/shard-\*\.tar"):
        module(tmp_path).train_dataloader()


@pytest.mark.parametrize("world_size, workers", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 2)])
def test_eval_sees_every_sample_exactly_once(tiny_world, world_size, workers):
    dm = module(tiny_world, batch_size=2, num_workers=workers)
    seen = [key for rank in range(world_size) for worker in range(workers)
            for key in slot_keys(dm.stream("val", rank, world_size), worker, workers)]
    assert sorted(seen) == KEYS["val"]
    # ... and in the same order every time.
    again = [key for rank in range(world_size) for worker in range(workers)
             for key in slot_keys(dm.stream("val", rank, world_size), worker, workers)]
    assert seen == again


def test_train_ranks_get_equal_batches_and_a_new_deterministic_shuffle_each_epoch(tiny_world):
    dm = module(tiny_world, batch_size=2, num_workers=1, samples_per_epoch=10, shuffle_buffer=4)

    def epoch_keys(epoch, rank, workers=1, world_size=2):
        stream = dm.stream("train", rank, world_size)
        stream.set_epoch(epoch)
        per_worker = [slot_keys(stream, w, workers) for w in range(workers)]
        return per_worker

    for rank in range(2):
        assert len(dm.stream("train", rank, 2)) == 10 // (2 * 2)
        (keys,) = epoch_keys(0, rank)
        assert len(keys) == 2 * 2 and set(keys) <= set(KEYS["train"])
    assert epoch_keys(0, 0) == epoch_keys(0, 0)          # same epoch, same samples and order
    assert epoch_keys(0, 0) != epoch_keys(1, 0)          # a new epoch reshuffles
    assert epoch_keys(0, 0) != epoch_keys(0, 1)          # ranks draw different streams
    # One rank, two workers: they share the rank's 5 batches round-robin (3 + 2).
    dm.cfg.num_workers = 2
    assert [len(k) for k in epoch_keys(0, 0, workers=2, world_size=1)] == [3 * 2, 2 * 2]


def test_train_checks_shards_against_readers(tiny_world):
    with pytest.raises(DataError, match="3 train shards .* 2 ranks x 2 workers = 4 readers"):
        module(tiny_world, num_workers=2).stream("train", 0, 2)


def test_real_loader_with_workers_and_epochs(tiny_world):
    dm = module(tiny_world, batch_size=2, num_workers=2, samples_per_epoch=8)
    loader = dm.train_dataloader()
    first = [batch["keys"] for batch in loader]
    second = [batch["keys"] for batch in loader]
    assert len(first) == len(second) == len(loader) == 4
    assert first != second and loader.loader.epochs_started == 2  # the StreamLoader under the ResumableLoader
    val = [key for batch in dm.val_dataloader() for key in batch["keys"]]
    assert sorted(val) == KEYS["val"]


def test_decoded_frames_match_the_json(tiny_world):
    dm = module(tiny_world, use_feats=False, batch_size=3)
    (batch,) = list(dm.val_dataloader())
    lengths = [doc["num_frames"] for doc in batch["json"]]
    assert batch["video"].dtype == torch.uint8 and batch["video"].shape == (3, max(lengths), 64, 64, 3)
    assert batch["mask"].sum(1).tolist() == lengths
    (small,) = list(module(tiny_world, use_feats=False, batch_size=3, frame_size=32, max_frames=10).val_dataloader())
    assert small["video"].shape == (3, 10, 32, 32, 3)
    (feats,) = list(module(tiny_world, batch_size=3).val_dataloader())
    assert feats["video"].dtype == torch.float32 and feats["video"].shape[-1] == 768


def test_feats_resample_like_the_decoded_video(tiny_world):
    """Feats are stored at 1 FPS; at data.fps 0.5 each output frame takes the stored feature at its
    interval's middle, as decoding the mp4 at 0.5 FPS takes the frame shown there."""
    (full,) = list(module(tiny_world, batch_size=3).val_dataloader())
    (half,) = list(module(tiny_world, batch_size=3, fps=0.5).val_dataloader())
    for doc, video, mask, video_half, mask_half in zip(full["json"], full["video"], full["mask"],
                                                       half["video"], half["mask"]):
        n = int(doc["duration"] * 0.5 + 1e-6)
        assert mask_half.sum() == n
        # frame i covers seconds [2i, 2i + 2): the feature of second 2i + 1, its middle
        assert torch.equal(video_half[:n], video[1:2 * n:2])
        assert mask.sum() == doc["num_frames"]


# --------------------------------------------------------------------------------------- bad data

def _document(key, duration=4.0, **changes):
    document = {"schema": "longwatch/v1", "key": key, "source": "synthetic", "duration": duration,
                "num_frames": int(duration), "segments": [], "qa": [], "streaming": [], "meta": {}}
    document.update(changes)
    return document


def _mp4(seconds=4):
    buffer = io.BytesIO()
    write_mp4(buffer, np.full((seconds, 16, 16, 3), 100, np.uint8))
    return buffer.getvalue()


def _write(directory, samples):
    with ShardWriter(directory, max_samples=100, validate=False) as writer:
        for key, members in samples:
            writer.write(key, members)
    return writer.shards


def _bad_samples():
    good = _mp4()
    missing = _document("k-missing")
    del missing["duration"]
    return {
        "k-good0": {"json": _document("k-good0"), "mp4": good},
        "k-truncated": {"json": _document("k-truncated"), "mp4": good[: len(good) // 2]},
        "k-missing": {"json": missing, "mp4": good},
        "k-mistyped": {"json": _document("k-mistyped", num_frames="4"), "mp4": good},
        "k-short": {"json": _document("k-short", duration=9.0), "mp4": good},
        "k-nojson": {"mp4": good},
        "k-good1": {"json": _document("k-good1"), "mp4": good},
    }


BAD = [("k-truncated", r"k-truncated\.mp4: .*(truncated)"),
       ("k-missing", r"k-missing: field 'duration': missing"),
       ("k-mistyped", r"k-mistyped: field 'num_frames': expected an integer, got str '4'"),
       ("k-short", r"k-short: decoded 4 frames .* duration 9.0"),
       ("k-nojson", r"k-nojson: missing member .json")]


@pytest.mark.parametrize("bad_key, message", BAD)
def test_raise_names_shard_key_and_problem(tmp_path, bad_key, message):
    samples = _bad_samples()
    _write(tmp_path / "val", [("k-good0", samples["k-good0"]), (bad_key, samples[bad_key])])
    with pytest.raises(DataError, match=r"val/shard-000000\.tar:" + message):
        list(module(tmp_path, use_feats=False).val_dataloader())


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_counts_bad_samples_and_keeps_the_good(tmp_path, workers, caplog):
    _write(tmp_path / "val", list(_bad_samples().items())[:4])
    _write(tmp_path / "val2", list(_bad_samples().items())[4:])
    (tmp_path / "val2" / "shard-000000.tar").rename(tmp_path / "val" / "shard-000001.tar")
    dm = module(tmp_path, use_feats=False, on_error="skip", num_workers=workers)
    loader = dm.val_dataloader()
    keys = [key for batch in loader for key in batch["keys"]]
    assert sorted(keys) == ["k-good0", "k-good1"]
    assert dm.skipped["val"] == 5 and loader.last_skipped == 5
    assert "skipped 5 bad samples" in caplog.text


def _tar_with_goods(directory, count=6):
    return _write(directory, [(f"k-{i}", {"json": _document(f"k-{i}"), "mp4": _mp4()}) for i in range(count)])[0]


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_tar_raises_or_is_skipped(tmp_path, damage):
    shard = _tar_with_goods(tmp_path / "val")
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2 + 100]
    else:  # overwrite the header of a member in the middle
        middle = data.find(b"k-3.json")
        data[middle:middle + 512] = b"\xff" * 512
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"val/shard-000000\.tar:k-\d.*corrupt or truncated tar"):
        list(module(tmp_path, use_feats=False).val_dataloader())
    dm = module(tmp_path, use_feats=False, on_error="skip")
    keys = [key for batch in dm.val_dataloader() for key in batch["keys"]]
    assert 1 <= len(keys) < 6 and dm.skipped["val"] >= 1


def test_map_sample_errors_are_never_skipped(tiny_world):
    class Broken(RawDataModule):
        def map_sample(self, sample, split):
            raise KeyError("boom")

    dm = Broken(ShardDataConfig(root=str(tiny_world), use_feats=True, on_error="skip"))
    with pytest.raises(KeyError) as info:
        next(iter(dm.val_dataloader()))
    assert "val/shard-000000.tar:val-000000" in "".join(getattr(info.value, "__notes__", []))


# ------------------------------------------------------------------------------------- Lightning

class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.train_keys, self.val_keys = [], []

    def training_step(self, batch, batch_idx):
        self.train_keys.append((self.current_epoch, tuple(batch["keys"])))
        return (self.weight - batch["video"].float().mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.val_keys.append((self.current_epoch, tuple(batch["keys"])))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_reshuffles_per_epoch_and_validates_everything(tiny_world):
    dm = module(tiny_world, batch_size=2, samples_per_epoch=6)
    model = _Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    per_epoch = collections.defaultdict(list)
    for epoch, keys in model.train_keys:
        per_epoch[epoch].append(keys)
    assert [len(per_epoch[e]) for e in (0, 1)] == [3, 3] and per_epoch[0] != per_epoch[1]
    for epoch in (0, 1):
        assert sorted(k for e, keys in model.val_keys if e == epoch for k in keys) == KEYS["val"]
