"""The Triton scan's launch, tuned per shape on the device that runs it.

`default_launch` was picked by timing on one H200 at one shape (kernels/JOURNAL.md). Another GPU or another
shape may run faster under another Launch, and every Launch computes the same result up to rounding, so the
choice is only one of speed. With LONGWATCH_SSD_TUNE=1 (or `ssd_scan_triton(..., launch="tuned")`) the first
call at a shape times the scan under each of `candidates`, on the caller's own inputs (detached from its
graph), forward and backward if the caller's graph will need the backward, else forward only. It refuses any
launch whose outputs stray from the default launch's (a launch can compute wrongly on one device only: tf32
products did on an H200, see Launch.check), and keeps the fastest. The choices live in memory and in a JSON file
(LONGWATCH_SSD_TUNE_CACHE, default ~/.cache/longwatch/ssd_launches.json) keyed by device, Triton version
and shape, with every candidate's time, so each shape is tuned once per machine. The first tuning compiles
every candidate's kernels; on a cold Triton cache that is most of its time. `python -m kernels.ssd.tuning
SHAPE ...` tunes ahead of a run.
"""
import dataclasses
import datetime
import json
import logging
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import triton
from tqdm.auto import tqdm
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

from kernels.ssd.triton_chunked import Launch, default_launch, ssd_scan_triton

log = logging.getLogger(__name__)
FORMAT = 1
DEFAULT_CACHE = Path.home() / ".cache" / "longwatch" / "ssd_launches.json"
STACKED = 3  # launches faster than the default tried on top of the fastest (Tuner._tune): at most this many timings


def candidates(heads_per_group: int) -> dict[str, dict]:
    """Changes to default_launch worth timing, "default" (no change) first: tile lengths and widths, warps, the
    states' kernels, 16-bit buffers, dC and dB over all of a group's heads in one program. The launch sweep
    (kernels.benchmarks.ssd --suite launch) times the same list at one shape, with kernel profiles; each
    compiles for sm_90 (kernels.benchmarks.gpu_compile, no GPU needed)."""
    # Most telling first: gpu_check.sh gives the sweep a fixed time, and a cut run keeps what it printed.
    return {
        "default": {},
        # _state_scan ran at a quarter of copy bandwidth on the H200 (0.68 of 5.49 ms a step at this shape), after
        # _chunk_state wrote each chunk's own fp32 state for it to read. _state_pass does both in one loop and
        # keeps the own states in registers (kernels.benchmarks.traffic --change one_pass_states=true counts the
        # bytes saved), with fewer programs: b h n / BN_state of them, each walking every chunk.
        "states in one pass": dict(one_pass_states=True),
        "states in one pass, n tile 32": dict(one_pass_states=True, BN_state=32),
        # The fewest bytes a step counted (0.31-0.33x mamba_ssm's at L 1024, H 8 and 32).
        "states in one pass, 16-bit": dict(one_pass_states=True, states_16bit=True),
        # _state_scan's loop waiting for each chunk's loads (1 stage), as on session 9's H200 (and in the machine code
        # of session 15's loads ahead by hand): whether the default's, two chunks ahead (Triton's pipelining, 3
        # stages, in shared memory), pay, which no GPU has timed.
        "state scan loads not ahead": dict(scan_stages=1),
        # The gradient kernels hold 186-255 registers at 4 warps and Q 64, 8 resident warps per SM (make
        # bench-compile), where mamba_ssm's backward kernels hold 10-32. At 8 warps they hold 130-199, still 8
        # resident; capped at 128 (ptxas's maxnreg), 16 resident, and only _chunk_grad_C spills, 56 B a thread.
        "gradient kernels 8 warps, 128 registers": dict(grad_warps=8, grad_maxnreg=128),
        # Or at 4 warps: two pipeline stages and dC, dB in n tiles of 64 take _chunk_grad_C's and _B's shared
        # memory from 104 to 40 KB; capped at 168 registers, all four then hold 12 resident warps, and only
        # _chunk_grad_cols and _CB spill (24 and 176-184 B a thread). The n tiles add 4% to a step's requested bytes.
        "gradient kernels 2 stages, 168 registers, n tile 64": dict(grad_stages=2, grad_maxnreg=168, BN_grad=64),
        # 8 warps and 128 registers with n tiles of 64: all four hold 16 resident warps and none spills (110-128
        # registers, 48-64.5 KB of shared memory), for the same 4% more requested bytes.
        "gradient kernels 8 warps, 128 registers, n tile 64": dict(grad_warps=8, grad_maxnreg=128, BN_grad=64),
        # The same 16 resident warps as 4 programs of 4 warps instead of 2 of 8 (mamba_ssm's backward kernels hold 3
        # to 8 programs per SM at the configs it runs without autotuning, ours 2): tiles of 32 tokens, 118-128
        # registers, only _chunk_grad_cols spilling (48 B a thread), on mma.sync instead of wgmma but in
        # _chunk_grad_cols (its product's M is p).
        "gradients Q 32, 128 registers, n tile 64": dict(grad_Q=32, grad_maxnreg=128, BN_grad=64),
        # The forward's bytes are mostly states: each chunk's own written and read by _state_scan, the entering
        # ones written by it and read by _chunk_output, fp32. mamba_ssm keeps the entering ones in the input's
        # type (kernels.benchmarks.traffic --change states_16bit=true counts what that saves).
        "16-bit entering states": dict(states_16bit=True),
        # C_t . B_s is read by every head of a group, in fp32 as mamba_ssm keeps it. In the products' 16 bits:
        # _chunk_output's shared memory from 97 to 81 KB, _chunk_grad_cols' from 60.5 to 44.5 (make bench-compile),
        # and a step's requested bytes 8% fewer at H 8 (kernels.benchmarks.traffic --change cb_16bit=true).
        "C.B in 16 bits": dict(cb_16bit=True),
        # _chunk_output's three pipeline stages take 97 KB of shared memory: 8 resident warps per SM. Two take 72 KB:
        # 12 (make bench-compile).
        "forward kernels 2 stages": dict(stages=2),
        # In the H200 sweep of 2026-11-27 (results/ssd_launch_NVIDIA-H200_2026-11-27.md) Q 32 ran the forward 1.09x
        # faster than Q 64 (the step 0.99x), but variants that share the default's forward timed it at 1.33-1.50 ms.
        "forward Q 32": dict(Q=32),
        # At Q 32: 107-220 registers and 8-16 resident warps, no spills, on mma.sync instead of wgmma but in
        # _chunk_grad_cols.
        "gradients Q 32": dict(grad_Q=32),
        "gradients n tile 64": dict(BN_grad=64),
        "T 128": dict(T=128),
        # One program per group writes dC and dB once, in B's dtype, where the default writes an fp32 partial per
        # block of 8 heads for torch to sum (and a dCB per block): fewer bytes, fewer programs in flight.
        "dC, dB over a group's heads in one program": dict(heads_per_program=heads_per_group),
    }


