"""The traffic counter counts what a GPU would move: checked on kernels whose traffic is known by hand,
then on the two scans it compares."""
import pytest
import torch
import triton
import triton.language as tl

from kernels.benchmarks.registry import SSDShape
from kernels.benchmarks.traffic import Counter, count, report, totals
from ssd_testing import needs_interpreter, needs_mamba_ssm  # the counter wraps the interpreter


@triton.jit
def _twice(src, dst, n, BLOCK: tl.constexpr):
    """dst = 2 src, and src read a second time: requested bytes count both reads, the footprint one."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(src + offs, mask=mask)
    tl.store(dst + offs, a + tl.load(src + offs, mask=mask), mask=mask)


@triton.jit
def _double_in_place(ptr, n, BLOCK: tl.constexpr):
    """ptr *= 2: each byte read once and written once, both of which DRAM moves."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ptr + offs, 2 * tl.load(ptr + offs, mask=offs < n), mask=offs < n)


@triton.jit
def _store_in_first_step(ptr, n, BLOCK: tl.constexpr):
    """ptr[:n] = 1 in the first of three loop steps. In the interpreter, `lanes & (step == 0)` with the step
    computed from the loop index holds int32 data, not bool (_state_pass's masks do too)."""
    offs = tl.arange(0, BLOCK)
    for i in tl.range(3):
        step = i % 3
        tl.store(ptr + offs, tl.full((BLOCK,), 1.0, tl.float32), mask=(offs < n) & (step == 0))


@triton.jit
def _matmul(a, b, c, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
    rm, rk, rn = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
    prod = tl.dot(tl.load(a + rm[:, None] * K + rk[None, :]), tl.load(b + rk[:, None] * N + rn[None, :]))
    tl.store(c + rm[:, None] * N + rn[None, :], prod)


@needs_interpreter
def test_counts_a_triton_kernel_and_torch_ops_by_hand():
    src, dst = torch.arange(100, dtype=torch.float32), torch.empty(100, dtype=torch.float32)
    a, b, c = torch.ones(16, 32), torch.ones(32, 16), torch.empty(16, 16)
    stored = torch.zeros(16)
    counter = Counter()
    with counter.phase("fwd"):
        _twice[(2,)](src, dst, 100, BLOCK=64)          # 128 lanes, 28 masked off
        _double_in_place[(2,)](dst, 100, BLOCK=64)
        _matmul[(1,)](a, b, c, M=16, K=32, N=16)
        _store_in_first_step[(1,)](stored, 10, BLOCK=16)  # 10 lanes stored once
        total = src.view(10, 10).sum(0)                  # the view moves nothing; the sum reads 400, writes 40
        copy = torch.empty(100)                          # an allocation moves nothing
        copy.copy_(src)                                  # copy_ writes its first argument without reading it
    twice, in_place, matmul, first_step, summed, copied = counter.launches["fwd"]
    assert (twice.name, twice.kind, twice.read, twice.written, twice.footprint) == ("_twice", "triton", 800, 400, 800)
    assert (in_place.read, in_place.written, in_place.footprint) == (400, 400, 800)
    assert dst[5] == 20 and (c == 32).all() and stored.sum() == 10  # the kernels still ran
    assert (matmul.flops, matmul.read, matmul.written) == (2 * 16 * 32 * 16, 4 * (512 + 512), 4 * 256)
    assert (first_step.written, first_step.footprint) == (40, 40)
    assert (summed.name, summed.kind, summed.read, summed.written) == ("sum", "torch", 400, 40)
    assert total.shape == (10,)
    assert (copied.name, copied.read, copied.written) == ("copy_", 400, 400)
    assert totals(counter.launches["fwd"])["triton"] == 4


@needs_interpreter
@needs_mamba_ssm
def test_both_scans_move_at_least_their_inputs_and_outputs():
    shape = SSDShape(b=1, l=64, h=2, p=16, n=16, chunk=32)
    counted = {impl: count(impl, shape) for impl in ("ours", "mamba_ssm")}
    fp16 = 2
    x_bytes = shape.b * shape.l * shape.h * shape.p * fp16
    for impl, phases in counted.items():
        fwd, bwd = totals(phases["fwd"]), totals(phases["bwd"])
        assert fwd["footprint"] >= 2 * x_bytes, impl      # x read, y written
        assert bwd["footprint"] >= 3 * x_bytes, impl      # dy and x read, dx written
        assert fwd["triton"] >= 3 and bwd["triton"] >= 3, impl
    text = report(shape, counted, "test")
    assert "| fwd+bwd | " in text and "ours, bwd, by kernel" in text and "mamba_ssm, fwd, by kernel" in text


@needs_interpreter
@pytest.mark.parametrize("one_pass_states", [False, True], ids=["two_pass_states", "one_pass_states"])
def test_our_scan_does_each_product_once(one_pass_states):
    """Our products, counted, against a count by hand (2 m n k a product). Session 9's gradient kernels formed
    dy_t . x_s three times a tile pair and head, and one more product in _chunk_grad_cols: this would fail.
    _state_pass makes the same products as _chunk_state (and _state_scan none)."""
    shape = SSDShape(b=1, l=256, h=4, p=16, n=16, chunk=128)  # fp16: T 128, two Q-tiles of 64, nothing padded
    Q, P, N, heads, chunks = 64, 16, 16, 4, 2
    tiles, pairs = 2, 3  # Q-tiles of a chunk, and (t tile, s tile) pairs with s <= t

    def product(m, n, k):
        return 2 * m * n * k

    forward = (pairs * product(Q, Q, N)               # _cb_products: C_t . B_s, once for the group
               + tiles * heads * product(P, N, Q)     # _chunk_state: each chunk's own state
               + tiles * heads * product(Q, P, N)     # _chunk_output: C_t against the entering state
               + pairs * heads * product(Q, P, Q))    # _chunk_output: the in-chunk sum
    backward = (tiles * heads * product(P, N, Q)      # _chunk_state: dL/dS_c
                + tiles * heads * product(Q, P, N)    # _chunk_grad_cols: G B_s
                + pairs * heads * product(Q, P, Q)    # _chunk_grad_cols: the in-chunk sum over t, dx and ddt from it
                + pairs * heads * product(Q, Q, P)    # _chunk_grad_CB: dy_t . x_s
                + 2 * tiles * heads * product(Q, N, P)  # _chunk_grad_C and _B: the states' terms
                + 2 * pairs * product(Q, N, Q))       # _chunk_grad_C and _B: dCB's tiles times B and C
    counted = count("ours", shape, launch_change=dict(one_pass_states=one_pass_states))
    names = {launch.name for launch in counted["fwd"] + counted["bwd"]}
    assert ("_state_pass" in names, "_state_scan" in names) == (one_pass_states, not one_pass_states), names
    if one_pass_states:  # each chunk's entering fp32 state written once (not once a tile), and the last state
        assert [launch.written for launch in counted["fwd"] if launch.name == "_state_pass"] == \
            [(chunks + 1) * heads * P * N * 4]
    assert totals(counted["fwd"])["flops"] == chunks * forward
    assert totals(counted["bwd"])["flops"] == chunks * backward
