"""The Triton kernels compile for an H100 (sm_90) on this CPU-only machine, and fit its shared memory.

The first GPU run failed on exactly that (the backward asked 262 KB where the H100 has 227 KB), which no
interpreter test can see. Triton's wheel ships ptxas, so the compile needs no GPU; it runs in a fresh
process because tests/conftest.py turns on the interpreter, which compiles nothing.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

from kernels.benchmarks.gpu_compile import (KERNELS, launch_field, launcher_signature, product_waits, resident_warps,
                                            waited_loads)

ROOT = Path(__file__).resolve().parents[2]


def compile_for_sm90(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "kernels.benchmarks.gpu_compile", "--arch", "90", "--json", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_default_launch_compiles_for_sm90_and_fits_its_shared_memory():
    # Every input dtype the gpu tier runs, with and without seq_idx: a kernel that fails to compile there
    # would cost a GPU session's few minutes to find.
    rows = compile_for_sm90("--default-only", "--dtype", "bf16", "--dtype", "fp16", "--dtype", "fp32",
                            "--seq-idx", "both")
    assert len({row["launch"] for row in rows}) == 6
    # forward and backward: every kernel launched (_state_pass stands for _chunk_state and _state_scan when asked)
    assert {row["kernel"] for row in rows} == set(KERNELS) - {"_state_pass"}
    assert [row for row in rows if not row["fits"]] == []
    # On 16-bit inputs (products on tensor cores, the benchmarks' path) every loop issues its loads ahead of the
    # iteration that uses them, as the machine code shows: Triton's pipelining, or by hand the per-token weights
    # (_state_scan's by hand and _chunk_grad_CB's a head ahead were waited for until session 16, copied by ptxas at the
    # loop's end). fp32 inputs' products run on FMA units and spill up to 2 KB a thread anyway.
    assert {row["kernel"]: row["waited_loads"] for row in rows
            if row["waited_loads"] and "fp32" not in row["launch"]} == {}
    # And no loop waits for its products more than once an iteration: _chunk_grad_cols waited after each of its
    # product's four wgmma instructions until session 16.
    assert {row["kernel"]: row["product_waits"] for row in rows if "fp32" not in row["launch"] and any(
        waits > 1 for waits, _ in row["product_waits"])} == {}


def source_line(text: str) -> int:
    """The line of kernels/ssd/triton_chunked.py that starts with text (stripped)."""
    lines = (ROOT / "kernels" / "ssd" / "triton_chunked.py").read_text().splitlines()
    [number] = [i + 1 for i, line in enumerate(lines) if line.strip().startswith(text)]
    return number


def test_the_states_in_one_pass_wait_only_for_the_states_at_a_chunks_start():
    # In reverse, _state_pass reads the forward's state at each chunk's first tile (dL/d decay) and waits for it:
    # held from the iteration before, it cost 61 registers a thread.
    rows = compile_for_sm90("--change", "one_pass_states=true")
    waited = {(row["phase"], row["kernel"]): row["waited_loads"] for row in rows if row["waited_loads"]}
    assert waited == {("backward", "_state_pass"): [source_line("S = tl.load(with_ptr + here, mask=mask & first")]}


# A loop (.L_x_1 to the branch back) as nvdisasm prints it: a load used in the same iteration (line 21, read by
# the FFMA), one whose registers are copied at the loop's end (line 22, into R12..R15: the MOV reads R14), one
# issued ahead (line 23: read only at the loop's top, before it is issued again), an async copy to shared memory
# (line 24) and a load after the loop (line 30).
SASS = """
.L_x_1:
	//## File "/src/triton_chunked.py", line 20
        /*0100*/                   FFMA R2, R2, R20, R3 ;
	//## File "/src/triton_chunked.py", line 21
        /*0110*/              @!P0 LDG.E R4, desc[UR4][R6.64] ;
	//## File "/src/triton_chunked.py", line 22
        /*0120*/                   LDG.E.128 R12, desc[UR4][R6.64+0x10] ;
	//## File "/src/triton_chunked.py", line 23
        /*0130*/                   LDG.E R20, desc[UR4][R16.64] ;
	//## File "/src/triton_chunked.py", line 24
        /*0140*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R18.64] ;
        /*0150*/                   FFMA R5, R4, R5, RZ ;
	//## File "/src/triton_chunked.py", line 20
        /*0160*/                   MOV R8, R14 ;
        /*0170*/              @P1 BRA `(.L_x_1) ;
	//## File "/src/triton_chunked.py", line 30
        /*0180*/                   LDG.E R4, desc[UR4][R6.64] ;
        /*0190*/                   STG.E desc[UR4][R6.64], R4 ;
        /*01a0*/                   EXIT ;
"""


def test_waited_loads_reads_a_loop_of_machine_code_by_hand():
    assert waited_loads(SASS) == [21, 22]
    # A copy of registers no load writes: only line 21's load is waited for.
    assert waited_loads(SASS.replace("MOV R8, R14", "MOV R8, R9")) == [21]


def test_product_waits_counts_an_iterations_waits_for_all_products():
    # A loop of two wgmma instructions, waiting for all in flight after the first and for all but one after the
    # second; a loop without products; a product after the loops.
    sass = """
.L_x_0:
        /*0100*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0110*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0120*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0130*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0140*/              @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0150*/                   FFMA R2, R2, R3, R4 ;
        /*0160*/              @P1 BRA `(.L_x_1) ;
        /*0170*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0180*/                   EXIT ;
