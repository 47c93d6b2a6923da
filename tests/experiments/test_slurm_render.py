"""The sbatch template renders what a scheduler needs, with counts stated once (no cluster needed)."""
import pytest

from experiments.slurm import submit


def test_gpu_render_states_counts_once_and_resumes(toy_configs, tmp_path):
    script = submit.render("toy/tiny", nodes=4, gpus_per_node=8, out=str(tmp_path / "run"), partition="a100", time="12:00:00")
    assert "#SBATCH --nodes=4" in script and "#SBATCH --ntasks-per-node=8" in script
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --partition=a100" in script
    assert "#SBATCH --signal=USR1@90" in script and "#SBATCH --requeue" in script
    assert "trainer.num_nodes=4 trainer.devices=8" in script and "defaults_trainer=multinode" in script
    assert "srun --ntasks-per-node=8" in script and f"--ckpt {tmp_path / 'run'}/checkpoints/last.ckpt" in script
    assert "pip install" not in script and "$HOME" not in script and "${" not in script.replace("${MASTER", "").replace("${SLURM", "").replace("${RESUME", "")


def test_cpu_render_uses_gloo_tasks(toy_configs, tmp_path):
    script = submit.render("toy/tiny", nodes=2, gpus_per_node=0, out=str(tmp_path), overrides=["trainer.max_steps=3"])
    assert "--gpus-per-node" not in script.split("# (CPU tasks")[0]
    assert "trainer.accelerator=cpu trainer.strategy=ddp" in script and "trainer.max_steps=3" in script


@pytest.mark.parametrize(
    "kwargs,match",
    [({"nodes": 0}, "NODES=0"), ({"gpus_per_node": -1}, "GPUS_PER_NODE"), ({"time": "4h"}, "TIME='4h'")],
)
def test_bad_arguments_are_named(toy_configs, tmp_path, kwargs, match):
    args = {"nodes": 1, "gpus_per_node": 1, "out": str(tmp_path)} | kwargs
    with pytest.raises(ValueError, match=match):
        submit.render("toy/tiny", **args)


def test_bad_override_fails_before_submission(toy_configs, tmp_path):
    with pytest.raises(Exception, match="trainer.max_steps"):
        submit.render("toy/tiny", nodes=1, gpus_per_node=1, out=str(tmp_path), overrides=["trainer.max_stepz=3"])
