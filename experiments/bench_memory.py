"""Training-step memory of Mamba2LM under each gradient-checkpointing mode (Video-Ma²mba, Table 3).

One point:  python -m experiments.bench_memory --mode ma_gc --seqlen 65536 [--json]
Sweep:      python -m experiments.bench_memory --sweep [--out lightning_modules/ma2mba/bench]

A point is one forward+backward of a small Mamba2LM (BENCH_CONFIG) on random input embeddings
(no gradient into them, like frozen vision features) of S tokens, with the loss on the last
512 tokens (an answer after a long video). It reports, as one JSON line:
- saved_bytes: what autograd keeps between forward and backward, summed over distinct
  storages seen by torch.autograd.graph.saved_tensors_hooks, parameters excluded;
- peak_bytes: the step's peak memory above what was allocated before it (weights excluded):
  torch.cuda.max_memory_allocated on a GPU, peak RSS (ru_maxrss) minus the RSS before the
  step on a CPU; peak_rss_bytes is the process's absolute peak RSS;
- step_seconds: wall time of the forward+backward.
The sweep runs each point in a fresh process (so peaks do not mix), skips points whose time
or memory, extrapolated from the previous S, would pass the caps, and writes a markdown
table, a log-log plot and the growth exponents beside the paper's Table 3.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import time

import torch

from lightning_modules.common.mamba2 import CHECKPOINT_MODES, Mamba2Config, Mamba2LM

# Small enough for a shared 2-core CPU, with a state (d_inner * d_state) large next to a
# layer input (d_model), as at paper scale. chunk 64 keeps the torch SSD's
# per-chunk (Q x Q) terms small on a CPU; the "naive" conv (a 4-tap sum) avoids the
# depthwise F.conv1d backward, which is slow on CPUs.
BENCH_CONFIG = dict(d_model=64, n_layer=8, vocab_size=512, d_state=32, headdim=16, expand=2, chunk_size=64,
                    conv_backend="naive")
LABELLED_TOKENS = 512
DEFAULT_OUT = pathlib.Path("lightning_modules/ma2mba/bench")
# Paper, Table 3: peak activation + backprop memory (GB, bf16, A100-80GB), by log2(S).
PAPER_TABLE3 = {
    "none (2.7B)": {10: 2.7, 12: 10.7, 14: 42.6},
    "layer (2.7B)": {10: 1.1, 12: 4.4, 14: 17.4, 16: 69.3},
    "sqrt (2.7B)": {10: 0.6, 12: 2.2, 14: 8.7, 16: 34.6, 17: 69.3},
    "ma_gc (2.7B)": {10: 0.7, 12: 1.8, 14: 4.2, 16: 10.5, 17: 17.2, 18: 25.9, 19: 42.2},
    "ma_gc (370M)": {10: 0.3, 12: 0.6, 14: 1.6, 16: 3.8, 17: 5.5, 18: 8.8, 19: 15.4, 20: 23.1, 21: 40.2},
}


NOTES = """How to read it:
- "saved" is what autograd holds between forward and backward; "peak" adds the transient
  working set (for layer / sqrt, one full-length recompute of 1 / ceil(sqrt(L)) layers; for
  ma_gc, one l x s cell). On a CPU the peak is RSS, so it also holds allocator slack.
- At this small width a layer's recomputed activations per token (~3.5k floats with the
  torch SSD) dwarf the kept layer inputs (L d = 512 floats per token), so peak memory of
  layer and sqrt GC is set by the recompute, and sqrt (3 layers at once) peaks above layer.
  At 2.7B scale L d = 164k floats per token dominates, which is why the paper's sqrt GC
  halves layer GC. MA-GC bounds both: only l x s tokens are ever recomputed.
- The ma_gc grid is the paper's cost model minimised with the paper's constants
  (`Mamba2Config.grid_costs`), s a multiple of the chunk (64 here).
