"""Compile our Triton SSD kernels for a GPU on any machine: what each needs in shared memory, registers and
spill stack, per launch. Triton's wheel ships ptxas, cuobjdump and nvdisasm, so neither a GPU nor a driver is
needed, and what a GPU run would fail on (shared memory) or slow down on (spills, waits) shows here first.

    python -m kernels.benchmarks.gpu_compile                     # sm_90 (H100, H200), the launch sweep's variants
    python -m kernels.benchmarks.gpu_compile --arch 80 --default-only --json
    python -m kernels.benchmarks.gpu_compile --peer              # mamba_ssm's kernels, every autotune config

How: kernels.ssd.triton_chunked's host code runs forward and backward on CPU tensors of the sweep's shape
(with L cut to 4,096 tokens: the sizes Triton specialises on keep their divisibility by 16), every kernel
launch replaced by a recorder. Each recorded call is compiled for the target as Triton's launcher would,
by its own specialisation (integers equal to 1 made constants; pointers and integers divisible by 16 marked so),
and cuobjdump reads the registers and stack of the cubin. From registers, warps and shared memory, CUDA's
occupancy rules give the warps an SM keeps resident, and the programs (blocks) they make up: a program's loads
are waited for behind the other programs', each an independent chain of load, product and store (more warps in
one program split its tile, but its chain stays one).
The machine code (nvdisasm) names the loads a loop still waits for at every iteration (`waited_loads`): those
whose registers an instruction of the same iteration reads, whether Triton's pipelining left them in the loop or
ptxas copies them at the loop's end; and how often an iteration waits for all its products in flight
(`product_waits`). Must run without TRITON_INTERPRET.
"""
import argparse
import contextlib
import dataclasses
import datetime
import importlib
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
KERNELS = ("_token_weights_fwd", "_cb_products", "_chunk_state", "_state_scan", "_state_pass", "_chunk_output",
           "_chunk_grad_cols", "_chunk_grad_CB", "_chunk_grad_C", "_chunk_grad_B", "_token_weights_bwd")
# Shared memory per block (opt-in maximum), bytes: A100 and H100/H200.
MAX_SHARED = {80: 166912, 90: 232448}
# Per SM (CUDA occupancy calculator, compute capabilities 8.0 and 9.0): shared memory (of which 1 KB is
# reserved per block), 32-bit registers, warps and blocks.
SM_SHARED = {80: 167936, 90: 233472}
SM_REGISTERS, SM_WARPS, SM_BLOCKS = 65536, 64, 32
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # --dtype's names


def record_launches(shape, dtype, launch_change, packed=False):
    """Run the Triton scan's forward and backward with every kernel launch recorded, not run:
    ([(pass, kernel, args, kwargs)] in launch order, the Launch used). packed: with seq_idx (two sequences)."""
    from kernels.benchmarks.ssd import as_leaves, make_inputs
    from kernels.ssd import triton_chunked as tc

    calls, phase = [], ["forward"]

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((phase[0], self.kernel, args, kwargs))

    originals = {name: getattr(tc, name) for name in KERNELS}
    try:
        for name, kernel in originals.items():
            setattr(tc, name, Recorder(kernel))
        inputs = make_inputs(shape, dtype, "cpu")
        launch = dataclasses.replace(tc.default_launch(inputs["x"], inputs["B"], shape.chunk), **launch_change)
        leaves = as_leaves(inputs)
        seq_idx = (torch.arange(shape.l) >= shape.l // 3).to(torch.int32).expand(shape.b, -1) if packed else None
        y = tc.ssd_scan_triton(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], shape.chunk,
                               D=leaves["D"], dt_bias=leaves["dt_bias"], dt_softplus=True, seq_idx=seq_idx,
                               launch=launch)
        phase[0] = "backward"
        y.float().sum().backward()
    finally:
        for name, kernel in originals.items():
            setattr(tc, name, kernel)
    return calls, launch


