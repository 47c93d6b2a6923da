"""What the traffic counts predict for the GPU suite's shapes, read against a kept GPU table.

    TRITON_INTERPRET=1 python -m kernels.benchmarks.predict          # the H100 table; counts at H 16, 32, check at 8
    TRITON_INTERPRET=1 python -m kernels.benchmarks.predict --gpu-table FILE --check-heads     # another table, no check
    TRITON_INTERPRET=1 python -m kernels.benchmarks.predict --change one_pass_states=true      # ours under another launch

make bench-traffic counts, in the interpreter, the distinct bytes each scan's launches read and write
(footprint) at B1_L1024. Every buffer either scan moves is per token, per chunk or per (token, head), so per 1024
tokens the footprint is affine in the number of heads (B and C, shared by a group, are the constant).
Counted at two head numbers, the line gives the footprint of every GPU-suite shape, scaled by b l / 1024;
--check-heads counts a third head number and prints how far the line misses it. One step in ours: up to
8 heads a group, _chunk_grad_C and _B sum dC and dB over all of them in registers; beyond, they write an
fp32 partial per block of heads for torch to sum. The line is fitted where the GPU suite's shapes are (h >= 32),
so at H 8, below that step, it overshoots ours.

Divided by the copy bandwidth the GPU table measured, a footprint is the time a scan would take if it
moved nothing twice and ran at copy speed: a lower bound. The measured mamba_ssm time against its bound
says how close mamba_ssm runs to it ("share of copy bandwidth"); our bound against mamba_ssm's measured
time says the share of copy bandwidth at which ours would just match it (the issue's 1.0x). Where that
share is below mamba_ssm's, ours meets the target by running its own bytes as well as mamba_ssm runs its.
A model of bytes only: launches, products and occupancy are left out, so a share that only a perfect
kernel reaches is a warning, not a forecast.

Where the table's file also lists where a step's time goes (the GPU suite's step profiles, since session 14),
each kernel's footprint, fitted and scaled the same way, is divided by its measured time: the share of copy
bandwidth each of our kernels and each of mamba_ssm's ran at, which says which kernel keeps a scan off it.
Beside it, the programs an SM keeps resident for that kernel, from the kept `make bench-compile` tables (ours at
the default launch, mamba_ssm's at the config it runs without autotuning; forward / backward where they differ):
whether the kernels far below copy bandwidth are those with few programs (kernels/JOURNAL.md, session 15).
"""
import argparse
import datetime
import os
import re
import sys
from pathlib import Path

import numpy as np

from kernels.benchmarks.gpu_compile import launch_changes
from kernels.benchmarks.registry import SSDShape, parse_shape
from kernels.benchmarks.ssd import PEER  # mamba_ssm's column in the GPU table
from kernels.benchmarks.traffic import IMPLS, by_kernel, count

RESULTS = Path(__file__).parent / "results"
DEFAULT_GPU_TABLE = RESULTS / "ssd_NVIDIA-H100-80GB-HBM3_2026-11-27.md"
COUNT_TOKENS = 1024
MODES = {"fwd": ("fwd",), "fwd+bwd": ("fwd", "bwd")}
PROFILED = {"triton": "ours", PEER: "mamba_ssm"}  # the step profiles' columns at a fixed launch -> IMPLS


def kernel_footprints(impl: str, shape: SSDShape, launch_change=None) -> dict[str, dict[str, float]]:
    """Footprint bytes of each kernel (and torch op) in one fwd and one fwd+bwd of impl at shape, counted in the
    interpreter, a kernel's launches summed; ours under default_launch with launch_change's fields."""
    launches = count(impl, shape, launch_change=launch_change)
    return {mode: {r["name"]: float(r["footprint"]) for r in by_kernel([x for p in phases for x in launches[p]])}
            for mode, phases in MODES.items()}


def footprints(impl: str, shape: SSDShape, launch_change=None) -> dict[str, float]:
    """Footprint bytes of one fwd and one fwd+bwd of impl at shape: kernel_footprints summed."""
    return {mode: sum(kernels.values()) for mode, kernels in kernel_footprints(impl, shape, launch_change).items()}