"""
    assert product_waits(sass) == [(1, 2)]


def test_mamba_ssms_kernels_compile_and_pipeline_their_products_operands():
    # The peer's kernels, at the configs it runs without autotuning, compiled as its launches compile: each fits,
    # the x tile of _chunk_scan_fwd_kernel's in-chunk loop is issued ahead (its strides of 1 are constants to the
    # launcher; compiled as runtime integers, session 13 found it waited for), and the state passing's loop
    # waits for each chunk's state (ours pipelines it: Launch.scan_stages).
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        pytest.skip("mamba-ssm is not installed (make install installs it)")
    rows = compile_for_sm90("--peer", "--default-only")
    assert all(row["fits"] and "deterministic pick" in row["launch"] for row in rows)
    kernels = {(row["phase"], row["kernel"]): row for row in rows}
    assert {"_chunk_scan_fwd_kernel", "_chunk_scan_chunk_state_bwd_dx_kernel", "_state_passing_bwd_kernel"} <= {
        kernel for _, kernel in kernels}
    assert kernels["forward", "_chunk_scan_fwd_kernel"]["waited_loads"] == []
    # Its source's line numbers, found by reading it (importing mamba_ssm here would need its CUDA extension).
    source = Path(spec.submodule_search_locations[0]) / "ops" / "triton" / "ssd_state_passing.py"
    lines = source.read_text().splitlines()
    kernel = lines.index("def _state_passing_fwd_kernel(")
    state_load = 1 + next(i for i in range(kernel, len(lines)) if lines[i].strip().startswith("new_states = tl.load"))
    assert state_load in kernels["forward", "_state_passing_fwd_kernel"]["waited_loads"]


def test_a_launch_that_asks_too_much_shared_memory_is_reported():
    # 128-token tiles in the forward: _chunk_output asks about 234 KB (sm_90 gives a block at most 227).
    rows = compile_for_sm90("--change", "Q=128")
    assert {row["kernel"] for row in rows if not row["fits"]} == {"_chunk_output"}, rows


def test_resident_warps_by_hand():
    # 255 registers: a warp takes 32 * 256 = 8192 of the SM's 65536, so one block of 8 warps.
    assert resident_warps(90, registers=255, warps=8, shared=82432) == (8, "registers")
    # 151 registers (152 * 32 a warp: 13 warps, 3 blocks of 4), but 81 KB + 1 KB reserved: 2 blocks.
    assert resident_warps(90, registers=151, warps=4, shared=82944) == (8, "shared memory")
    # 34 registers: 1280 a warp, 51 warps, 12 blocks of 4 = 48 warps, below the SM's 64.
    assert resident_warps(90, registers=34, warps=4, shared=0) == (48, "registers")
    assert resident_warps(90, registers=16, warps=4, shared=0) == (64, "warps")
    # The A100 has less: 164 KB a SM, where two blocks of 88 KB (+ 1 KB each) do not fit, but fit an H100.
    assert resident_warps(80, registers=151, warps=4, shared=90112) == (4, "shared memory")
    assert resident_warps(90, registers=151, warps=4, shared=90112) == (8, "shared memory")


def test_launch_field_parses_each_fields_type():
    assert launch_field("grad_Q=32") == ("grad_Q", 32)
    assert launch_field("prec=fp16") == ("prec", "fp16")
    assert launch_field("states_16bit=True") == ("states_16bit", True)
    assert launch_field("states_16bit=false") == ("states_16bit", False)
    with pytest.raises(SystemExit, match="states_16bit=true or states_16bit=false"):
        launch_field("states_16bit=1")
    with pytest.raises(SystemExit, match="FIELD one of"):
        launch_field("grad_q=32")


def _kernel(x_ptr, n, groups, heads_per_group, scale, flag, bias_ptr, BLOCK: tl.constexpr):
    pass


def test_launcher_signature_specialises_as_triton_launches():
    # A shape's g = 1 compiles as a constant (what the launcher does); compiled as an i32 it gave _chunk_grad_C
    # a spill the GPU never runs.
    signature, constexprs, attrs = launcher_signature(JITFunction(_kernel), (torch.zeros(8), 64, 1, 5, 0.5, True), dict(
        bias_ptr=None, BLOCK=32))
    assert signature == dict(x_ptr="*fp32", n="i32", groups="constexpr", heads_per_group="i32", scale="fp32",
                             flag="u1", bias_ptr="constexpr", BLOCK="constexpr")
    assert constexprs == dict(groups=1, bias_ptr=None, BLOCK=32)
    assert attrs == {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