def record_mamba_launches(shape, dtype):
    """mamba_ssm's mamba_chunk_scan_combined forward and backward on CPU tensors with every kernel launch recorded,
    not run: [(pass, JITFunction, args, kwargs, its autotuner's configs or [None], the config mamba_ssm runs
    when it may not autotune)]. Its host code reads an autotuner's best_config after a launch; the recorder
    answers that deterministic pick."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from kernels.benchmarks.peers import SSD_KERNEL_MODULES, deterministic_config, host_code_on_cpu, mamba_ssm_imported
    from kernels.benchmarks.ssd import as_leaves, make_inputs

    calls, phase = [], ["forward"]

    class Recorder:
        def __init__(self, kernel):
            self.configs = kernel.configs if isinstance(kernel, Autotuner) else [None]
            self.best_config = deterministic_config(kernel.configs) if isinstance(kernel, Autotuner) else None
            while not isinstance(kernel, JITFunction):  # under the autotuner (and any heuristics)
                kernel = kernel.fn
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append(
                (phase[0], self.kernel, args, kwargs, self.configs, self.best_config))

    with mamba_ssm_imported(), contextlib.ExitStack() as undo:
        host_code_on_cpu(undo)
        for module_name in SSD_KERNEL_MODULES:
            module = importlib.import_module(f"mamba_ssm.ops.triton.{module_name}")
            for name, kernel in list(vars(module).items()):
                if isinstance(kernel, (Autotuner, JITFunction)):
                    undo.callback(setattr, module, name, kernel)
                    setattr(module, name, Recorder(kernel))
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        leaves = as_leaves(make_inputs(shape, dtype, "cpu"))
        y = mamba_chunk_scan_combined(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], shape.chunk,
                                      D=leaves["D"], dt_bias=leaves["dt_bias"], dt_softplus=True)
        phase[0] = "backward"
        y.float().sum().backward()
    return calls


def peer_report(arch: int, dtype: str, picked_only=False) -> list[dict]:
    """mamba_ssm's kernels at the launch sweep's shape, each under every config its autotuner may pick on a GPU
    (which one it picks there is not known here); "(deterministic pick)" marks the one it runs when it may not
    autotune (picked_only: that one alone). Its host code runs as ours does above, on CPU tensors, every launch
    recorded. (At compile_cut's one batch row its `batch` argument is a constant 1, as at the suite's L 16K-64K;
    its kernels use it only to split a program id.)"""
    from kernels.benchmarks.registry import SSD_GPU
    from kernels.benchmarks.ssd import SWEEP_SHAPE, compile_cut

    rows, seen = [], set()
    for phase, kernel, args, kwargs, configs, picked in record_mamba_launches(compile_cut(SSD_GPU[SWEEP_SHAPE]),
                                                                              DTYPES[dtype]):
        for config in [picked] if picked_only else configs:
            options = {} if config is None else dict(config.kwargs, num_warps=config.num_warps,
                                                      num_stages=config.num_stages)
            label = "-" if config is None else (
                ", ".join(f"{key.removeprefix('BLOCK_SIZE_')} {value}" for key, value in config.kwargs.items())
                + f"; {config.num_stages} stages")
            if (phase, kernel.__name__, label) in seen:  # a kernel launched twice in one pass
                continue
            seen.add((phase, kernel.__name__, label))
            if config is not None and config is picked:
                label += " (deterministic pick)"
            rows.append(compiled_row(label, phase, kernel, args, dict(kwargs, **options), arch))
            print(f"  mamba_ssm: {rows[-1]}", file=sys.stderr)
    return rows


def compiled_row(label, phase, kernel, args, kwargs, arch) -> dict:
    """One recorded launch compiled for cuda:arch, as a row of the table (kwargs with its launch options)."""
    warps = kwargs.get("num_warps", 4)
    shared, registers, stack, mma, waited, product_waited = compile_call(kernel, args, dict(kwargs), arch)
    resident, limit = resident_warps(arch, registers, warps, shared)
    return dict(launch=label, phase=phase, kernel=kernel.__name__, mma=mma, shared=shared, registers=registers,
                stack=stack, fits=shared <= MAX_SHARED[arch], warps=warps, resident_warps=resident,
                resident_limit=limit, waited_loads=waited, product_waits=product_waited)


def compile_call(kernel, args, kwargs, arch):
    """Compile one recorded launch for cuda:arch: (shared bytes, registers, stack bytes per thread, the matrix
    instruction its products became: "wgmma" (Hopper's), "mma.sync" (Ampere's) or "-" (FMA units), the source
    lines of the loads its loops wait for, and its product_waits)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
    signature, constexprs, attrs = launcher_signature(kernel, args, kwargs)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                              options=options)
    registers, stack = _resource_usage(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    mma = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "-"
    sass = _sass(compiled.asm["cubin"])
    return compiled.metadata.shared, registers, stack, mma, waited_loads(sass), product_waits(sass)


def launcher_signature(kernel, args, kwargs) -> tuple[dict, dict, dict]:
    """What Triton's launcher compiles a JITFunction for, called with `args` and `kwargs` (no launch options):
    each argument's type ("constexpr" for a constexpr), the constexprs' values, and the attributes by argument
    index. The launcher's own specialisation: None, dtypes and integers equal to 1 become constexprs; integers
    and pointers divisible by 16 are marked so."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    values = dict(zip(kernel.arg_names, args)) | kwargs
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = values[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        if param.annotation_type:
            raise NotImplementedError(f"kernels.benchmarks.gpu_compile: {kernel.__name__} argument {name} is "
                                      f"annotated {param.annotation_type!r}; the launcher's handling of "
                                      "annotations is not mirrored here")
        kind, spec = native_specialize_impl(CUDABackend, value, param.is_const, not param.do_not_specialize,
                                            not param.do_not_specialize_on_alignment)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = value
        elif spec:
            attrs[(i,)] = CUDABackend.parse_attr(spec)
    return signature, constexprs, attrs


def loops(sass: str) -> list[list[tuple[str, str, int]]]:
    """The loops of a kernel's machine code as `nvdisasm --print-code --print-line-info` prints it, each the
    instructions from a label to the branch back to it: [(opcode, operands, source line)]. A load inlined from a
    helper is on the helper's line."""
    instructions, labels, line = [], {}, 0
    for text in sass.splitlines():
        text = text.strip()
        if located := re.match(r'//## File ".*", line (\d+)', text):
            line = int(located[1])
        elif label := re.fullmatch(r"(\.L_x_\d+):", text):
            labels[label[1]] = len(instructions)
        elif code := re.match(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?(\S+)\s*(.*?)\s*;", text):
            instructions.append((code[1], code[2], line))
    found = []
    for end, (opcode, operands, _) in enumerate(instructions):
        target = re.search(r"`\((\.L_x_\d+)\)", operands) if opcode.startswith("BRA") else None
        if target is not None and labels.get(target[1], end + 1) <= end:
            found.append(instructions[labels[target[1]]:end + 1])
    return found


def waited_loads(sass: str) -> list[int]:
    """The source lines of the global loads a loop waits for in the same iteration. A load (LDG, into registers)
    waited for is one whose registers a later instruction of the same pass through the loop reads or overwrites:
    the warp stalls there until the load lands. A load issued ahead is used only at the top of the next iteration,
    and async copies to shared memory (LDGSTS, Triton's pipelining of a product's operands) are waited for by count
    (DEPBAR), not here.
    Read from the machine code, not Triton's IR: a load the IR carries to the next iteration can still be waited
    for, when ptxas copies the carried registers (MOV) at the loop's end while the load is in flight."""
    def registers(operands: str) -> set[int]:  # R4 is one register; R4.64, an address, is R4 and R5
        found = set()
        for number, pair in re.findall(r"\bR(\d+)(\.64)?\b", operands):
            found |= {int(number), int(number) + 1} if pair else {int(number)}
        return found

    waited = set()
    for body in loops(sass):
        for i, (load, operands, source) in enumerate(body):
            if load.startswith("LDG") and not load.startswith(("LDGSTS", "LDGDEPBAR")):
                first = int(re.match(r"R(\d+)", operands)[1])
                loaded = set(range(first, first + (4 if ".128" in load else 2 if ".64" in load else 1)))
                if any(loaded & registers(later) for _, later, _ in body[i + 1:]):
                    waited.add(source)
    return sorted(waited)


def product_waits(sass: str) -> list[tuple[int, int]]:
    """For each loop with Hopper products: (its waits for every product in flight, its wgmma instructions), an
    iteration. A tile product is a few wgmma instructions (K in steps of 16), issued asynchronously; waiting for all
    after each leaves the tensor cores idle between them, and once after the last, while the loop's other work
    runs. Only other programs on the SM hide that latency. (mma.sync products are synchronous: not counted.)"""
    counts = []
    for body in loops(sass):
        wgmma = sum(opcode.startswith("HGMMA") for opcode, _, _ in body)
        if wgmma:
            counts.append((sum(opcode.startswith("WARPGROUP.DEPBAR") and operands.endswith("0x0")
                               for opcode, operands, _ in body), wgmma))
    return counts


def resident_warps(arch: int, registers: int, warps: int, shared: int) -> tuple[int, str]:
    """Warps one SM holds at once for a kernel of this registers per thread, warps per block and shared bytes per
    block, and what limits them. Memory-bound kernels hide their loads' latency behind other resident warps."""
    per_warp = -(-registers * 32 // 256) * 256  # registers are given to a warp in units of 256
    blocks = {"registers": SM_REGISTERS // per_warp // warps, "shared memory": SM_SHARED[arch] // (shared + 1024),
              "warps": SM_WARPS // warps, "blocks": SM_BLOCKS}
    limit = min(blocks, key=blocks.get)
    return blocks[limit] * warps, limit


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    usage = next(line for line in _cuda_tool("cuobjdump", cubin, "-res-usage").splitlines() if "REG:" in line)
    fields = dict(field.split(":") for field in usage.split())
    return int(fields["REG"]), int(fields["STACK"])


def _sass(cubin: bytes) -> str:
    """The cubin's machine code, each instruction under its source line (Triton compiles with line info)."""
    return _cuda_tool("nvdisasm", cubin, "--print-code", "--print-line-info")


def _cuda_tool(name: str, cubin: bytes, *flags: str) -> str:
    """Run one of the CUDA binary tools Triton's wheel ships on a cubin; its standard output."""
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([str(tool), *flags, file.name], capture_output=True, text=True, check=True).stdout


def report(arch: int, variants: dict[str, dict], dtypes=("bf16",), packed=(False,)) -> list[dict]:
    """Every kernel of every variant's forward and backward, for each input dtype, with and without seq_idx."""
    from kernels.benchmarks.registry import SSD_GPU
    from kernels.benchmarks.ssd import SWEEP_SHAPE, compile_cut

    shape = compile_cut(SSD_GPU[SWEEP_SHAPE])
    rows = []
    for dtype, with_seq, (name, change) in itertools.product(dtypes, packed, variants.items()):
        label = name + (f", {dtype}" if dtypes != ("bf16",) else "") + (", seq_idx" if with_seq else "")
        try:
            calls, launch = record_launches(shape, DTYPES[dtype], change, with_seq)
        except ValueError as error:  # a launch these inputs do not allow (16-bit states for fp32 inputs)
            print(f"  {label}: skipped: {error}", file=sys.stderr)
            continue
        for phase, kernel, args, kwargs in calls:
            rows.append(compiled_row(label, phase, kernel, args, kwargs, arch))
            print(f"  {label}: {rows[-1]}", file=sys.stderr)
    return rows


def launch_field(change: str):
    """'grad_Q=64' -> ('grad_Q', 64), checked against Launch's fields (the --change of this and the traffic count)."""
    from kernels.ssd.triton_chunked import Launch
    name, _, value = change.partition("=")
    fields = {f.name: f.type for f in dataclasses.fields(Launch)}
    if name not in fields or not value:
        raise SystemExit(f"--change {change!r}: expected FIELD=VALUE with FIELD one of "
                         f"{sorted(fields)}")
    if fields[name] is bool:
        if value.lower() not in ("true", "false"):
            raise SystemExit(f"--change {change!r}: expected {name}=true or {name}=false")
        return name, value.lower() == "true"
    return name, int(value) if fields[name] is int else value


def launch_changes(changes: list[str]) -> tuple[dict, str]:
    """--change arguments -> the Launch fields they change, and the suffix naming a results file kept under
    them (so that a run under a changed launch never overwrites the default's table)."""
    fields = dict(launch_field(change) for change in changes)
    return fields, "".join(f"_{key}{value}" for key, value in fields.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, choices=sorted(MAX_SHARED))
    parser.add_argument("--default-only", action="store_true",
                        help="only default_launch (with --peer: only the config mamba_ssm runs without autotuning)")
    parser.add_argument("--change", action="append", default=[], metavar="FIELD=VALUE",
                        help="one launch: default_launch with these Launch fields changed (repeatable)")
    parser.add_argument("--dtype", action="append", choices=tuple(DTYPES),
                        help="input dtype (repeatable; default bf16)")
    parser.add_argument("--seq-idx", choices=("no", "yes", "both"), default="no", help="packed sequences")
    parser.add_argument("--peer", action="store_true",
                        help="mamba_ssm's kernels instead of ours, under every config of their autotuners")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (for tests), keep no file")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernels.benchmarks.gpu_compile: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    change, changed = launch_changes(args.change)
    if args.change:
        variants = {" ".join(args.change): change}
    else:
        from kernels.benchmarks.registry import SSD_GPU
        from kernels.benchmarks.ssd import SWEEP_SHAPE
        from kernels.ssd.tuning import candidates
        sweep = SSD_GPU[SWEEP_SHAPE]
        variants = {"default": {}} if args.default_only else candidates(sweep.h // sweep.g)
    packed = {"no": (False,), "yes": (True,), "both": (False, True)}[args.seq_idx]
    if args.peer:
        if args.change or args.seq_idx != "no" or len(args.dtype or ()) > 1:
            raise SystemExit("--peer compiles mamba_ssm's kernels at one dtype; it takes no --change or --seq-idx")
        rows, changed = peer_report(args.arch, (args.dtype or ["bf16"])[0], args.default_only), "_mamba_ssm"
    else:
        rows = report(args.arch, variants, tuple(args.dtype or ("bf16",)), packed)
    if args.json:
        print(json.dumps(rows))
        return
    header = ["launch", "pass", "kernel", "warps", "products", "shared KB", f"fits sm_{args.arch}", "registers",
              "spill stack B/thread", f"resident warps per SM, of {SM_WARPS} (programs; limited by)",
              f"loads a loop waits for ({'mamba_ssm' if args.peer else 'triton_chunked.py'} lines)",
              "waits for all products in flight, a loop iteration (of its wgmma instructions)"]
    cells = [[r["launch"], r["phase"], r["kernel"], r["warps"], r["mma"], f"{r['shared'] / 1024:.1f}",
              "yes" if r["fits"] else "NO", r["registers"], r["stack"],
              f"{r['resident_warps']} ({r['resident_warps'] // r['warps']}; {r['resident_limit']})",
              ", ".join(map(str, r["waited_loads"])) or "-",
              "; ".join(f"{waits} (of {wgmma})" for waits, wgmma in r["product_waits"]) or "-"] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(map(str, row)) + " |" for row in cells]
    table = "\n".join(lines)
    print(table)
    import triton
    command = "python -m kernels.benchmarks.gpu_compile " + " ".join(argv if argv is not None else sys.argv[1:])
    day = datetime.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"ssd_compile_sm{args.arch}{changed}_{day}.md"
    whose = "mamba_ssm's mamba_chunk_scan_combined" if args.peer else "SSD"
    dtypes = ", ".join(args.dtype or ["bf16"])
    how = __doc__.split("\n\n", 1)[1] + ("\n" + inspect.cleandoc(peer_report.__doc__) + "\n" if args.peer else "")
    path.write_text(f"# {whose} Triton kernels compiled for sm_{args.arch}: {dtypes} inputs, "
                    f"the launch sweep's shape (L cut to 4,096)\n\n- command: `{command}`\n- date: {day}\n"
                    f"- triton {triton.__version__}, torch {torch.__version__}\n\n{how}\n{table}\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