def enabled() -> bool:
    """Whether ssd_scan_triton tunes when no launch is given: LONGWATCH_SSD_TUNE=1."""
    value = os.environ.get("LONGWATCH_SSD_TUNE", "0")
    if value not in ("0", "1"):
        raise ValueError(f"kernels.ssd tuning: LONGWATCH_SSD_TUNE = {value!r}, expected '0' or '1'")
    return value == "1"


def shape_key(x, B, chunk_size, seq_idx, backward: bool) -> str:
    """What a tuned launch is kept under. Lengths share a choice up to the next power of two, so that a run
    whose batches vary in length tunes a few times, not at every batch."""
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    device = torch.cuda.get_device_name(x.device) if x.is_cuda else f"{x.device.type} (Triton interpreter)"
    return (f"{device}; triton {triton.__version__}; {str(x.dtype).removeprefix('torch.')} b{b} "
            f"l<={triton.next_power_of_2(l)} h{h} g{g} p{p} n{n} chunk {chunk_size}"
            f"{' seq_idx' if seq_idx is not None else ''}; {'fwd+bwd' if backward else 'fwd'}")


def worst_difference(got: dict, want: dict) -> tuple[str, float]:
    """The output with the largest ||got - want|| / ||want||, and that ratio."""
    diffs = {k: ((got[k].float() - w.float()).norm() / w.float().norm().clamp_min(1e-30)).item()
             for k, w in want.items()}
    return max(diffs.items(), key=lambda item: item[1])