"""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(mode: str, seqlen: int, device: str) -> dict:
    """One training step at `seqlen` tokens under `mode`; returns the measurements."""
    torch.manual_seed(0)
    if device == "cpu":
        # Gradients reaching far-back tokens through the SSM decays become subnormal floats,
        # which slow CPU arithmetic by an order of magnitude; flushing them changes nothing visible.
        torch.set_flush_denormal(True)
    cfg = Mamba2Config(**BENCH_CONFIG, gradient_checkpointing=mode)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Mamba2LM(cfg).to(device=device, dtype=dtype)
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def batch(n):
        x = torch.randn(1, n, cfg.d_model, device=device, dtype=dtype)
        labels = torch.full((1, n), -100, device=device)
        k = min(LABELLED_TOKENS, n // 2)
        labels[0, n - k:] = torch.randint(0, cfg.vocab_size, (k,), device=device)
        return x, labels

    # Warm-up at a small length: first-call costs stay out of the timed step.
    x, labels = batch(4 * cfg.chunk_size)
    model(inputs_embeds=x, labels=labels, return_logits=False).loss.backward()
    model.zero_grad(set_to_none=True)

    x, labels = batch(seqlen)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(inputs_embeds=x, labels=labels, return_logits=False).loss
    loss.backward()
    loss = loss.detach()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"mode": mode, "seqlen": seqlen, "device": _device_name(device),
            "grid": list(model.checkpoint_grid(seqlen)) if mode != "none" else None,
            "saved_bytes": sum(saved.values()), "peak_bytes": peak,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "step_seconds": round(seconds, 3), "loss": round(loss.item(), 4), "config": BENCH_CONFIG,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------ the sweep

def sweep(out: pathlib.Path, log2_min: int, log2_max: int, timeout: float, max_gb: float, modes) -> list[dict]:
    """Every (mode, S) point in a fresh process; results appended to out/points.jsonl as they come."""
    out.mkdir(parents=True, exist_ok=True)
    points_file = out / "points.jsonl"
    results = []
    for mode in modes:
        previous = None
        for n in range(log2_min, log2_max + 1):
            seqlen = 2 ** n
            reason = _skip_reason(previous, timeout, max_gb)
            if reason:
                row = {"mode": mode, "seqlen": seqlen, "skipped": reason}
            else:
                row = _run_point(mode, seqlen, timeout)
            print(json.dumps(row), flush=True)
            with points_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            results.append(row)
            previous = row
    return results


def _skip_reason(previous: dict | None, timeout: float, max_gb: float) -> str | None:
    if previous is None:
        return None
    if "skipped" in previous:
        return previous["skipped"]
    # Time and (for all modes, at most) memory double with S: extrapolate from S/2.
    if 2.2 * previous["step_seconds"] > timeout:
        return f"predicted time {2.2 * previous['step_seconds']:.0f} s > cap {timeout:.0f} s"
    if 2 * previous["peak_bytes"] > max_gb * 2**30:
        return f"predicted peak {2 * previous['peak_bytes'] / 2**30:.1f} GB > cap {max_gb:.0f} GB"
    return None


def _run_point(mode: str, seqlen: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "experiments.bench_memory", "--mode", mode, "--seqlen", str(seqlen), "--json"]
    # With glibc's default thresholds freed heap stays resident, so RSS lags the live memory;
    # mmap-ing every allocation over 64 KiB makes a free return its pages and RSS track it.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "seqlen": seqlen, "skipped": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"mode": mode, "seqlen": seqlen, "skipped": f"failed (rc {done.returncode}): {done.stderr[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_exponent(rows: list[dict], key: str, min_seqlen: int = 2**13) -> float | None:
    """Least-squares slope of log(key) against log(S) over the measured points with S >= min_seqlen."""
    pts = [(math.log(r["seqlen"]), math.log(r[key])) for r in rows
           if "skipped" not in r and r["seqlen"] >= min_seqlen and r[key] > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def write_report(rows: list[dict], out: pathlib.Path, extra: list[dict] = (), remeasured: list[dict] = ()) -> str:
    """Markdown table + log-log PNG (saved bytes and peak) into `out`; returns the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_mode = {m: [r for r in rows if r["mode"] == m] for m in CHECKPOINT_MODES}
    lengths = sorted({r["seqlen"] for r in rows})
    gb = lambda b: f"{b / 2**30:.3f}"  # noqa: E731
    device = next((r["device"] for r in rows if "device" in r), "?")
    lines = [f"Config: `{json.dumps(BENCH_CONFIG)}`, batch 1, loss on the last {LABELLED_TOKENS} tokens, "
             f"fp32 on `{device}`. Each cell: saved for backward / peak above the pre-step memory (GiB), "
             "step seconds. '-' = skipped (reason in points.jsonl).", "",
             "| mode | " + " | ".join(f"2^{int(math.log2(s))}" for s in lengths) + " | exponent (saved) | exponent (peak) |",
             "|---" * (len(lengths) + 3) + "|"]
    exponents = {}
    for mode, mrows in by_mode.items():
        cells = []
        for s in lengths:
            r = next((r for r in mrows if r["seqlen"] == s), None)
            cells.append("-" if r is None or "skipped" in r else
                         f"{gb(r['saved_bytes'])} / {gb(r['peak_bytes'])}, {r['step_seconds']:.1f} s")
        e_saved, e_peak = growth_exponent(mrows, "saved_bytes"), growth_exponent(mrows, "peak_bytes")
        exponents[mode] = (e_saved, e_peak)
        fmt = lambda e: "-" if e is None else f"{e:.2f}"  # noqa: E731
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {fmt(e_saved)} | {fmt(e_peak)} |")
    if any(not r.get("malloc_mmap_threshold") for r in rows if "skipped" not in r):
        lines += ["", "CPU peaks in this table were taken with glibc's default malloc thresholds (freed heap "
                  "stays resident, so an RSS delta can miss or add retained memory); the exact figure is the "
                  "saved-bytes one. The sweep now sets MALLOC_MMAP_THRESHOLD_=65536; points remeasured that "
                  "way are listed under Targets."]
    lines += ["", "Grids (l layers x s tokens) chosen: " + ", ".join(
        f"{r['mode']} 2^{int(math.log2(r['seqlen']))}: {r['grid']}" for r in rows
        if "skipped" not in r and r["mode"] == "ma_gc"), ""]

    lines += ["Paper, Table 3 (GB, bf16, A100-80GB, weights excluded; empty = out of memory), with the growth "
              "exponent over its points with S >= 2^12:", "",
              "| model | " + " | ".join(f"2^{n}" for n in range(10, 22)) + " | exponent |", "|---" * 14 + "|"]
    for name, vals in PAPER_TABLE3.items():
        paper_rows = [{"seqlen": 2**n, "gb": v} for n, v in vals.items()]
        e = growth_exponent(paper_rows, "gb", min_seqlen=2**12)
        lines.append(f"| {name} | " + " | ".join(str(vals.get(n, "")) for n in range(10, 22))
                     + f" | {'-' if e is None else f'{e:.2f}'} |")
    lines += ["", "Targets:"]
    lines += _targets(by_mode, exponents)
    if remeasured:
        lines.append("- Remeasured with MALLOC_MMAP_THRESHOLD_=65536 (RSS tracks live memory): " + "; ".join(
            f"{r['mode']} 2^{int(math.log2(r['seqlen']))}: saved {gb(r['saved_bytes'])}, peak {gb(r['peak_bytes'])} GiB, "
            f"{r['step_seconds']:.0f} s" for r in remeasured))
        pair = {r["mode"]: r for r in remeasured if r["seqlen"] == 2**16}
        if {"ma_gc", "layer"} <= set(pair):
            ratio = pair["ma_gc"]["peak_bytes"] / pair["layer"]["peak_bytes"]
            lines.append(f"  ma_gc / layer peak at 2^16: {ratio:.3f} (target <= 0.167): "
                         f"{'met' if ratio <= 1 / 6 else 'NOT met'}")
    for r in extra:
        if "skipped" in r:
            lines.append(f"- One step at S = {r['seqlen']:,} under {r['mode']}: not measured ({r['skipped']}).")
        else:
            lines.append(f"- One step at S = {r['seqlen']:,} tokens under {r['mode']} (grid {r['grid']}): "
                         f"peak {gb(r['peak_bytes'])} GiB above the pre-step memory (process peak RSS "
                         f"{gb(r['peak_rss_bytes'])} GiB), saved for backward {gb(r['saved_bytes'])} GiB, "
                         f"{r['step_seconds']:.0f} s.")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in zip(axes, ("saved_bytes", "peak_bytes"), ("saved for backward", "peak above pre-step")):
        for mode, mrows in by_mode.items():
            pts = [(r["seqlen"], r[key] / 2**30) for r in mrows if "skipped" not in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens S")
        ax.set_ylabel("GiB")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)
    plt.close(fig)
    lines += ["", "![memory vs tokens](memory.png)", "", NOTES]
    markdown = "\n".join(lines) + "\n"
    (out / "memory.md").write_text(markdown)
    return markdown


