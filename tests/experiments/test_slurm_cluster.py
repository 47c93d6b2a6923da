"""Multi-node training on a real Slurm cluster: two emulated nodes, one CPU rank each, over gloo.

Marked `slurm` (run by `make test-slurm` and CI): starts the cluster from Debian's packages,
submits through `make slurm ... WAIT=1` exactly as a user would, and checks what the job left.
Every step has a time limit; a failing job fails the test with its log.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    root = tmp_path_factory.mktemp("world")
    subprocess.run(
        [sys.executable, "-m", "datamodules.synthetic", "--out", str(root), "--videos", "8", "--eval-videos", "4",
         "--minutes", "1", "1", "--shard-size", "2", "--seed", "0"],
        cwd=REPO, check=True, timeout=600,
    )
    return root


def _submit(env, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    args = " ".join(overrides)
    cmd = ["make", "-C", str(REPO), "slurm", f"EXP={EXP}", "NODES=2", "GPUS_PER_NODE=0", f"OUT={out}",
           "TIME=00:20:00", "WAIT=1", f"ARGS={args}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)


def _job_log(out: Path) -> str:
    return "\n".join(p.read_text()[-6000:] for p in sorted((out / "slurm").glob("*.out")))


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
