"""Render experiments/slurm/job.sbatch for one experiment and submit it (or print it: --dry-run).

    python -m experiments.slurm.submit --exp stride/tiny --nodes 2 --gpus-per-node 8 [--partition p]
        [--time 04:00:00] [--out DIR] [--dry-run] [--wait] [key=value ...]

`make slurm EXP=... NODES=N GPUS_PER_NODE=G` calls this. GPUS_PER_NODE=0 runs CPU tasks over gloo
(one per node unless --tasks-per-node says otherwise), which is how the tests drive a local cluster.
"""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path
from string import Template

from experiments import config as config_lib

TEMPLATE = Path(__file__).with_name("job.sbatch")
REPO = Path(__file__).resolve().parents[2]


def render(
    exp: str,
    nodes: int,
    gpus_per_node: int,
    out: str,
    time: str = "04:00:00",
    partition: str = "",
    tasks_per_node: int = 0,
    cpus_per_task: int = 0,
    python: str = sys.executable,
    overrides: list[str] = (),
) -> str:
    if nodes < 1:
        raise ValueError(f"NODES={nodes}: need at least one node")
    if gpus_per_node < 0:
        raise ValueError(f"GPUS_PER_NODE={gpus_per_node}: must be >= 0 (0 runs CPU tasks)")
    if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", time):
        raise ValueError(f"TIME={time!r}: expected hh:mm:ss or d-hh:mm:ss")
    config_lib.load(exp, list(overrides))  # fail here, not in the queue, on a bad experiment or key
    on_gpu = gpus_per_node > 0
    tasks = tasks_per_node or (gpus_per_node if on_gpu else 1)
    values = {
        "JOB_NAME": exp.replace("/", "-"),
        "NODES": nodes,
        "TASKS_PER_NODE": tasks,
        "CPUS_PER_TASK": cpus_per_task or (8 if on_gpu else 1),
        "GPU_LINE": f"#SBATCH --gpus-per-node={gpus_per_node}" if on_gpu else "# (CPU tasks: no GPUs requested)",
        "PARTITION_LINE": f"#SBATCH --partition={partition}" if partition else "# (default partition)",
        "TIME": time,
        "OUT": shlex.quote(str(Path(out).resolve())),
        "REPO": shlex.quote(str(REPO)),
        "PYTHON": shlex.quote(python),
        "EXP": exp,
        "TRAINER_PRESET": "multinode" if on_gpu else "cpu",
        "TRAINER_ARGS": "" if on_gpu else "trainer.accelerator=cpu trainer.strategy=ddp",
        "ARGS": " ".join(shlex.quote(o) for o in overrides),
    }
    return Template(TEMPLATE.read_text()).substitute(values)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.slurm.submit", description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--tasks-per-node", type=int, default=0, help="default: one per GPU, or 1 on CPU")
    p.add_argument("--cpus-per-task", type=int, default=0)
    p.add_argument("--partition", default="")
    p.add_argument("--time", default="04:00:00")
    p.add_argument("--out", help="run directory (default runs/<exp>)")
    p.add_argument("--dry-run", action="store_true", help="print the rendered script, submit nothing")
    p.add_argument("--wait", action="store_true", help="sbatch --wait: block until the job ends, exit with its code")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)
    out = Path(args.out or Path("runs") / args.exp)
    try:
        script = render(
            args.exp, args.nodes, args.gpus_per_node, str(out), args.time, args.partition,
            args.tasks_per_node, args.cpus_per_task, overrides=args.overrides,
        )
    except (ValueError, config_lib.ConfigError) as e:
        print(f"slurm: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(script)
        return 0
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    path = out / "slurm" / "job.sbatch"
    path.write_text(script)
    cmd = ["sbatch", "--parsable", *(["--wait"] if args.wait else []), str(path)]
    print("submitting:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
