"""Benchmark the SSD scan against its peers; prints a markdown table and keeps it under results/.

    python -m kernels.benchmarks.ssd --suite cpu            # torch vs naive vs mamba_ssm minimal vs transformers
    python -m kernels.benchmarks.ssd --suite gpu            # triton vs mamba_chunk_scan_combined, bf16
    python -m kernels.benchmarks.ssd --suite launch         # our triton kernels under other launch configs
    python -m kernels.benchmarks.ssd --suite gpu --launch-from results/ssd_launch_best.json   # + the sweep's best
    python -m kernels.benchmarks.ssd --suite gpu --tuned    # + our scan tuned per shape (kernels.ssd.tuning)
    ncu --profile-from-start off python -m kernels.benchmarks.ssd --suite step   # one step, for a GPU profiler
    ncu --profile-from-start off python -m kernels.benchmarks.ssd --suite step --impl mamba_chunk_scan_combined
    TRITON_INTERPRET=1 python -m kernels.benchmarks.ssd --suite gpu --tiny   # the GPU script, proven on a CPU

Time: the fastest of `--reps` runs after one warm-up run (CUDA: synchronized); the
fastest, not the median, because a shared CPU machine only ever adds time. On the CPU
the fast implementations are timed interleaved in one process so that outside load hits
them alike; the naive recurrence runs in its own process without warm-up, its forward 3 times
(a first run came out up to 3x slower than the next) and its forward+backward once (it takes
minutes; `--naive-reps` sets both). Denormal floats are flushed to zero, as in CPU training.
Memory, CPU: every (implementation, shape, mode) point runs once in a fresh process; we
read the process's resident set after building the inputs, reset the kernel's peak-RSS
mark (/proc/self/clear_refs), run, and report VmHWM minus that baseline: the extra
resident memory the call needed at its peak (allocator caching included). GPU:
torch.cuda.max_memory_allocated above the inputs.
Bandwidth (GPU suite): the bytes an ideal kernel must move (inputs read once, outputs
written once, in their dtypes) divided by the time, next to a measured device copy.
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from triton.runtime.errors import OutOfResources

from kernels.benchmarks.peers import mamba_ssm_imported, mamba_ssm_installed, stub_selective_scan_cuda
from kernels.benchmarks.registry import SSD_CPU, SSD_GPU, SSD_GPU_TINY, SSDShape
from kernels.ssd.triton_chunked import default_launch, ssd_scan_triton
from kernels.ssd.tuning import Tuner, candidates, worst_difference

RESULTS = Path(__file__).parent / "results"
CPU_IMPLS = ("torch", "naive", "mamba_ssm_minimal", "transformers_torch")
PEER = "mamba_chunk_scan_combined"
GPU_IMPLS = ("triton", PEER)
TUNED = "triton (tuned per shape)"  # the GPU suite's column under --tuned
MODES = ("fwd", "fwd+bwd")
BEST_LAUNCH = "ssd_launch_best.json"


# ----------------------------------------------------------------------------- inputs and implementations
def make_inputs(shape: SSDShape, dtype, device, seed=0):
    """Mamba-2-like inputs: dt before softplus around -3 (dt ~ 0.05), A in [-8, -1], unit-scale x, B, C."""
    gen = torch.Generator().manual_seed(seed)
    s = shape

    def randn(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, generator=gen) * scale + shift).to(device=device, dtype=dtype)

    return dict(x=randn(s.b, s.l, s.h, s.p), dt=randn(s.b, s.l, s.h, scale=0.5, shift=-3.0),
                A=-torch.empty(s.h).uniform_(1, 8, generator=gen).to(device),
                B=randn(s.b, s.l, s.g, s.n), C=randn(s.b, s.l, s.g, s.n),
                D=torch.ones(s.h, device=device), dt_bias=torch.zeros(s.h, device=device))


def implementation(name: str, shape: SSDShape):
    """A function of the make_inputs dict -> y (b, l, h, p): dt bias + softplus, D skip, no z, as in Mamba-2."""
    from kernels.ssd import ssd_scan
    chunk = shape.chunk
    if name in ("torch", "naive", "triton"):
        return lambda x, dt, A, B, C, D, dt_bias: ssd_scan(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias,
                                                           dt_softplus=True, backend=name)
    if name == "mamba_ssm_minimal":
        stub_selective_scan_cuda()
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
        r = shape.h // shape.g

        def minimal(x, dt, A, B, C, D, dt_bias):
            # Everything its caller must do around it: dt processing, discretization, per-head B and C,
            # padding to whole chunks, the D skip.
            dt = torch.nn.functional.softplus(dt + dt_bias)
            pad = -shape.l % chunk
            Bh, Ch = (t.repeat_interleave(r, 2) for t in (B, C))
            X, Adt = x * dt[..., None], A * dt
            if pad:
                X, Adt, Bh, Ch = (torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
                                  for t in (X, Adt, Bh, Ch))
            y, _ = ssd_minimal_discrete(X, Adt, Bh, Ch, chunk)
            return y[:, :shape.l] + x * D[:, None]
        return minimal
    if name == "transformers_torch":
        from transformers.models.mamba2 import modeling_mamba2
        torch_scan = modeling_mamba2.mamba2_chunk_scan.__wrapped__  # its pure-torch reference, never a kernel
        return lambda x, dt, A, B, C, D, dt_bias: torch_scan(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias,
                                                             dt_softplus=True)
    if name == "mamba_chunk_scan_combined":
        stub_selective_scan_cuda()
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return lambda x, dt, A, B, C, D, dt_bias: mamba_chunk_scan_combined(x, dt, A, B, C, chunk, D=D,
                                                                            dt_bias=dt_bias, dt_softplus=True)
    raise ValueError(f"kernels.benchmarks.ssd: implementation = {name!r}, expected one of {CPU_IMPLS + GPU_IMPLS}")


def triton_launched(shape: SSDShape, change: dict):
    """Our Triton scan under default_launch with `change`'s Launch fields replaced."""
    def fn(x, dt, A, B, C, D, dt_bias):
        launch = dataclasses.replace(default_launch(x, B, shape.chunk), **change)
        return ssd_scan_triton(x, dt, A, B, C, shape.chunk, D=D, dt_bias=dt_bias, dt_softplus=True, launch=launch)
    return fn