def fit_heads(heads: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares line values = per_head * heads + shared (exact through two points)."""
    if len(set(heads)) < 2:
        raise ValueError(f"kernels.benchmarks.predict: heads = {heads}; the line needs two different head numbers")
    per_head, shared = np.polyfit(np.asarray(heads, float), np.asarray(values, float), 1)
    return float(per_head), float(shared)


def scale(line: tuple[float, float], shape: SSDShape) -> float:
    """Footprint at shape from the per-1024-token line."""
    per_head, shared = line
    return shape.b * shape.l / COUNT_TOKENS * (per_head * shape.h + shared)


def counting_shape(shape: SSDShape, h: int) -> SSDShape:
    return SSDShape(b=1, l=COUNT_TOKENS, h=h, p=shape.p, n=shape.n, chunk=shape.chunk, g=shape.g)


def _cells(line: str) -> list[str]:
    """A markdown table row's cells, stripped."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read_gpu_table(path: Path) -> tuple[float, dict[tuple[str, str], dict[str, float]]]:
    """A kept `kernels.benchmarks.ssd --suite gpu` table -> (copy bandwidth bytes/s,
    {(shape, mode): {implementation: seconds}}); cells that say n/a are left out."""
    text = path.read_text()
    header = next((line for line in text.splitlines() if line.startswith("| shape | mode |")), None)
    bandwidth = re.search(r"copy bandwidth (\d+(?:\.\d+)?) GB/s", header or "")
    if header is None or bandwidth is None:
        raise ValueError(f"kernels.benchmarks.predict: {path}: no GPU-suite table (a '| shape | mode |' header "
                         "naming the copy bandwidth)")
    columns = _cells(header)
    impls = {i: c.split(":")[0] for i, c in enumerate(columns) if c.endswith("(% of copy)")}
    times = {}
    for line in text.splitlines():
        cells = _cells(line)
        if not line.startswith("| ") or len(cells) != len(columns) or cells[0] in ("shape", "---"):
            continue
        for i, impl in impls.items():
            ms = re.match(r"(\d+(?:\.\d+)?) /", cells[i])
            if ms:
                times.setdefault((cells[0], cells[1]), {})[impl] = float(ms.group(1)) / 1e3
    if not times:
        raise ValueError(f"kernels.benchmarks.predict: {path}: the GPU-suite table has no timed rows")
    return float(bandwidth.group(1)) * 1e9, times


def read_kernel_times(path: Path) -> dict[tuple[str, str], dict[str, dict[str, tuple[int, float]]]]:
    """The step profiles in a kept GPU-suite file ("### SHAPE, MODE" and a table of `impl: kernel`, launches,
    us, % columns) -> {(shape, mode): {impl: {kernel: (launches, seconds)}}}; {} in a file without them."""
    times, section, columns = {}, None, None
    for line in path.read_text().splitlines():
        if heading := re.fullmatch(r"### (\S+), (fwd|fwd\+bwd)", line):
            section, columns = (heading[1], heading[2]), None
        elif section and line.startswith("| "):
            cells = _cells(line)
            if columns is None:
                columns = [c.removesuffix(": kernel") for c in cells[::4]]
                continue
            for impl, (kernel, launches, us, _) in zip(columns, zip(*[iter(cells)] * 4)):
                if kernel and kernel != "all kernels":
                    times.setdefault(section, {}).setdefault(impl, {})[kernel.strip("`")] = (int(launches),
                                                                                          float(us) / 1e6)
    return times


def read_programs(path: Path, launches: tuple[str, ...]) -> dict[str, str]:
    """A kept `make bench-compile` table -> {kernel: resident programs per SM at the first of `launches` (launch
    labels, or a label's end) the table has, "forward / backward" where the two passes differ}; {} if no file."""
    if path is None or not path.exists():
        return {}
    rows = [_cells(line) for line in path.read_text().splitlines() if line.startswith("| ")]
    label = next((want for want in launches for row in rows if row[0].endswith(want)), None)
    found = {}
    for row in rows:
        if label is not None and row[0].endswith(label) and (programs := re.match(r"\d+ \((\d+);", row[9])):
            found.setdefault(row[2], {})[row[1]] = programs[1]
    return {kernel: " / ".join(dict.fromkeys(passes.values())) for kernel, passes in found.items()}


def compile_tables(folder: Path) -> dict[str, dict[str, str]]:
    """{impl: read_programs} from the newest kept compile tables in `folder`, ours and mamba_ssm's."""
    def newest(pattern):
        return max(folder.glob(pattern), default=None)
    return {"ours": read_programs(newest("ssd_compile_sm90_2*.md"), ("default", "default, bf16")),
            "mamba_ssm": read_programs(newest("ssd_compile_sm90_mamba_ssm_2*.md"), ("(deterministic pick)",))}


def kernel_shares(kernel_lines: dict, kernel_times: dict, bandwidth: float, programs=None) -> list[dict]:
    """One row per profiled kernel of ours (default launch) and mamba_ssm's: its measured time and, where the
    interpreter counted a kernel of that name, its footprint from the per-1024-token line and the share of copy
    bandwidth it ran at; and its resident programs per SM from `programs` (compile_tables), where it has them.
    kernel_lines: {(impl, mode, (p, n, chunk, g), kernel): line}."""
    rows = []
    for (name, mode), columns in kernel_times.items():
        shape = parse_shape(name)
        for column, impl in PROFILED.items():
            for kernel, (launches, seconds) in columns.get(column, {}).items():
                line = kernel_lines.get((impl, mode, (shape.p, shape.n, shape.chunk, shape.g), kernel))
                footprint = scale(line, shape) if line else None
                rows.append(dict(shape=name, mode=mode, impl=impl, kernel=kernel, launches=launches, seconds=seconds,
                                 footprint=footprint, share=footprint / seconds / bandwidth if footprint else None,
                                 programs=(programs or {}).get(impl, {}).get(kernel, "n/a")))
    return rows


def predict(lines: dict, shapes: dict[str, SSDShape], bandwidth: float, measured: dict) -> list[dict]:
    """One row per (shape, mode): footprints, their copy-bandwidth bounds, mamba_ssm's measured time and
    share, and the share at which ours matches it. lines: {(impl, mode, (p, n, chunk, g)): line}."""
    rows = []
    for name, shape in shapes.items():
        key = (shape.p, shape.n, shape.chunk, shape.g)
        for mode in MODES:
            ours, peer = (scale(lines[impl, mode, key], shape) for impl in IMPLS)
            row = dict(shape=name, mode=mode, ours_bytes=ours, peer_bytes=peer,
                       ours_bound=ours / bandwidth, peer_bound=peer / bandwidth)
            peer_time = measured.get((name, mode), {}).get(PEER)
            if peer_time:
                row.update(peer_time=peer_time, peer_share=row["peer_bound"] / peer_time,
                           ours_needs=row["ours_bound"] / peer_time)
            rows.append(row)
    return rows


def report(rows, checks, heads, gpu_table: Path, bandwidth, command, launch_change=None, kernels=()) -> str:
    lines = [f"# SSD scan: bytes counted in the interpreter, read against {gpu_table.name}", "",
             f"- command: `{command}`", f"- date: {datetime.date.today()}",
             f"- footprints counted at B1_L{COUNT_TOKENS}, H {', '.join(map(str, heads))} (fp16; ours under "
             f"default_launch with {launch_change or 'no change'}); "
             f"copy bandwidth {bandwidth / 1e9:.0f} GB/s, measured in that table", "",
             __doc__.split("\n\n", 2)[2].rstrip(), ""]
    if checks:
        lines += ["The line against a head number it was not fitted to:", "",
                  "| impl | mode | counted at | counted MB | line MB | line off by |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['impl']} | {c['mode']} | {c['shape']} | {c['counted'] / 1e6:.1f} | {c['line'] / 1e6:.1f} | "
                  f"{round(100 * (c['line'] / c['counted'] - 1), 1) + 0.0:+.1f}% |" for c in checks]  # no -0.0
        lines.append("")
    lines += ["| shape | mode | footprint GB: ours / mamba_ssm | at copy bandwidth, ms: ours / mamba_ssm | "
              "mamba_ssm measured ms (share of copy bandwidth) | share ours needs for 1.0x |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        measured = (f"{r['peer_time'] * 1e3:.2f} ({100 * r['peer_share']:.0f}%)", f"{100 * r['ours_needs']:.0f}%") \
            if "peer_time" in r else ("n/a", "n/a")
        lines.append(f"| {r['shape']} | {r['mode']} | {r['ours_bytes'] / 1e9:.2f} / {r['peer_bytes'] / 1e9:.2f} | "
                     f"{r['ours_bound'] * 1e3:.2f} / {r['peer_bound'] * 1e3:.2f} | {measured[0]} | {measured[1]} |")
    if kernels:
        lines += ["", "Each kernel of the step profiles against copy bandwidth (ours at its default launch; n/a: a "
                  "kernel the interpreter does not count, such as torch's own):", "",
                  "| shape | mode | impl | kernel | launches | measured us | footprint MB | share of copy bandwidth | "
                  "resident programs per SM (sm_90 compile) |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {k['shape']} | {k['mode']} | {k['impl']} | `{k['kernel']}` | {k['launches']} | "
                  f"{k['seconds'] * 1e6:.1f} | " + (f"{k['footprint'] / 1e6:.1f} | {100 * k['share']:.0f}% |"
                                                    if k["footprint"] else "n/a | n/a |") + f" {k['programs']} |"
                  for k in kernels]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-table", type=Path, default=DEFAULT_GPU_TABLE,
                        help="a kept `kernels.benchmarks.ssd --suite gpu` table (copy bandwidth, mamba_ssm's times)")
    parser.add_argument("--heads", type=int, nargs="+", default=[16, 32], help="head numbers to count at")
    parser.add_argument("--check-heads", type=int, nargs="*", default=[8],
                        help="head numbers counted only to check the line (none: skip)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-keep", action="store_true", help="print the table, write nothing")
    parser.add_argument("--compile-dir", type=Path, default=RESULTS,
                        help="where the kept compile tables are (their Triton should be the GPU table's: "
                             f"{RESULTS.name}/triton-3.6.0 for session 9's H200)")
    parser.add_argument("--change", action="append", default=[], metavar="FIELD=VALUE",
                        help="count ours under default_launch with this Launch field changed (repeatable)")
    args = parser.parse_args(argv)
    launch_change, changed = launch_changes(args.change)
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("kernels.benchmarks.predict counts in the Triton interpreter: run it with TRITON_INTERPRET=1")
    bandwidth, measured = read_gpu_table(args.gpu_table)
    # The step profiles ran our default launch: read against ours counted under another, they would mislead.
    kernel_times = {} if launch_change else read_kernel_times(args.gpu_table)
    shapes = {name: parse_shape(name) for name, _ in measured}
    families = {(s.p, s.n, s.chunk, s.g): s for s in shapes.values()}  # shapes that differ only in b, l, h
    lines, kernel_lines, checks = {}, {}, []
    for key, shape in families.items():
        for impl in IMPLS:
            counted = {}
            for h in args.heads + args.check_heads:
                print(f"counting {impl} at {counting_shape(shape, h).name} ...", file=sys.stderr, flush=True)
                counted[h] = kernel_footprints(impl, counting_shape(shape, h),
                                               launch_change if impl == "ours" else None)
            for mode in MODES:
                total = {h: sum(counted[h][mode].values()) for h in counted}
                lines[impl, mode, key] = fit_heads(args.heads, [total[h] for h in args.heads])
                checks += [dict(impl=impl, mode=mode, shape=counting_shape(shape, h).name, counted=total[h],
                                line=scale(lines[impl, mode, key], counting_shape(shape, h)))
                           for h in args.check_heads]
                for kernel in {k for h in args.heads for k in counted[h][mode]}:
                    kernel_lines[impl, mode, key, kernel] = fit_heads(
                        args.heads, [counted[h][mode].get(kernel, 0.0) for h in args.heads])
    rows = predict(lines, shapes, bandwidth, measured)
    command = "TRITON_INTERPRET=1 python -m kernels.benchmarks.predict " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = report(rows, checks, args.heads, args.gpu_table, bandwidth, command.strip(), launch_change,
                  kernel_shares(kernel_lines, kernel_times, bandwidth, compile_tables(args.compile_dir)))
    print(text)
    if not args.no_keep:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        gpu = re.sub(r"_\d{4}-\d{2}-\d{2}$", "", args.gpu_table.stem.removeprefix("ssd_"))
        path = args.out_dir / f"ssd_predicted_{gpu}{changed}_{datetime.date.today()}.md"
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
