"""SALOVA training-step throughput: videos/s at batch 1 vs batch 8 (the official code only runs at batch 1).

    python -m experiments.salova_throughput [--exp salova/tiny] [--batches 1 8] [--steps 5] [key=value ...]

`--exp` is one stage or a pipeline (`stages:`); a pipeline is measured stage by stage, each with the pipeline's
shared keys (the committed `salova/tiny` reads precomputed features through them), as the runner builds it.
Batches are real ones from the train split, read and collated before timing, so only the step is measured:
`SalovaModule.losses` (the stage's own forward: router only, teacher-forced or routed FocusFast LLM), backward
and the AdamW update. The markdown table goes to lightning_modules/salova/benchmarks/throughput_<hw>_<date>.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from experiments import config as config_lib
from experiments import papers

RESULTS = Path(__file__).resolve().parent.parent / "lightning_modules" / "salova" / "benchmarks"


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "-").lower()
    return f"cpu{torch.get_num_threads()}"


def stage_configs(exp: str, overrides: list[str]) -> list[tuple[str, object]]:
    """[(stage name, typed config)] of an experiment: itself, or each stage of a pipeline with its shared keys."""
    cfg = config_lib.load(exp, overrides)
    if not cfg.stages:
        return [(exp, cfg)]
    shared = OmegaConf.to_container(OmegaConf.load(config_lib.experiment_path(exp)))
    shared.pop("stages", None)
    return [(stage, config_lib.load(stage, overrides, extra=shared)) for stage in cfg.stages]


def measure(cfg, batch_size: int, steps: int, warmup: int = 1) -> dict:
    """Median time of `steps` training steps (after `warmup`) of the stage `cfg` at `batch_size` videos."""
    cfg = replace(cfg, data=replace(cfg.data, batch_size=batch_size))
    torch.manual_seed(cfg.seed)
    module, data = papers.get("salova").build(cfg)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    stream = iter(data.loader("train", rank=0, world_size=1))
    batches = [next(stream) for _ in range(warmup + steps)]
    times, cpu_times = [], []
    for i, batch in enumerate(batches):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = module.losses(batch, "train")[0]["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    measured = batches[warmup:]
    return {
        "batch": batch_size,
        "s_per_step": statistics.median(times),
        "videos_per_s": batch_size * len(times) / sum(times),
        "cpu_s_per_step": statistics.median(cpu_times),
        "videos_per_cpu_s": batch_size * len(cpu_times) / sum(cpu_times),
        "queries_per_step": statistics.mean(b["labels"].shape[0] for b in measured),
        "frames_per_step": statistics.mean(b["frames"].shape[0] for b in measured),
        "segments_per_step": statistics.mean(b["seg_frame_index"].shape[0] for b in measured),
    }


def describe(cfg) -> str:
    m = cfg.model
    if m.router_only:
        return "router only (no LLM)"
    return "LLM on " + ("ground-truth segments (teacher forcing)" if m.teacher_forcing else "the router's top-k")


def markdown(command: str, steps: int, rows: list[dict]) -> str:
    lines = [f"# SALOVA training-step throughput ({hardware()}, {datetime.date.today().isoformat()})", "",
             f"`{command}`", "",
             f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} when it finished. Median over "
             f"{steps} steps after 1 warm-up; each step is forward + backward + AdamW on real train batches "
             "(reading and collating excluded). CPU seconds (process time) are the figure to trust on a shared "
             "machine; wall seconds include waiting for the cores.", "",
             "| stage | step | batch (videos) | wall s / step | videos / s (wall) | CPU s / step | videos / CPU s | "
             "speed-up vs batch 1 (CPU) | queries / step | segments / step | frames / step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base: dict[str, float] = {}
    for row in rows:
        base.setdefault(row["stage"], row["videos_per_cpu_s"])
        lines.append(f"| {row['stage']} | {row['step']} | {row['batch']} | {row['s_per_step']:.3f} | "
                     f"{row['videos_per_s']:.2f} | {row['cpu_s_per_step']:.3f} | {row['videos_per_cpu_s']:.2f} | "
                     f"{row['videos_per_cpu_s'] / base[row['stage']]:.2f}x | {row['queries_per_step']:.1f} | "
                     f"{row['segments_per_step']:.1f} | {row['frames_per_step']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", default="salova/tiny")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. data.root=DIR)")
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.steps < 1:
        parser.error(f"--batches {args.batches} and --steps {args.steps} must be >= 1")
    rows = []
    for stage, cfg in stage_configs(args.exp, args.overrides):
        for batch_size in args.batches:
            row = {"stage": stage, "step": describe(cfg), **measure(cfg, batch_size, args.steps)}
            print(row, flush=True)
            rows.append(row)
    command = (f"python -m experiments.salova_throughput --exp {args.exp} --batches "
               f"{' '.join(map(str, args.batches))} --steps {args.steps} {' '.join(args.overrides)}").rstrip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"throughput_{hardware()}_{datetime.date.today().isoformat()}.md"
    path.write_text(markdown(command, args.steps, rows))
    print(f"written to {path}")
    return path


if __name__ == "__main__":
    main()