def triton_tuned(shape: SSDShape, tuner):
    """Our Triton scan under the launch `tuner` picks for the inputs' shape and mode, tuned at its first call."""
    def fn(x, dt, A, B, C, D, dt_bias):
        launch = tuner.launch(x, dt, A, B, C, shape.chunk, D=D, dt_bias=dt_bias, dt_softplus=True)
        return ssd_scan_triton(x, dt, A, B, C, shape.chunk, D=D, dt_bias=dt_bias, dt_softplus=True, launch=launch)
    return fn


def as_leaves(inputs):
    """The inputs detached, the floating ones requiring their gradient."""
    return {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}


def runner(fn, inputs, mode):
    """A no-argument callable running one forward (no graph) or one forward + backward."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(**inputs)
        return run
    leaves = as_leaves(inputs)

    def run():
        y = fn(**leaves)
        torch.autograd.backward(y, torch.ones_like(y))
        for v in leaves.values():
            v.grad = None
    return run


def timed(run, reps, sync=lambda: None, warmup=True):
    if warmup:
        run()
        sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


# ----------------------------------------------------------------------------- CPU suite
def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_point(impl: str, shape_name: str, mode: str, reps: int) -> dict:
    """One point in this (fresh) process: peak extra resident MiB of one call, and for the naive
    recurrence also its time (it is too slow to time twice)."""
    shape = SSD_CPU[shape_name]
    run = runner(implementation(impl, shape), make_inputs(shape, torch.float32, "cpu"), mode)
    baseline = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    seconds = timed(run, reps, warmup=False)
    return dict(seconds=seconds, peak_mib=(_rss_kib("VmHWM") - baseline) / 1024)


def _fresh_process_point(impl, shape_name, mode, reps, threads):
    cmd = [sys.executable, "-m", "kernels.benchmarks.ssd", "--point", impl, shape_name, mode,
           "--reps", str(reps), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_suite(reps: int, naive_reps: int, threads: int) -> tuple[list[str], list[list[str]]]:
    """Times: the fast implementations interleaved in this process, so load from other processes
    hits them alike. Memory: each point alone in a fresh process."""
    fast = [i for i in CPU_IMPLS if i != "naive"]
    rows = []
    for shape_name, shape in SSD_CPU.items():
        inputs = make_inputs(shape, torch.float32, "cpu")
        for mode in MODES:
            runs = {i: runner(implementation(i, shape), inputs, mode) for i in fast}
            for run in runs.values():
                run()  # warm-up
            best = {i: float("inf") for i in fast}
            for _ in range(reps):
                for i, run in runs.items():
                    best[i] = min(best[i], timed(run, 1, warmup=False))
            point = {i: dict(seconds=best[i], peak_mib=_fresh_process_point(i, shape_name, mode, 1, threads)["peak_mib"])
                     for i in fast}
            naive_runs = naive_reps or {"fwd": 3, "fwd+bwd": 1}[mode]
            point["naive"] = _fresh_process_point("naive", shape_name, mode, naive_runs, threads)
            print(f"  {shape_name} {mode}: {point}", file=sys.stderr)
            ours = point["torch"]
            rows.append([shape_name, mode]
                        + [f"{point[i]['seconds'] * 1e3:.0f}" for i in CPU_IMPLS]
                        + [f"{point[i]['peak_mib']:.0f}" for i in CPU_IMPLS]
                        + [f"{point[i]['seconds'] / ours['seconds']:.1f}x" for i in CPU_IMPLS[1:]]
                        + [f"{point[i]['peak_mib'] / max(ours['peak_mib'], 1e-9):.2f}x" for i in CPU_IMPLS[1:]])
    header = (["shape", "mode"] + [f"{i} ms" for i in CPU_IMPLS] + [f"{i} MiB" for i in CPU_IMPLS]
              + [f"{i} time / torch" for i in CPU_IMPLS[1:]] + [f"{i} mem / torch" for i in CPU_IMPLS[1:]])
    return header, rows


# ----------------------------------------------------------------------------- GPU suite: one process
def copy_bandwidth(device) -> float:
    """Measured device copy bandwidth, bytes/s (read + write), on a 1 GiB (CPU: 64 MiB) buffer."""
    size = (1 << 30) if device == "cuda" else (64 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return 2 * size / timed(lambda: dst.copy_(src), 5, sync)


def ideal_bytes(inputs, mode) -> int:
    """Inputs read once and y written once; fwd+bwd adds dy read and every gradient written once."""
    io = sum(t.numel() * t.element_size() for t in inputs.values())
    y = inputs["x"].numel() * inputs["x"].element_size()
    return io + y if mode == "fwd" else 2 * (io + y)


def gpu_suite(tiny: bool, reps: int, swept: dict | None = None, tuner=None,
              on_shape=lambda header, rows, profiles: None) -> tuple[list[str], list[list[str]], str]:
    """Ours and mamba_chunk_scan_combined at each shape, timed, and their y and gradients compared: the table's
    header and rows, then markdown of where each spends a step (step_profiles) at the sweep's shape and the
    largest. `swept` (the launch sweep's best, see launch_sweep) adds our scan under that launch as one more
    column; `tuner` (a kernels.ssd.tuning.Tuner) our scan under the launch it tunes for each shape and mode.
    `on_shape` gets what is measured so far after each shape, the rows in the registry's order. The shapes run
    largest first: there session 9's ratios were worst, and gpu_check.sh's time limit cuts the last."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if tiny and device == "cuda":
        raise SystemExit("kernels.benchmarks.ssd: --tiny is the interpreter proof; drop it on a GPU")
    if not tiny and device == "cpu":
        raise SystemExit("kernels.benchmarks.ssd: --suite gpu needs CUDA; on a CPU run it with "
                         "TRITON_INTERPRET=1 and --tiny")
    shapes = SSD_GPU_TINY if tiny else SSD_GPU
    dtype = torch.float32 if device == "cpu" else torch.bfloat16  # the interpreter gets bf16 wrong
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    copy_bw = copy_bandwidth(device)
    impls = {name: (lambda shape, name=name: implementation(name, shape)) for name in GPU_IMPLS}
    if swept and swept["change"]:  # not the default
        impls = {f"triton ({swept['name']})": lambda shape: triton_launched(shape, swept["change"]), **impls}
    if tuner is not None:
        impls = {TUNED: lambda shape: triton_tuned(shape, tuner), **impls}
    largest_first = sorted(shapes.values(), key=lambda shape: -shape.b * shape.l * shape.h)
    profiled = {SWEEP_SHAPE, largest_first[0].name}
    rows, profiles = {}, []

    def in_registry_order():
        return [row for name in shapes if name in rows for row in rows[name]]
    with contextlib.ExitStack() as stack:
        if device == "cpu":  # mamba_ssm's kernels run in the interpreter too, where it is installed
            if mamba_ssm_installed():
                stack.enter_context(mamba_ssm_imported(interpreted=True))
            else:
                del impls[PEER]
        ours = [i for i in impls if i != PEER]
        header = (["shape", "mode"] + [f"{i}: ms / peak MiB / GB/s (% of copy)" for i in ours + [PEER]]
                  + [f"speedup {i} vs mamba" for i in ours]
                  + [f"normwise relative diff vs mamba ({' / '.join(ours)}): y, worst gradient"])
        header[-2] += f" (copy bandwidth {copy_bw / 1e9:.0f} GB/s)"
        for shape in largest_first:
            inputs = make_inputs(shape, dtype, device)
            fns = {name: make(shape) for name, make in impls.items()}
            rows[shape.name] = _gpu_rows(shape, inputs, fns, device, reps, sync, copy_bw)
            if shape.name in profiled:  # ours beside mamba_ssm's, all compiled (and tuned) by now
                profiles.append(step_profiles(shape, inputs, {i: fns[i] for i in (TUNED, *GPU_IMPLS) if i in fns},
                                              device))
            on_shape(header, in_registry_order(), "\n".join(profiles))
    return header, in_registry_order(), "\n".join(profiles)


def _gpu_rows(shape, inputs, fns, device, reps, sync, copy_bw) -> list[list[str]]:
    """One shape's fwd and fwd+bwd rows: each implementation in `fns` timed, with peak memory and bandwidth,
    and its y (fwd row) or its gradients (fwd+bwd row) against mamba_ssm's."""
    rows = []
    ours = [i for i in fns if i != PEER]
    for mode in MODES:
        point, diffs = {}, {}
        want = outputs(fns[PEER], inputs, mode) if PEER in fns else None
        for impl, fn in fns.items():
            run = runner(fn, inputs, mode)
            try:
                run()  # the warm-up: it compiles (and tunes), before the peak memory is reset
                sync()
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                seconds = timed(run, reps, sync, warmup=False)
            except (torch.cuda.OutOfMemoryError, OutOfResources) as error:
                print(f"  {shape.name} {mode} {impl}: {type(error).__name__}: {error}", file=sys.stderr)
                point[impl] = None
                continue
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else float("nan")
            point[impl] = dict(seconds=seconds, peak_mib=peak, bw=ideal_bytes(inputs, mode) / seconds)
            if want is not None and impl != PEER:  # after the peak is read: its fp32 copies are not the scan's
                diffs[impl] = worst_difference(outputs(fn, inputs, mode), want)
            print(f"  {shape.name} {mode} {impl}: {point[impl]} diff vs mamba {diffs.get(impl)}", file=sys.stderr)
        rows.append([shape.name, mode] + [_gpu_cell(point.get(i), copy_bw) for i in ours + [PEER]]
                    + [_speedup(point.get(PEER), point.get(i)) for i in ours]
                    + [" / ".join(_diff_cell(diffs.get(i)) for i in ours)])
    return rows


def outputs(fn, inputs, mode) -> dict[str, torch.Tensor]:
    """y (fwd), or the gradient of every floating input under a fixed random dy (fwd+bwd), in fp32."""
    if mode == "fwd":
        with torch.no_grad():
            return {"y": fn(**inputs).float()}
    leaves = as_leaves(inputs)
    y = fn(**leaves)
    gen = torch.Generator(device=y.device).manual_seed(1)
    y.backward(torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype))
    return {f"d{k}": v.grad.float() for k, v in leaves.items() if v.grad is not None}


