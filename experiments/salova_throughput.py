"""SALOVA training-step throughput: videos/s at batch 1 vs batch 8 (the official code only runs at batch 1).

    python -m experiments.salova_throughput [--exp salova/tiny_stage2] [--batches 1 8] [--steps 5] [key=value ...]

Batches are real ones from the train split, read and collated before timing, so only the step is measured:
forward (vision -> ST-Connector -> SR-Router -> FocusFast LLM), backward and the AdamW update.
The markdown table goes to lightning_modules/salova/benchmarks/throughput_<hardware>_<date>.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from experiments import config as config_lib
from experiments import papers

RESULTS = Path(__file__).resolve().parent.parent / "lightning_modules" / "salova" / "benchmarks"


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "-").lower()
    return f"cpu{torch.get_num_threads()}"


def measure(exp: str, overrides: list[str], batch_size: int, steps: int, warmup: int = 1) -> dict:
    cfg = config_lib.load(exp, [*overrides, f"data.batch_size={batch_size}"])
    torch.manual_seed(cfg.seed)
    module, data = papers.get("salova").build(cfg)
    model = module.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    stream = iter(data.loader("train", rank=0, world_size=1))
    batches = [next(stream) for _ in range(warmup + steps)]
    times, cpu_times = [], []
    for i, batch in enumerate(batches):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = model(batch)
        bce, margin = model.router_loss(batch, out.router)
        loss = out.lm_loss + cfg.model.router_weight * (bce + cfg.model.margin_weight * margin)
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", default="salova/tiny_stage2")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. data.root=DIR)")
    args = parser.parse_args(argv)
    rows = []
    for batch_size in args.batches:
        row = measure(args.exp, args.overrides, batch_size, args.steps)
        print(row)
        rows.append(row)
    date = datetime.date.today().isoformat()
    lines = [f"# SALOVA training-step throughput ({hardware()}, {date})", "",
             f"`python -m experiments.salova_throughput --exp {args.exp} --batches {' '.join(map(str, args.batches))} "
             f"--steps {args.steps} {' '.join(args.overrides)}".rstrip() + "`", "",
             f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} when it finished. Median over "
             f"{args.steps} steps after 1 warm-up; each step is forward + backward + AdamW on real train batches of "
             "the synthetic world (decoding excluded). CPU seconds (process time) are the figure to trust on a shared "
             "machine; wall seconds include waiting for the cores.", "",
             "| batch (videos) | wall s / step | videos / s (wall) | CPU s / step | videos / CPU s | speed-up vs batch 1 "
             "(CPU) | queries / step | segments / step | frames / step |", "|---|---|---|---|---|---|---|---|---|"]
    base_cpu = rows[0]["videos_per_cpu_s"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['s_per_step']:.3f} | {row['videos_per_s']:.2f} | "
                     f"{row['cpu_s_per_step']:.3f} | {row['videos_per_cpu_s']:.2f} | "
                     f"{row['videos_per_cpu_s'] / base_cpu:.2f}x | {row['queries_per_step']:.1f} | "
                     f"{row['segments_per_step']:.1f} | {row['frames_per_step']:.0f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"throughput_{hardware()}_{date}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