class Tuner:
    """Tuned launches, in memory and (with a `path`) on disk. `timer(name, run, device) -> seconds` times one
    call of `run`, candidate `name`'s step; tests give their own, because timings are not test material."""

    def __init__(self, path: Path | None = DEFAULT_CACHE, candidates=candidates, reps: int = 5,
                 tolerance: float = 0.02, timer=None, progress: bool = True):
        self.path, self.candidates, self.reps, self.tolerance = path, candidates, reps, tolerance
        self.timer, self.progress = timer or _seconds, progress
        self.choices = self._load()  # key -> {"launch": name, "change": {...}, "ms": {name: ms or why not}, ...}

    def launch(self, x, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None, seq_idx=None,
               dt_softplus=False, dt_limit=(0.0, float("inf"))) -> Launch:
        """The tuned Launch for these inputs, tuning first if their shape has none yet."""
        inputs = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, initial_states=initial_states)
        backward = torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in inputs.values())
        key = shape_key(x, B, chunk_size, seq_idx, backward)
        base = default_launch(x, B, chunk_size)
        if key in self.choices:
            kept = self.choices[key]
            change = kept.get("change") if isinstance(kept, dict) else None
            try:
                return dataclasses.replace(base, **change)
            except (TypeError, ValueError) as error:  # a file written by another version of Launch, or by hand
                warnings.warn(f"kernels.ssd tuning: {self.path}: the launch kept for {key!r}, {kept}, is not a "
                              f"Launch here ({type(error).__name__}: {error}); tuning it anew")
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():  # no timing inside a CUDA graph
            warnings.warn(f"kernels.ssd tuning {key}: called while a CUDA graph is being captured; running the "
                          "default launch untuned (tune before capturing, e.g. with one eager step)")
            return base
        scan = dict(chunk_size=chunk_size, seq_idx=seq_idx, dt_softplus=dt_softplus, dt_limit=dt_limit)
        self.choices[key] = self._tune(key, base, inputs, scan, backward)
        if self.choices[key].pop("keep", True) and self.path is not None:
            self._save(key)
        return dataclasses.replace(base, **self.choices[key]["change"])

    def _tune(self, key, base, inputs, scan, backward) -> dict:
        x, B = inputs["x"], inputs["B"]
        # Detached, not copied: the scan never writes its inputs, and the gradients go to these new leaves.
        leaves = {k: None if v is None else v.detach().requires_grad_(backward and v.is_floating_point())
                  for k, v in inputs.items()}
        gen = torch.Generator(device=x.device).manual_seed(0)
        dy = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) if backward else None

        def run(launch, keep=False):
            with torch.enable_grad() if backward else torch.no_grad():
                y = ssd_scan_triton(**leaves, **scan, launch=launch)
                if backward:
                    y.backward(dy)
            out = {"y": y.detach()} if keep else {}
            for k, v in leaves.items():
                if backward and v is not None and v.grad is not None:
                    if keep:
                        out[f"d{k}"] = v.grad
                    v.grad = None
            return out

        heads_per_group = x.shape[2] // B.shape[2]
        reference = {}  # the default launch's outputs, which every other launch must reproduce

        def measure(name, change):
            """The median ms of a step under default_launch + `change` (launch `name`), or why it was not timed."""
            try:
                launch = dataclasses.replace(base, **change)
                launch.check(heads_per_group, x.dtype)
            except ValueError as error:
                return f"not a launch for these inputs: {error}"
            try:
                got = run(launch, keep=True)  # compiles, and is the warm-up
                if not reference:
                    reference.update(got)
                else:
                    worst, diff = worst_difference(got, reference)
                    if not diff <= self.tolerance:  # NaN too
                        return f"refused: {worst} {diff:.1e} from the default launch's (normwise)"
                del got
                return 1e3 * statistics.median(self.timer(name, lambda: run(launch), x.device)
                                               for _ in range(self.reps))
            except (torch.cuda.OutOfMemoryError, OutOfResources, CompilationError) as error:
                if x.is_cuda:
                    torch.cuda.empty_cache()
                return f"{type(error).__name__}: {str(error).splitlines()[0]}"

        changes = self.candidates(heads_per_group)
        if next(iter(changes.items()), None) != ("default", {}):
            raise ValueError("kernels.ssd tuning: candidates must start with 'default': {}, the launch every "
                             f"other one is checked against; got {list(changes)[:3]}")
        log.info("kernels.ssd tuning %s: timing %d launches", key, len(changes))
        ms = {}
        for name, change in tqdm(changes.items(), desc="tuning the SSD scan's launch", disable=not self.progress):
            ms[name] = measure(name, change)
            if name == "default" and not isinstance(ms[name], float):  # it could not run beside tuning's buffers
                warnings.warn(f"kernels.ssd tuning {key}: the default launch failed while tuning ({ms[name]}); "
                              "using it untuned, and tuning again in the next process")
                return dict(launch="default", change={}, ms=ms, keep=False)
        # Launches that change different fields may gain more together (a faster forward and a faster backward, or
        # fewer bytes and more programs per SM): the ones faster than the default are stacked onto the fastest,
        # fastest first, each kept where the step gets faster still; at most STACKED tries, one timing each.
        faster = sorted((n for n, t in ms.items() if isinstance(t, float) and t < ms["default"]), key=ms.get)
        top, tries = (faster or ["default"])[0], 0
        for other in faster[1:]:
            if tries == STACKED:
                break
            stacked = {**changes[top], **changes[other]}
            if changes[top].keys() & changes[other].keys() or stacked in changes.values():
                continue
            name, tries = f"{top} + {other}", tries + 1
            changes[name], ms[name] = stacked, measure(name, stacked)
            if isinstance(ms[name], float) and ms[name] < ms[top]:
                top = name
        timed = {name: t for name, t in ms.items() if isinstance(t, float)}
        best = min(timed, key=timed.get)
        log.info("kernels.ssd tuning %s: %s, %.3f ms (default %.3f ms)", key, best, timed[best], timed["default"])
        return dict(launch=best, change=changes[best], ms=ms, tuned=datetime.date.today().isoformat())

    def table(self, keys=None) -> str:
        """What was chosen for each key (default: every key held), and every candidate's time there, as markdown."""
        lines = ["| shape, mode (tuned key) | chosen | ms: chosen / default | every candidate (ms, or why not) |",
                 "|---|---|---|---|"]
        for key in self.choices if keys is None else keys:
            choice = self.choices[key]
            ms = choice["ms"]
            # Why a launch was not timed, in a word: the cache file keeps the whole message.
            every = "; ".join(f"{name} {t:.3f}" if isinstance(t, float) else f"{name}: {t.split(':')[0]}"
                              for name, t in ms.items())
            chosen = ms[choice["launch"]]
            lines.append(f"| {key} | {choice['launch']} | {chosen:.3f} / {ms['default']:.3f} | {every} |"
                         if isinstance(chosen, float) else f"| {key} | default, untuned | - | {every} |")
        return "\n".join(lines)

    def _load(self) -> dict:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT or not isinstance(data.get("choices"), dict):
                raise ValueError(f"expected {{'format': {FORMAT}, 'choices': {{...}}}}")
            return data["choices"]
        except (ValueError, AttributeError) as error:  # JSONDecodeError is a ValueError
            aside = self.path.with_suffix(self.path.suffix + ".corrupt")
            self.path.replace(aside)
            warnings.warn(f"kernels.ssd tuning: {self.path} is not a launch cache ({error}); moved it to {aside} "
                          "and tuning anew")
            return {}

    def _save(self, key):
        """Adds `key` to the file as it is now: another process (a DDP rank) may have written other keys since.
        Written to a temporary file and renamed, so that a reader never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        on_disk = self._load()
        on_disk[key] = self.choices[key]
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(dict(format=FORMAT, choices=on_disk), indent=1) + "\n")
        temporary.replace(self.path)


def _seconds(name, run, device) -> float:
    """One call of `run`, timed on the device."""
    if device.type != "cuda":
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


_tuner: Tuner | None = None


def cache_path() -> Path:
    """The file LONGWATCH_SSD_TUNE_CACHE names, else DEFAULT_CACHE."""
    return Path(os.environ.get("LONGWATCH_SSD_TUNE_CACHE", DEFAULT_CACHE))


def tuner() -> Tuner:
    """The process's Tuner, on cache_path()."""
    global _tuner
    if _tuner is None:
        _tuner = Tuner(cache_path())
    return _tuner