SWEEP_SHAPE = "B2_L8192_H80_P64_N128_C256"
# The sweep prints a step's kernel times (torch.profiler) for these: the default; the variant that replaces
# kernels, so that _state_pass's time reads against _chunk_state's and _state_scan's; and the two that give the
# gradient kernels 16 resident warps, as 2 programs of 8 warps and as 4 of 4, so that each gradient kernel's time
# says whether programs or warps count (kernels/JOURNAL.md, session 15); and _state_scan waiting for each chunk's
# loads, against the default's pipelined loop: whether waiting was why it ran at 10 us a chunk (session 16).
PROFILED_VARIANTS = ("default", "states in one pass", "gradient kernels 8 warps, 128 registers, n tile 64",
                     "gradients Q 32, 128 registers, n tile 64", "state scan loads not ahead")


def launch_sweep(tiny: bool, reps: int, best_path: Path | None = None) -> tuple[list[str], list[list[str]]]:
    """Our Triton scan under each of kernels.ssd.tuning.candidates, fwd and fwd+bwd, against the default launch;
    the outputs of every variant are checked against the default's (same math, other rounding).
    A launch the device cannot run (shared memory, registers) is reported, not fatal.
    Then the combined_launch of the fastest forward and the fastest step, if there is one. The fastest_launch
    is written to `best_path` as {"name", "change"}: the GPU suite's --launch-from times it at every shape."""
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    shape = SSDShape(b=1, l=80, h=2, p=16, n=16, chunk=64) if tiny else SSD_GPU[SWEEP_SHAPE]
    inputs = make_inputs(shape, dtype, device)
    base = default_launch(inputs["x"], inputs["B"], shape.chunk)
    variants = candidates(shape.h // shape.g)
    if device == "cuda":  # compiling is most of a sweep: every variant's kernels at once, one process each
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(len(variants), mp_context=spawn) as pool:
            for name, result in zip(variants, pool.map(_compile_variant, variants.values())):
                print(f"  compiled {name}: {result}", file=sys.stderr)
    reference, seconds, diffs, rows = None, {}, {}, []

    def measure(name, change):
        nonlocal reference
        try:
            launch = dataclasses.replace(base, **change)
        except ValueError as error:  # 16-bit states in the tiny sweep, whose fp32 inputs take fp32 products
            print(f"  {name}: skipped, not a launch for {dtype} inputs: {error}", file=sys.stderr)
            return
        fn = triton_launched(shape, change)
        y = outputs(fn, inputs, "fwd")["y"]
        reference = y if reference is None else reference
        err = diffs[name] = (y - reference).abs().max().item() / reference.abs().max().item()
        seconds[name] = {}
        for mode in MODES:
            try:
                seconds[name][mode] = timed(runner(fn, inputs, mode), reps, sync)
            except OutOfResources as error:
                print(f"  {name} {mode}: {error}", file=sys.stderr)
        print(f"  {shape.name} {launch}: {seconds[name]} rel. max diff {err:.1e}", file=sys.stderr)

        if name in PROFILED_VARIANTS:
            print_kernel_times(runner(fn, inputs, "fwd+bwd"), device, name)

        def cell(mode, speedup=False):
            t, t0 = seconds[name].get(mode), seconds["default"].get(mode)
            if t is None:
                return "out of resources"
            return (f"{t0 / t:.2f}x" if t0 else "n/a") if speedup else f"{t * 1e3:.2f}"
        rows.append([name] + [cell(m) for m in MODES] + [cell(m, speedup=True) for m in MODES] + [f"{err:.1e}"])
        best = fastest_launch(seconds, diffs)
        if best_path is not None and best is not None:  # after every variant: a run cut short keeps its best
            best_path.write_text(json.dumps(dict(name=best, change=variants[best])) + "\n")

    for name, change in variants.items():
        measure(name, change)
    combined = combined_launch(variants, seconds, diffs)
    if combined is not None:  # the forward's winner and the step's, together (compiled here, not in the pool)
        variants[combined[0]] = combined[1]
        measure(*combined)
    header = [f"launch ({shape.name}, default {base})"] + [f"{m} ms" for m in MODES] + [
        f"{m} speedup vs default" for m in MODES] + ["y max diff vs default (relative)"]
    return header, rows


def fastest_launch(seconds: dict, diffs: dict, mode: str = "fwd+bwd", max_diff: float = 0.02) -> str | None:
    """The launch fastest in `mode` (`seconds`: name -> {mode: seconds}, a mode missing where it could not run)
    among those whose y stays within `max_diff` (relative) of the default's; None if none qualifies."""
    times = {n: t[mode] for n, t in seconds.items() if mode in t and diffs[n] < max_diff}
    return min(times, key=times.get, default=None)


def combined_launch(variants: dict, seconds: dict, diffs: dict) -> tuple[str, dict] | None:
    """The variant with the fastest forward and the one with the fastest forward+backward, as one launch, where
    both beat the default, are different and change different fields; else None."""
    fwd, step = fastest_launch(seconds, diffs, "fwd"), fastest_launch(seconds, diffs)
    if "default" in (fwd, step) or None in (fwd, step) or fwd == step or variants[fwd].keys() & variants[step].keys():
        return None
    return f"{fwd} + {step}", {**variants[fwd], **variants[step]}


def compile_cut(shape: SSDShape) -> SSDShape:
    """A shape cut to one batch row and at most 4,096 tokens: Triton specialises a kernel on which integer
    arguments are 1 or divisible by 16, and the cut keeps both, so it compiles the kernels the whole shape runs,
    at a fraction of the memory (kernels.benchmarks.gpu_compile compiles the sweep's shape so cut)."""
    return dataclasses.replace(shape, b=1, l=min(shape.l, 4096))


def compiled_shapes() -> list[SSDShape]:
    """The GPU suite's shapes cut (compile_cut): running these compiles every kernel the sweep, the suite and its
    tuning run. (B4_L2048's 8 chunks are the one count not divisible by 16.)"""
    return list(dict.fromkeys(compile_cut(s) for s in SSD_GPU.values()))


def _compile_variant(change: dict) -> str:
    """One forward + backward of our scan at each of compiled_shapes under default_launch + `change`, in a fresh
    process: Triton compiles its kernels and keeps them in its on-disk cache for the timed sweep and for the
    suite's tuning. Only a warm-up: whatever fails here is reported, and fails again, in its own words, where
    the sweep times it."""
    try:
        for shape in compiled_shapes():
            runner(triton_launched(shape, change), make_inputs(shape, torch.bfloat16, "cuda"), "fwd+bwd")()
        torch.cuda.synchronize()
        return "ok"
    except Exception as error:  # noqa: BLE001 - see the docstring
        return f"{type(error).__name__}: {error}"


def profiled_step(impl: str = "triton"):
    """One forward + backward of `impl` (ours at its default launch, or mamba_ssm's) at the sweep's shape between
    cudaProfilerStart and Stop, after a warm-up that compiles (and autotunes): for `ncu --profile-from-start off`
    (gpu_check.sh), whose counters say why a kernel runs below copy bandwidth (occupancy, stalls, DRAM
    throughput), ours and mamba_ssm's alike."""
    if not torch.cuda.is_available():
        raise SystemExit("kernels.benchmarks.ssd: --suite step profiles a GPU run; it needs CUDA")
    shape = SSD_GPU[SWEEP_SHAPE]
    run = runner(implementation(impl, shape), make_inputs(shape, torch.bfloat16, "cuda"), "fwd+bwd")
    run()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    run()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


# ----------------------------------------------------------------------------- where a step's time goes
def step_profiles(shape, inputs, fns, device) -> str:
    """Markdown: for each mode, the kernel_table of one run of each of `fns` at `shape`."""
    tables = []
    for mode in MODES:
        times = {impl: kernel_times(runner(fn, inputs, mode), device) for impl, fn in fns.items()}
        tables.append(f"### {shape.name}, {mode}\n\n{markdown(*kernel_table(times))}\n")
    return "\n".join(tables)


STEP_PROFILES = ("torch.profiler, one run after the timed ones: our scan tuned (with --tuned) and at its default "
                 "launch, and mamba_ssm's. On a CPU: the Triton kernels in the interpreter, whose times say nothing "
                 "about a GPU")


def print_kernel_times(run, device, name):
    """Where one forward + backward spends its time, kernel by kernel, to stderr: the next tuning step starts
    from the slowest kernel."""
    print(f"  kernel times, {name}:\n" + markdown(*kernel_table({name: kernel_times(run, device)})), file=sys.stderr)


@contextlib.contextmanager
def _interpreted_launches_named(names: set):
    """Under the Triton interpreter, each kernel launch as a torch.profiler range named after its kernel, the
    name added to `names`. (A compiled launch is a CUDA kernel, which the profiler names itself.)"""
    from triton.runtime.interpreter import InterpretedFunction
    run = InterpretedFunction.run

    def named_run(self, *args, **kwargs):
        names.add(self.__name__)
        with torch.profiler.record_function(self.__name__):
            return run(self, *args, **kwargs)
    InterpretedFunction.run = named_run
    try:
        yield
    finally:
        InterpretedFunction.run = run


def kernel_times(run, device) -> dict[str, tuple[int, float]]:
    """One call of `run` under torch.profiler: {kernel: (launches, seconds)}. On CUDA every kernel the call
    launches, torch's own (elementwise ops, reductions) included; on a CPU the Triton kernels, interpreted (their
    times are the interpreter's). {} with a warning if the profiler fails: it must not cost a benchmark."""
    from torch.profiler import ProfilerActivity, profile
    names = set()
    try:
        with contextlib.ExitStack() as stack:
            if device == "cuda":
                prof = stack.enter_context(profile(activities=[ProfilerActivity.CUDA]))
            else:
                stack.enter_context(_interpreted_launches_named(names))
                prof = stack.enter_context(profile(activities=[ProfilerActivity.CPU]))
            run()
            if device == "cuda":
                torch.cuda.synchronize()
        if device == "cuda":
            return {e.key: (e.count, e.self_device_time_total / 1e6) for e in prof.key_averages()
                    if e.self_device_time_total > 0}
        return {e.key: (e.count, e.cpu_time_total / 1e6) for e in prof.key_averages() if e.key in names}
    except Exception as error:  # noqa: BLE001 - see the docstring
        print(f"kernels.benchmarks.ssd: no kernel times ({type(error).__name__}: {error})", file=sys.stderr)
        return {}


def kernel_table(times: dict[str, dict[str, tuple[int, float]]]) -> tuple[list[str], list[list[str]]]:
    """Implementations' kernel_times side by side ({impl: {kernel: (launches, seconds)}}), each ranked slowest
    first with its share of all its kernels' time; the last row sums them."""
    ranked = {impl: sorted(t.items(), key=lambda item: -item[1][1]) for impl, t in times.items()}
    totals = {impl: sum(seconds for _, seconds in t.values()) for impl, t in times.items()}
    header = [f"{impl}: {column}" for impl in times for column in ("kernel", "launches", "us", "% of all")]
    rows = []
    for rank in range(max(map(len, ranked.values()), default=0)):
        row = []
        for impl, kernels in ranked.items():
            if rank < len(kernels):
                kernel, (launches, seconds) = kernels[rank]
                share = 100 * seconds / (totals[impl] or 1)
                row += [f"`{kernel}`", str(launches), f"{seconds * 1e6:.1f}", f"{share:.1f}"]
            else:
                row += [""] * 4
        rows.append(row)
    rows.append([cell for impl in times for cell in
                 ("all kernels", str(sum(n for n, _ in times[impl].values())), f"{totals[impl] * 1e6:.1f}", "100.0")])
    return header, rows


def _gpu_cell(p, copy_bw):
    if p is None:
        return "n/a"
    peak = "-" if p["peak_mib"] != p["peak_mib"] else f"{p['peak_mib']:.0f}"  # NaN off CUDA
    return f"{p['seconds'] * 1e3:.2f} / {peak} / {p['bw'] / 1e9:.2f} ({100 * p['bw'] / copy_bw:.0f}%)"


def _diff_cell(diff):
    return "n/a" if diff is None else f"{diff[0]} {diff[1]:.1e}"


def _speedup(theirs, ours):
    return "n/a" if not theirs or not ours else f"{theirs['seconds'] / ours['seconds']:.2f}x"


# ----------------------------------------------------------------------------- report
def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores"


def markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("cpu", "gpu", "launch", "step"))
    parser.add_argument("--tiny", action="store_true", help="gpu suite on interpreter-sized shapes")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--naive-reps", type=int, default=None, help="default: 3 forward, 1 forward+backward")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--launch-from", type=Path, default=None,
                        help="gpu suite: also time our scan under the launch this file names (the launch "
                             "suite writes its fastest to OUT_DIR/" + BEST_LAUNCH + ")")
    parser.add_argument("--tuned", action="store_true",
                        help="gpu suite: also time our scan under the launch kernels.ssd.tuning picks at each shape "
                             "(tuned afresh, not read from a cache file), and list what it picked")
    parser.add_argument("--impl", choices=GPU_IMPLS, default="triton", help="step suite: whose step to profile")
    parser.add_argument("--point", nargs=3, metavar=("IMPL", "SHAPE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # As training does on a CPU (experiments/run.py): gradients that travel far back through the decays
    # become subnormal floats, which cost some CPUs 10-100x per operation and would time the hardware's
    # slow path, not the algorithm (the naive recurrence's backward suffers most).
    torch.set_flush_denormal(True)
    if args.point:
        print(json.dumps(cpu_point(*args.point, reps=args.reps or 1)))
        return
    if args.suite is None:
        parser.error("--suite is required")
    if args.suite == "step":
        profiled_step(args.impl)
        return
    command = "python -m kernels.benchmarks.ssd " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()[0]  # a shared machine's load is part of what the numbers mean
    if args.suite == "cpu":
        hw = "cpu"
    else:  # gpu_suite and launch_sweep say so where a GPU suite is run on a CPU without --tiny
        hw = "interpreter-tiny" if args.tiny or not torch.cuda.is_available() else torch.cuda.get_device_name()
        hw = hw.replace(" ", "-") if args.suite == "gpu" else f"launch_{hw.replace(' ', '-')}"
    day = datetime.date.today().isoformat()
    path = args.out_dir / f"ssd_{hw}_{day}.md"

    def report(header, rows, extra="", cut_short=False) -> str:
        """Write the results file; return its table and `extra` (markdown after it)."""
        table = markdown(header, rows)
        env = "TRITON_INTERPRET=1 " if os.environ.get("TRITON_INTERPRET") == "1" else ""
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# SSD scan benchmark, {args.suite} suite{' (tiny, Triton interpreter)' if args.tiny else ''}\n\n"
            f"- command: `{env}{command}`\n- machine: {machine()}\n- date: {day}\n"
            f"- 1-minute load average at start / end: {load_before:.1f} / {os.getloadavg()[0]:.1f}\n"
            f"- torch {torch.__version__}\n\n{__doc__.split(chr(10) + chr(10), 1)[1]}\n"
            + ("**This run proves the script's code path on a CPU. Interpreter times say nothing about a GPU, "
               "and neither do their ratios.**\n\n" if args.tiny else "")
            + ("**Written while the run went on: if this line is still here, it stopped before its last "
               "shape.**\n\n" if cut_short else "") + f"{table}\n{extra}")
        return table + extra

    if args.suite == "cpu":
        print(report(*cpu_suite(args.reps or 3, args.naive_reps, args.threads)))
    elif args.suite == "launch":
        args.out_dir.mkdir(parents=True, exist_ok=True)
        print(report(*launch_sweep(args.tiny, reps=args.reps or (2 if args.tiny else 10),
                                   best_path=args.out_dir / BEST_LAUNCH)))
    else:
        swept = json.loads(args.launch_from.read_text()) if args.launch_from else None
        tuner = Tuner(path=None, progress=False) if args.tuned else None

        def after_table(profiles):
            tuned = f"\n## The launch tuned per shape (kernels.ssd.tuning)\n\n{tuner.table()}\n" if tuner else ""
            return tuned + f"\n## Where a step's time goes ({STEP_PROFILES})\n\n{profiles}"
        header, rows, profiles = gpu_suite(
            args.tiny, args.reps or (2 if args.tiny else 10), swept, tuner,
            on_shape=lambda header, rows, profiles: report(header, rows, after_table(profiles), cut_short=True))
        print(report(header, rows, after_table(profiles)))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
