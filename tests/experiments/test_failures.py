"""A real paper on real shards: interruptions resume bit-exactly; bad input stops the run cleanly.

STRIDE's tiny config is the subject (the fastest to train); the runner, the callbacks and the
shard pipeline under test are the same for every paper.
"""
import io
import os
import shutil
import signal
import tarfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from experiments import config as config_lib
from experiments import run
from tests.experiments.conftest import write_small_world

EXP = "stride/tiny"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_small_world(tmp_path_factory.mktemp("world"), shard_size=4)


def _cfg(world: Path, *extra: str):
    return config_lib.load(EXP, [f"data.root={world}", "data.batch_size=2", "data.num_workers=0", "trainer.max_steps=6",
                                 "trainer.checkpoint_every_n_steps=2", "trainer.enable_progress_bar=false",
                                 "trainer.check_val_every_n_epoch=100", *extra])


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


class _SignalAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("stop_at", [3, 5])  # 8 videos / batch 2: 4 batches an epoch, so mid-epoch 0 and 1
def test_interrupted_and_resumed_run_ends_with_identical_weights(world, tmp_path, monkeypatch, stop_at):
    full = tmp_path / "full"
    run.fit(_cfg(world), full, run_test=False)

    part = tmp_path / "part"
    real_trainer = run._trainer

    def trainer_with_signal(cfg, out, log_as):
        trainer = real_trainer(cfg, out, log_as)
        trainer.callbacks.insert(0, _SignalAtStep(stop_at))
        return trainer

    monkeypatch.setattr(run, "_trainer", trainer_with_signal)
    with pytest.raises(SystemExit):
        run.fit(_cfg(world), part, run_test=False)
    last = part / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == stop_at
    monkeypatch.setattr(run, "_trainer", real_trainer)
    run.fit(_cfg(world), part, ckpt=str(last), run_test=False)

    a, b = _weights(full / "checkpoints" / "last.ckpt"), _weights(last)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"


def _copy_world(world: Path, dest: Path) -> Path:
    shutil.copytree(world, dest)
    return dest


def _rewrite_shard(path: Path, change) -> None:
    """Rewrite a tar shard member by member through `change(name, bytes) -> bytes`."""
    members = []
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            members.append((info.name, change(info.name, tar.extractfile(info).read())))
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _first_checkpoint(world: Path, out: Path, *extra: str) -> bytes:
    run.fit(_cfg(world, "trainer.max_steps=2", *extra), out, run_test=False)
    return (out / "checkpoints" / "last.ckpt").read_bytes()


def test_corrupt_shard_stops_naming_it_and_keeps_the_checkpoint(world, tmp_path):
    bad = _copy_world(world, tmp_path / "bad")
    out = tmp_path / "run"
    before = _first_checkpoint(bad, out)
    shard = sorted((bad / "train").glob("shard-*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated mid-member
    with pytest.raises(Exception, match=shard.name):
        run.fit(_cfg(bad, "trainer.max_steps=40"), out, ckpt=str(out / "checkpoints" / "last.ckpt"), run_test=False)
    # whatever was saved is a whole, loadable checkpoint from a clean step
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] >= 2 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert before  # the first checkpoint existed before the corruption


def test_nan_features_stop_the_run_and_keep_the_checkpoint(world, tmp_path):
    bad = _copy_world(world, tmp_path / "bad")
    feats = ["model.features=feats", "model.feat_dim=768", "data.use_feats=true"]
    out = tmp_path / "run"
    _first_checkpoint(bad, out, *feats)
    good = _weights(out / "checkpoints" / "last.ckpt")

    def poison(name: str, data: bytes) -> bytes:
        if not name.endswith(".feats.npy"):
            return data
        array = np.load(io.BytesIO(data))
        array[:] = np.nan
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    for shard in (bad / "train").glob("shard-*.tar"):
        _rewrite_shard(shard, poison)
    with pytest.raises(Exception, match="(?i)nan|non-finite"):
        run.fit(_cfg(bad, "trainer.max_steps=6", *feats), out, ckpt=str(out / "checkpoints" / "last.ckpt"), run_test=False)
    after = _weights(out / "checkpoints" / "last.ckpt")
    assert all(torch.equal(good[k], after[k]) for k in good), "a poisoned step reached the checkpoint"


def test_misspelt_key_stops_before_any_work(world, tmp_path, capsys):
    out = tmp_path / "never"
    code = run.main(["fit", "--exp", EXP, "--out", str(out), f"data.root={world}", "data.batch_sise=2"])
    assert code == 2 and "data.batch_size" in capsys.readouterr().err
    assert not out.exists()


def _usr1_on_one_rank(rank: int, store: str, stopped) -> None:
    """One rank of two: only rank 1 got USR1; after the step's end both must stop (neither may wait alone)."""
    from types import SimpleNamespace

    from experiments.callbacks import SaveOnSignal

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    callback = SaveOnSignal(Path(store).with_suffix(".ckpt"))
    trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")),
                              received_sigterm=False, global_step=3)
    trainer._signal_connector = trainer  # the callback raises the flag Lightning's fit loop checks
    if rank == 1:
        callback._signum = signal.SIGUSR1
    callback.on_train_batch_end(trainer, None)
    stopped[rank] = trainer.received_sigterm
    torch.distributed.destroy_process_group()


def test_usr1_reaching_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    import torch.multiprocessing as mp

    stopped = mp.Manager().dict()
    mp.spawn(_usr1_on_one_rank, args=(str(tmp_path / "store"), stopped), nprocs=2, join=True)
    assert dict(stopped) == {0: True, 1: True}