def _targets(by_mode, exponents) -> list[str]:
    lines = []
    e = exponents.get("ma_gc", (None, None))
    if e[0] is not None:
        lines.append(f"- ma_gc growth exponent (S >= 2^13): saved {e[0]:.2f}, peak {e[1]:.2f} "
                     f"(target <= 0.75): {'met' if max(e) <= 0.75 else 'NOT met'}")
    at = lambda m, s: next((r for r in by_mode[m] if r["seqlen"] == s and "skipped" not in r), None)  # noqa: E731
    s16 = 2**16
    ma, layer = at("ma_gc", s16), at("layer", s16)
    if ma and layer:
        # The paper's Table 3 measures peak activation + backprop memory: our peak column. Saved bytes alone
        # leave out layer GC's recompute working set (at this width, 8 kept layer inputs are tiny).
        rs, rp = ma["saved_bytes"] / layer["saved_bytes"], ma["peak_bytes"] / layer["peak_bytes"]
        lines.append(f"- at S = 2^16, ma_gc / layer peak (the paper's measure) {rp:.3f} (target <= 1/6 = 0.167): "
                     f"{'met' if rp <= 1 / 6 else 'NOT met'}; saved for backward alone {rs:.3f}")
    ratios = [(r["seqlen"], r["step_seconds"] / at("layer", r["seqlen"])["step_seconds"])
              for r in by_mode["ma_gc"] if "skipped" not in r and at("layer", r["seqlen"])]
    if ratios:
        worst = max(q for s, q in ratios if s >= 2**13) if any(s >= 2**13 for s, _ in ratios) else None
        lines.append("- step time ma_gc / layer: " + ", ".join(f"2^{int(math.log2(s))}: {q:.2f}" for s, q in ratios)
                     + (f" (target <= 1.5 at S >= 2^13: {'met' if worst <= 1.5 else 'NOT met'})" if worst else ""))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=CHECKPOINT_MODES, default="ma_gc")
    parser.add_argument("--seqlen", type=int, default=2**14)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--sweep", action="store_true", help="all modes, S = 2^min .. 2^max, fresh process per point")
    parser.add_argument("--log2-min", type=int, default=10)
    parser.add_argument("--log2-max", type=int, default=18)
    parser.add_argument("--modes", nargs="+", choices=CHECKPOINT_MODES, default=list(CHECKPOINT_MODES))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per point in a sweep")
    parser.add_argument("--max-gb", type=float, default=12.0, help="skip points predicted to need more")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from out/points.jsonl")
    args = parser.parse_args(argv)

    if args.sweep or args.report_only:
        if args.sweep:
            sweep(args.out, args.log2_min, args.log2_max, args.timeout, args.max_gb, args.modes)
        rows = [json.loads(line) for line in (args.out / "points.jsonl").read_text().splitlines() if line.strip()]
        # A later measurement of the same point replaces an earlier one.
        latest = {(r["mode"], r["seqlen"]): r for r in rows}
        extra_file = args.out / "long.jsonl"
        extra = [json.loads(l) for l in extra_file.read_text().splitlines() if l.strip()] if extra_file.exists() else []
        remeasured_file = args.out / "points_mmap.jsonl"
        remeasured = ([json.loads(l) for l in remeasured_file.read_text().splitlines() if l.strip()]
                      if remeasured_file.exists() else [])
        print(write_report(list(latest.values()), args.out, extra, remeasured))
        return
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    result = measure(args.mode, args.seqlen, device)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
