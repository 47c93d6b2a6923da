"""Multi-node training on a real Slurm cluster: two emulated nodes, one CPU rank each, over gloo.

Marked `slurm` (run by `make test-slurm` and CI): starts the cluster from Debian's packages,
submits through `make slurm ... WAIT=1` exactly as a user would, and checks what the job left.
Every step has a time limit; a failing job fails the test with its log.
"""
import os
import subprocess
from pathlib import Path

import pytest

from tests.experiments.conftest import write_small_world

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "experiments" / "slurm" / "local_cluster.sh"
EXP = "stride/tiny"
SHRINK = ["trainer.max_steps=6", "data.batch_size=2", "trainer.limit_test_batches=1", "trainer.limit_val_batches=1", "data.num_workers=0"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "LOCAL_SLURM_DIR": str(state)}
    subprocess.run([str(CLUSTER), "start"], env=env, check=True, timeout=900)
    # emulated nodes share this host: rank 0's address is loopback, not the node name
    yield {**env, "SLURM_CONF": str(state / "slurm.conf"), "MASTER_ADDR": "127.0.0.1"}
    subprocess.run([str(CLUSTER), "stop"], env=env, timeout=120)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return write_small_world(tmp_path_factory.mktemp("world"), shard_size=2)


def _submit(env, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    args = " ".join(overrides)
    cmd = ["make", "-C", str(REPO), "slurm", f"EXP={EXP}", "NODES=2", "GPUS_PER_NODE=0", f"OUT={out}",
           "TIME=00:20:00", "WAIT=1", f"ARGS={args}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)


def _job_log(out: Path, tail: int | None = 6000) -> str:
    texts = (p.read_text() for p in sorted((out / "slurm").glob("*.out")))
    return "\n".join(text[-tail:] if tail else text for text in texts)


def test_two_node_job_trains_both_ranks_identically(cluster, tiny_world, tmp_path):
    out = tmp_path / "run"
    result = _submit(cluster, out, [f"data.root={tiny_world}", *SHRINK])
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{_job_log(out)}"
    ranks = {p.name: dict(kv.split("=") for kv in p.read_text().split()) for p in (out / "checksums").glob("rank*.txt")}
    assert set(ranks) == {"rank0.txt", "rank1.txt"}, _job_log(out)
    assert all(r["world_size"] == "2" and r["global_step"] == "6" for r in ranks.values()), ranks
    assert ranks["rank0.txt"]["sha256"] == ranks["rank1.txt"]["sha256"], "ranks ended with different weights"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (out / "report" / "metrics.json").exists()


def test_failing_job_fails_with_its_exit_code(cluster, tmp_path):
    out = tmp_path / "broken"
    result = _submit(cluster, out, [f"data.root={tmp_path / 'no-such-world'}", *SHRINK])
    assert result.returncode != 0
    assert "no-such-world" in _job_log(out)


def _wait_for(predicate, timeout: float, what: str, out: Path) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{_job_log(out)}")
        time.sleep(1)


def test_preempted_job_checkpoints_requeues_and_resumes(cluster, tiny_world, tmp_path):
    """USR1 (what --signal=USR1@90 sends before the time limit) mid-fit: the job saves, requeues, resumes."""
    out = tmp_path / "preempted"
    steps = 400  # long enough to be signalled mid-fit
    overrides = [f"data.root={tiny_world}", *SHRINK, f"trainer.max_steps={steps}", "trainer.checkpoint_every_n_steps=1000"]
    cmd = ["make", "-s", "--no-print-directory", "-C", str(REPO), "slurm", f"EXP={EXP}", "NODES=2", "GPUS_PER_NODE=0",
           f"OUT={out}", "TIME=00:20:00", f"ARGS={' '.join(overrides)}"]
    submitted = subprocess.run(cmd, env=cluster, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().splitlines()[-1]
    assert job.isdigit(), submitted.stdout
    metrics = out / "logs" / "fit" / "metrics.csv"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 2, 600, "training to start", out)
    subprocess.run(["scancel", "--signal=USR1", "--full", job], env=cluster, check=True, timeout=60)
    last = out / "checkpoints" / "last.ckpt"
    _wait_for(last.exists, 300, "the checkpoint saved on USR1", out)
    _wait_for(lambda: len(list((out / "checksums").glob("rank*.txt"))) == 2, 900, "the requeued job to finish", out)
    log = _job_log(out, tail=None)
    assert "requeueing Slurm job" in log and "resuming from" in log and "(restart 1)" in log, log[-6000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    ranks = [dict(kv.split("=") for kv in p.read_text().split()) for p in sorted((out / "checksums").glob("rank*.txt"))]
    assert [r["global_step"] for r in ranks] == [str(steps)] * 2 and ranks[0]["sha256"] == ranks[1]["sha256"], ranks
