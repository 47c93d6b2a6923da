"""Latency of STRIDE's online loop on this machine: ms per incoming frame.

1. Against K (unmasking steps) and W (window slots), precomputed features, stride 1 (worst case: the
   denoiser runs at every frame).
2. With an O(1)-state downstream (a Mamba-2 LM stepping every frame, its state summary as the frame
   feature, answering at triggers): per-frame cost near frame 100 vs near frame 7,200 (a 2-hour stream
   at 1 FPS). The two streams are timed in alternation, frame for frame, so a change of machine load
   hits both alike; we report medians.

    python -m lightning_modules.stride.bench_latency [--out lightning_modules/stride/bench_latency.md]

Models are randomly initialised (latency does not depend on the weights; the trigger rule does, so the
long-stream part runs without a responder and times one answer separately).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch

from lightning_modules.common.mamba2 import Mamba2Config, Mamba2LM
from lightning_modules.stride.config import StreamingConfig, StrideConfig
from lightning_modules.stride.downstream import LinearFrameEmbed, Mamba2Downstream
from lightning_modules.stride.model import ActivationDenoiser
from lightning_modules.stride.streaming import StreamingRunner

FEAT_DIM = 192
QUERY = torch.tensor([11, 12, 13, 14, 15])


def stride_model(window: int, steps: int, feat_dim: int = FEAT_DIM) -> tuple[ActivationDenoiser, StrideConfig]:
    cfg = StrideConfig(features="feats", feat_dim=feat_dim, window=window,
                       streaming=StreamingConfig(window=window, steps=steps, threshold=0.75))
    return ActivationDenoiser(cfg).eval(), cfg


def per_frame_ms(runner: StreamingRunner, frames: torch.Tensor) -> list[float]:
    times = []
    for frame in frames:
        began = time.perf_counter()
        runner.push(frame)
        times.append(1e3 * (time.perf_counter() - began))
    return times


def sweep_k_w(windows, steps_list, frames: int) -> list[tuple[int, int, float]]:
    rows = []
    for window in windows:
        for steps in steps_list:
            torch.manual_seed(0)
            model, cfg = stride_model(window, steps)
            runner = StreamingRunner(model, cfg.streaming, "q", QUERY, FEAT_DIM)
            stream = torch.randn(window + frames, FEAT_DIM)
            per_frame_ms(runner, stream[:window])  # fill the window first
            times = per_frame_ms(runner, stream[window:])
            rows.append((window, steps, statistics.median(times), min(times)))
            print(f"W={window:4d} K={steps}: median {rows[-1][2]:.2f}, min {rows[-1][3]:.2f} ms/frame", flush=True)
    return rows


def long_stream(early: int, late: int, span: int, lm_cfg: Mamba2Config, window: int, steps: int) -> dict:
    torch.manual_seed(0)
    lm = Mamba2LM(lm_cfg)
    embed = LinearFrameEmbed(FEAT_DIM, lm_cfg.d_model, frame_tokens=1)
    model, cfg = stride_model(window, steps, feat_dim=lm_cfg.d_inner)

    def make():
        downstream = Mamba2Downstream(lm, embed, encode=lambda s: [3, 4, 5], decode=lambda ids: " ".join(map(str, ids)),
                                      max_new_tokens=8)
        return StreamingRunner(model, cfg.streaming, "q", QUERY, lm_cfg.d_inner, source=downstream), downstream

    fresh, aged = make(), make()
    feats = torch.randn(512, FEAT_DIM)
    began = time.perf_counter()
    for n in range(late - span // 2):
        aged[0].push(feats[n % 512])
    aging_s = time.perf_counter() - began
    for n in range(early - span // 2):
        fresh[0].push(feats[n % 512])
    t_early, t_late = [], []
    for n in range(span):  # alternate: one frame to each
        t_early += per_frame_ms(fresh[0], feats[n % 512][None])
        t_late += per_frame_ms(aged[0], feats[(n + 7) % 512][None])
    answers = {}
    for name, (runner, downstream) in (("early", fresh), ("late", aged)):
        began = time.perf_counter()
        downstream.respond("q", None)
        answers[name] = 1e3 * (time.perf_counter() - began)
    return {"early_frame": fresh[0].frame, "late_frame": aged[0].frame, "early_ms": statistics.median(t_early),
            "late_ms": statistics.median(t_late), "early_min_ms": min(t_early), "late_min_ms": min(t_late), "aging_s": aging_s, "answer_early_ms": answers["early"],
            "answer_late_ms": answers["late"], "state_numel": sum(s.numel() for layer in aged[1].states for s in layer)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).with_name("bench_latency.md")))
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--frames", type=int, default=60, help="timed frames per (W, K) point")
    parser.add_argument("--late", type=int, default=7200, help="frame index of the long stream's timed span")
    parser.add_argument("--early", type=int, default=150)
    parser.add_argument("--span", type=int, default=300, help="frames timed around each of early/late")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    rows = sweep_k_w(args.windows, args.steps, args.frames)
    lm_cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=256, d_state=16, headdim=32, chunk_size=64)
    long = long_stream(args.early, args.late, args.span, lm_cfg, window=32, steps=4)
    ratio = long["late_ms"] / long["early_ms"]
    print(long, f"ratio {ratio:.3f}", flush=True)

    d = StrideConfig()
    lines = [f"# STRIDE online latency, {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, {datetime.date.today()}", "",
             f"`python -m lightning_modules.stride.bench_latency` (torch {torch.__version__}). Activation model: "
             f"d={d.d_model}, {d.n_layers} layers, random weights; stride 1 (the denoiser runs at every frame); "
             "median ms per incoming frame. The machine was shared with other jobs while this ran, so absolute "
             "numbers are noisy; the long-stream comparison alternates frames between the two streams.", "",
             "## ms per frame vs K (unmasking steps) and W (window slots)", "",
             "Median over the timed frames, the minimum in brackets (the minimum is the least disturbed by "
             "other jobs on the machine).", "",
             "| W \\ K | " + " | ".join(str(k) for k in args.steps) + " |",
             "|---|" + "---|" * len(args.steps)]
    for window in args.windows:
        cells = [f"{ms:.2f} ({best:.2f})" for w, k, ms, best in rows if w == window]
        lines.append(f"| {window} | " + " | ".join(cells) + " |")
    lines += ["", "## Per-frame cost as the stream grows, O(1)-state downstream", "",
              f"Downstream: Mamba2LM (d_model {lm_cfg.d_model}, {lm_cfg.n_layer} layers, d_state {lm_cfg.d_state}), "
              "one frame token per frame stepped through it; the activation module reads its state summary "
              f"(d_inner = {lm_cfg.d_inner}) as the frame feature; W=32, K=4. State size: "
              f"{long['state_numel']} numbers, whatever the stream length.", "",
              "| | frames timed (last index) | ms per frame, median (min) | one answer (ms) |", "|---|---|---|---|",
              f"| early | {long['early_frame']} | {long['early_ms']:.2f} ({long['early_min_ms']:.2f}) | "
              f"{long['answer_early_ms']:.1f} |",
              f"| late | {long['late_frame']} | {long['late_ms']:.2f} ({long['late_min_ms']:.2f}) | "
              f"{long['answer_late_ms']:.1f} |", "",
              f"late / early = **{ratio:.3f}** by medians, {long['late_min_ms'] / long['early_min_ms']:.3f} by "
              f"minima (within 20%: {'yes' if abs(ratio - 1) <= 0.2 else 'NO'}). "
              f"Streaming the {args.late} frames took {long['aging_s']:.0f} s.", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