def main(argv=None):
    """Tunes named shapes ahead of a run, on random inputs of Mamba-2's kind, into the cache file that
    LONGWATCH_SSD_TUNE=1 reads: the first steps of a multi-node job then start tuned."""
    import argparse

    from kernels.benchmarks.gpu_compile import DTYPES
    from kernels.benchmarks.registry import parse_shape
    from kernels.benchmarks.ssd import as_leaves, make_inputs

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("shapes", nargs="+", metavar="SHAPE", help="B<b>_L<l>_H<h>_P<p>_N<n>_C<chunk>[_G<g>]")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--forward-only", action="store_true", help="tune the forward without graph (inference)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these candidates (and the default) only")
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"default: $LONGWATCH_SSD_TUNE_CACHE, else {DEFAULT_CACHE}")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        device = "cuda"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        device = "cpu"
    else:
        raise SystemExit("kernels.ssd.tuning: tuning times the Triton scan on a GPU; without CUDA run it under "
                         "TRITON_INTERPRET=1 (which proves the code path, not the choice)")
    shapes = [parse_shape(name) for name in args.shapes]
    pick = candidates
    if args.only:
        unknown = set(args.only) - set(candidates(1))
        if unknown:
            raise SystemExit(f"kernels.ssd.tuning: --only {sorted(unknown)}: not candidates; they are "
                             f"{list(candidates(1))}")
        pick = lambda heads_per_group: {name: change for name, change in candidates(heads_per_group).items()
                                        if name == "default" or name in args.only}
    path = args.cache or cache_path()
    chosen = Tuner(path, pick)
    dtype = DTYPES[args.dtype]
    keys = []
    for shape in shapes:
        inputs = make_inputs(shape, dtype, device)
        inputs = inputs if args.forward_only else as_leaves(inputs)
        with torch.no_grad() if args.forward_only else torch.enable_grad():
            chosen.launch(**inputs, chunk_size=shape.chunk, dt_softplus=True)
        keys.append(shape_key(inputs["x"], inputs["B"], shape.chunk, None, backward=not args.forward_only))
    print(chosen.table(keys))
    print(f"kept in {path}")


if __name__ == "__main__":
    main()
