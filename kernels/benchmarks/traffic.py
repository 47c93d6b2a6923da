"""How many bytes our Triton SSD scan moves, against mamba_ssm's mamba_chunk_scan_combined, counted
in the Triton interpreter on a CPU: what a GPU run would have to move, without a GPU.

    TRITON_INTERPRET=1 python -m kernels.benchmarks.traffic                 # B1_L1024_H8_P64_N128_C256, fp16
    TRITON_INTERPRET=1 python -m kernels.benchmarks.traffic --shape B1_L2048_H16_P64_N128_C256 --no-keep
    TRITON_INTERPRET=1 python -m kernels.benchmarks.traffic --impls ours --change BN_grad=128   # another launch

Both scans run forward and backward on the same fp16 inputs (fp16 has bf16's size, and the interpreter
computes bf16 wrongly). Every launch is counted, with a GPU's view of it:
- a Triton kernel: every load and store its programs issue (lanes masked off excluded), in bytes
  ("requested"), and the distinct bytes it reads plus the distinct bytes it writes ("footprint": what
  DRAM moves if L2 kept everything within a launch and nothing between launches; a byte read and written
  in place counts twice); its tl.dot products, 2 m n k each;
- a torch op between kernels (casts and sums of partial gradients; mamba_ssm also pads and rearranges):
  its inputs read once and its outputs written once, footprint = requested. Views and empty
  allocations move nothing.

Both scans do fewer products per byte than an H100's ridge (nominally about 150 FLOP per byte with tf32
products, 300 with bf16 ones; the tables give GFLOP and MB), so the footprint is the first-order predictor
of time, though not the only one: tensor cores rarely reach their nominal rate, and a kernel's launch
cost (a few microseconds) matters at small L. This is a model, not a timing: the GPU suite times both.
"""
import argparse
import collections
import contextlib
import dataclasses
import datetime
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels.benchmarks.gpu_compile import launch_changes
from kernels.benchmarks.registry import SSDShape, parse_shape
from kernels.benchmarks.ssd import machine, make_inputs as benchmark_inputs

RESULTS = Path(__file__).parent / "results"
DEFAULT_SHAPE = SSDShape(b=1, l=1024, h=8, p=64, n=128, chunk=256)
IMPLS = ("ours", "mamba_ssm")
# Allocation and metadata ops: no kernel on a GPU, or no bytes.
FREE_OPS = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
            "lift_fresh", "_local_scalar_dense", "set_", "resize_", "is_same_size", "_unsafe_view")
# Ops that overwrite their first argument without reading it.
OVERWRITE_OPS = ("copy_", "zero_", "fill_")


@dataclasses.dataclass
class Launch:
    """One kernel launch's traffic: name, 'triton' or 'torch', bytes and products."""
    name: str
    kind: str
    read: int = 0            # requested bytes
    written: int = 0
    footprint: int = 0       # distinct bytes read + distinct bytes written
    flops: int = 0


class Counter:
    """Counts the launches of everything run inside `with counter.phase(name):`.

    Triton kernels: the interpreter's loads, stores, atomics and dots are wrapped. torch ops: a
    TorchDispatchMode, paused while a Triton kernel runs (the interpreter's own host copies are not
    a GPU's work)."""

    def __init__(self):
        self.launches: dict[str, list[Launch]] = collections.defaultdict(list)
        self._phase = None
        self._kernel = None     # the Triton launch being counted, with the addresses it touched
        self._touched = None

    @contextlib.contextmanager
    def phase(self, name):
        self._phase = name
        with _patched_interpreter(self), _TorchOps(self):
            yield
        self._phase = None

    # -- Triton kernels (called from the patched interpreter)
    def kernel_started(self, name):
        self._kernel, self._touched = Launch(name, "triton"), collections.defaultdict(list)

    def kernel_finished(self):
        launch, self._kernel = self._kernel, None
        launch.footprint = sum(size * np.unique(np.concatenate(addresses)).size
                               for (size, _), addresses in self._touched.items())
        self.launches[self._phase].append(launch)

    def memory(self, ptrs, mask, stored):
        size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        # A mask may reach the builder as int32 (_state_pass's `lanes & first_tile` in a loop does): as an index it
        # would pick rows 0 and 1, so it is read as the lanes it switches on.
        addresses = ptrs.data[mask.data.astype(bool)] if mask is not None else ptrs.data.ravel()
        if stored:
            self._kernel.written += size * addresses.size
        else:
            self._kernel.read += size * addresses.size
        self._touched[size, stored].append(addresses.ravel())  # reads and writes apart: both reach DRAM

    def dot(self, a, b):
        m, k = a.data.shape[-2:]
        self._kernel.flops += 2 * m * k * b.data.shape[-1] * int(np.prod(a.data.shape[:-2], dtype=np.int64))

    # -- torch ops (called from _TorchOps)
    def torch_op(self, name, inputs, outputs):
        if self._kernel is not None or name in FREE_OPS:
            return
        if name in OVERWRITE_OPS:
            inputs = inputs[1:]
        read = sum(t.numel() * t.element_size() for t in inputs)
        written = sum(t.numel() * t.element_size() for t in outputs)
        if read or written:
            self.launches[self._phase].append(Launch(name, "torch", read, written, read + written))


class _TorchOps(TorchDispatchMode):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            tensors = lambda tree: [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]
            self.counter.torch_op(func.overloadpacket.__name__, tensors((args, kwargs)), tensors(out))
        return out


@contextlib.contextmanager
def _patched_interpreter(counter):
    from triton.runtime import interpreter as ti
    builder, executor = ti.InterpreterBuilder, ti.GridExecutor
    originals = {name: getattr(builder, name) for name in
                 ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_dot")}
    call = executor.__call__

    def masked_load(self, ptrs, mask, *args):
        counter.memory(ptrs, mask, stored=False)
        return originals["create_masked_load"](self, ptrs, mask, *args)

    def masked_store(self, ptrs, value, mask, *args):
        counter.memory(ptrs, mask, stored=True)
        return originals["create_masked_store"](self, ptrs, value, mask, *args)

    def atomic_rmw(self, op, ptr, val, mask, *args):  # read and written in place
        counter.memory(ptr, mask, stored=False)
        counter.memory(ptr, mask, stored=True)
        return originals["create_atomic_rmw"](self, op, ptr, val, mask, *args)

    def dot(self, a, b, *args):
        counter.dot(a, b)
        return originals["create_dot"](self, a, b, *args)

    def launch(self, *args, **kwargs):
        counter.kernel_started(self.fn.__name__)
        try:
            return call(self, *args, **kwargs)
        finally:
            counter.kernel_finished()

    patches = dict(create_masked_load=masked_load, create_masked_store=masked_store, create_atomic_rmw=atomic_rmw,
                   create_dot=dot)
    try:
        for name, fn in patches.items():
            setattr(builder, name, fn)
        executor.__call__ = launch
        yield
    finally:
        for name, fn in originals.items():
            setattr(builder, name, fn)
        executor.__call__ = call


# ----------------------------------------------------------------------------- the two scans, counted
def make_inputs(shape: SSDShape, dtype, seed=0):
    inputs = benchmark_inputs(shape, dtype, "cpu", seed)
    return {k: v.requires_grad_(v.is_floating_point()) for k, v in inputs.items()}


def count(impl: str, shape: SSDShape, dtype=torch.float16, launch_change=None) -> dict[str, list[Launch]]:
    """impl's launches for one training step's scan: {"fwd": [...], "bwd": [...]}. launch_change: ours under
    default_launch with these fields changed."""
    inputs = make_inputs(shape, dtype)
    dy = torch.randn(shape.b, shape.l, shape.h, shape.p, generator=torch.Generator().manual_seed(1)).to(dtype)
    counter = Counter()
    with contextlib.ExitStack() as stack:
        if impl == "ours":
            from kernels.ssd.triton_chunked import default_launch, ssd_scan_triton
            launch = dataclasses.replace(default_launch(inputs["x"], inputs["B"], shape.chunk), **(launch_change or {}))
            scan = lambda **kw: ssd_scan_triton(**kw, launch=launch)
        elif impl == "mamba_ssm":
            from kernels.benchmarks.peers import mamba_ssm_imported
            stack.enter_context(mamba_ssm_imported(interpreted=True))
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as scan
        else:
            raise ValueError(f"kernels.benchmarks.traffic: impl = {impl!r}, expected one of {IMPLS}")
        with counter.phase("fwd"):
            y = scan(**inputs, chunk_size=shape.chunk, dt_softplus=True)
        with counter.phase("bwd"):
            y.backward(dy)
    return dict(counter.launches)


# ----------------------------------------------------------------------------- tables
MB = 1e6


def totals(launches: list[Launch]) -> dict:
    return dict(launches=len(launches), triton=sum(x.kind == "triton" for x in launches),
                read=sum(x.read for x in launches), written=sum(x.written for x in launches),
                footprint=sum(x.footprint for x in launches), flops=sum(x.flops for x in launches))


def by_kernel(launches: list[Launch]) -> list[dict]:
    """Launches of one name summed, biggest footprint first."""
    rows = {}
    for x in launches:
        row = rows.setdefault((x.kind, x.name), dict(name=x.name, kind=x.kind, launches=0, read=0, written=0,
                                                      footprint=0, flops=0))
        row["launches"] += 1
        for key in ("read", "written", "footprint", "flops"):
            row[key] += getattr(x, key)
    return sorted(rows.values(), key=lambda r: -r["footprint"])


def report(shape: SSDShape, counted: dict[str, dict[str, list[Launch]]], command: str, launch_change=None) -> str:
    def phases(impl):
        fwd, bwd = counted[impl]["fwd"], counted[impl]["bwd"]
        return {"fwd": totals(fwd), "bwd": totals(bwd), "fwd+bwd": totals(fwd + bwd)}

    summary = {impl: phases(impl) for impl in counted}
    lines = [f"# SSD scan memory traffic, counted in the Triton interpreter: {shape.name}", "",
             f"- command: `{command}`", f"- machine: {machine()} (the counts do not depend on it)",
             f"- date: {datetime.date.today()}", f"- our launch: default_launch with {launch_change or 'no change'}",
             f"- torch {torch.__version__}", "", __doc__.split("\n\n", 1)[1].rstrip(), "",
             "| phase | impl | launches (triton) | requested MB (read + written) | footprint MB | GFLOP |",
             "|---|---|---|---|---|---|"]
    for phase in ("fwd", "bwd", "fwd+bwd"):
        for impl in counted:
            t = summary[impl][phase]
            lines.append(f"| {phase} | {impl} | {t['launches']} ({t['triton']}) | "
                         f"{(t['read'] + t['written']) / MB:.1f} ({t['read'] / MB:.1f} + {t['written'] / MB:.1f}) | "
                         f"{t['footprint'] / MB:.1f} | "
                         f"{t['flops'] / 1e9:.2f} |")
    if set(IMPLS) <= set(counted):
        lines += ["", "| phase | footprint ours / mamba_ssm | requested ours / mamba_ssm | launches ours / mamba_ssm |",
                  "|---|---|---|---|"]
        for phase in ("fwd", "bwd", "fwd+bwd"):
            o, m = summary["ours"][phase], summary["mamba_ssm"][phase]
            lines.append(f"| {phase} | {o['footprint'] / m['footprint']:.2f}x | "
                         f"{(o['read'] + o['written']) / (m['read'] + m['written']):.2f}x | "
                         f"{o['launches']} / {m['launches']} |")
    for impl in counted:
        for phase in ("fwd", "bwd"):
            lines += ["", f"{impl}, {phase}, by kernel:", "",
                      "| kernel | kind | launches | footprint MB | requested MB | GFLOP |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['name']} | {r['kind']} | {r['launches']} | {r['footprint'] / MB:.2f} | "
                      f"{(r['read'] + r['written']) / MB:.2f} | {r['flops'] / 1e9:.3f} |"
                      for r in by_kernel(counted[impl][phase])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default=DEFAULT_SHAPE.name, help="B<b>_L<l>_H<h>_P<p>_N<n>_C<chunk>[_G<g>]")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-keep", action="store_true", help="print the table, write nothing")
    parser.add_argument("--change", action="append", default=[], metavar="FIELD=VALUE",
                        help="count ours under default_launch with this Launch field changed (repeatable)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("kernels.benchmarks.traffic counts in the Triton interpreter: run it with TRITON_INTERPRET=1")
    shape = parse_shape(args.shape)
    launch_change, changed = launch_changes(args.change)
    counted = {}
    for impl in args.impls:
        print(f"counting {impl} at {shape.name} ...", file=sys.stderr, flush=True)
        counted[impl] = count(impl, shape, launch_change=launch_change)
    command = "TRITON_INTERPRET=1 python -m kernels.benchmarks.traffic " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = report(shape, counted, command.strip(), launch_change)
    print(text)
    if not args.no_keep:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / f"ssd_traffic_{shape.name}{changed}_{datetime.date.today()}.md"
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
