"""The Triton SSD backend against the naive recurrence.

CPU tier: Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py) at tiny fp32
shapes, every fresh allocation NaN-filled so a read of memory the kernels never wrote
fails loudly. GPU tier (`-m gpu`): fp32/fp16/bf16 at real sizes, and parity with
mamba_ssm's `mamba_chunk_scan_combined` when it is installed.
"""
import dataclasses

import pytest
import torch

from kernels.ssd import ssd_scan
from kernels.ssd.naive import process_dt
from ssd_testing import (TOL_BF16, TOL_FP16, TOL_FP32, TOL_FP32_GRAD, TOL_TF32, Case, as_float64,
                         assert_close, make_inputs, mamba_ssm_or_skip, run_with_grads)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Tiny on purpose: a 64x64x64 dot costs ~3 ms per program in the interpreter. p, n >= 16
# (the smallest tl.dot tile on a GPU); the kernels' chunk is 16 here, so l = 40 is 3 chunks.
TRITON_CASES = [
    Case("ragged_all_inputs", l=40, p=16, n=16, chunk=16, D="hp"),
    Case("seq_idx", l=40, p=16, n=16, chunk=16, seq_idx=True),
    Case("l_below_chunk_g_eq_h", b=1, l=5, p=16, n=16, g=4, chunk=16, init=False, z=False, D=None),
    Case("odd_p_n_dt_limit", b=1, l=19, p=12, n=20, g=1, chunk=16, dt_limit=(0.05, 0.5), dt_bias=False),
]


@pytest.fixture
def nan_filled_allocations(monkeypatch):
    """torch.empty / empty_like return NaN-filled floating tensors (fla's tests/conftest.py idea)."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k)))


def test_nan_fixture_poisons_fresh_allocations(nan_filled_allocations):
    assert torch.empty(3).isnan().all() and torch.empty_like(torch.zeros(2, 2)).isnan().all()
    assert torch.empty(2, dtype=torch.int32).dtype == torch.int32  # integers are left alone


def compare_to_naive(case, dtype, tol, tol_grad, device=DEVICE):
    kw = make_inputs(case, dtype, device)
    y_ref, f_ref, g_ref = run_with_grads(lambda **k: ssd_scan(**k, backend="naive"), as_float64(kw))
    y, f, grads = run_with_grads(lambda **k: ssd_scan(**k, backend="triton"), kw)
    assert y.dtype == dtype and f.dtype == torch.float32
    assert_close(y, y_ref, tol, f"{case.name}: y")
    assert_close(f, f_ref, tol, f"{case.name}: final_states")
    assert set(grads) == set(g_ref)
    for name in g_ref:
        assert_close(grads[name], g_ref[name], tol_grad, f"{case.name}: d{name}")


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: c.name)
def test_triton_matches_naive(case, nan_filled_allocations):
    compare_to_naive(case, torch.float32, TOL_FP32, TOL_FP32_GRAD)


@pytest.mark.parametrize("used", ["y", "final_states"])
def test_triton_gradient_through_one_output(used, nan_filled_allocations):
    """Autograd hands the Function None for the output nobody used (no tensor of zeros): only y, as when
    final_states is not returned, or only final_states, as a block whose outputs are discarded."""
    case = Case("one_output", l=40, p=16, n=16, chunk=16, D="hp", seq_idx=True)
    kw = make_inputs(case, torch.float32, DEVICE)
    ref = as_float64(kw)
    names = [k for k, v in kw.items() if isinstance(v, torch.Tensor) and v.requires_grad]

    def grads(kw, backend):
        y, final = ssd_scan(**kw, return_final_states=True, backend=backend)
        out = y if used == "y" else final
        cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        return torch.autograd.grad(out, [kw[k] for k in names], cotangent.to(out), allow_unused=True)

    zero_if_none = lambda grad, name: torch.zeros_like(ref[name]) if grad is None else grad  # unreached: C, z, D
    for name, got, want in zip(names, grads(kw, "triton"), grads(ref, "naive")):
        assert_close(zero_if_none(got, name), zero_if_none(want, name), TOL_FP32_GRAD,
                     f"d{name} through {used} only")


def token_weights_reference(dt, A, dt_bias, seq, T, dt_softplus, dt_limit):
    """TokenWeights in plain torch under autograd (what it replaced), in dt's dtype."""
    b, l, h = dt.shape
    num_chunks = max(1, -(-l // T))
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit, dt.dtype)
    dt = torch.nn.functional.pad(dt.transpose(1, 2), (0, num_chunks * T - l)).reshape(b, h, num_chunks, T)
    cum = (dt * A[:, None, None]).cumsum(-1)
    cum_end = cum[..., -1:]
    win, wout, decay = cum.exp(), (cum_end - cum).exp() * dt, cum_end.squeeze(-1).exp()
    if seq is not None:
        chunks = seq.view(b, 1, num_chunks, T)
        before = torch.cat([chunks[:, :, :1, :1], chunks[:, :, :-1, -1:]], 2)  # alive before each chunk
        end = chunks[..., -1:]
        win, wout, decay = win * (chunks == before), wout * (chunks == end), decay * (end == before).squeeze(-1)
    return *(t.reshape(b, h, -1) for t in (dt, cum, win, wout)), decay


@pytest.mark.parametrize("dt_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("options", [
    dict(dt_softplus=True, dt_limit=(0.0, float("inf")), bias=True, seq=True),
    dict(dt_softplus=True, dt_limit=(0.02, 0.3), bias=False, seq=False),
    dict(dt_softplus=False, dt_limit=(0.0, 0.25), bias=True, seq=True),
], ids=["softplus_seq", "softplus_limit", "limit_only_seq"])
def test_token_weights_kernels_match_torch(options, dt_dtype, nan_filled_allocations):
    """Both kernels against the torch they replaced: every output, and the gradients of dt, A and dt_bias under
    random cotangents on all five. Raw dt spans softplus's identity branch (above 20) and both sides of the
    clamp; seq_idx changes inside a chunk and at a chunk's first token; l = 45 pads the last chunk by 3 tokens."""
    from kernels.ssd.triton_chunked import TokenWeights, _padded_seq
    b, l, h, T = 2, 45, 3, 16
    gen = torch.Generator().manual_seed(0)
    dt = (torch.randn(b, l, h, generator=gen) * 2 - 2).to(dt_dtype)
    dt[0, 3, 0], dt[1, 7, 2] = 25.0, 21.0  # softplus is the identity there
    A = -torch.rand(h, generator=gen) * 4 - 0.5
    bias = torch.randn(h, generator=gen) * 0.5 if options["bias"] else None
    seq_idx = torch.tensor([[0] * 7 + [1] * 25 + [2] * 13, [0] * 32 + [1] * 13], dtype=torch.int32)
    seq = _padded_seq(seq_idx, T) if options["seq"] else None  # 48 tokens
    args = (T, options["dt_softplus"], options["dt_limit"])

    def run(fn, *inputs):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
        outs = fn(*leaves, seq, *args)
        cotangents = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
                      for i, o in enumerate(outs)]
        wanted = [t for t in leaves if t is not None]
        return outs, torch.autograd.grad(outs, wanted, [c.to(o) for c, o in zip(cotangents, outs)])

    outs, grads = run(TokenWeights.apply, dt, A, bias)  # dt in its dtype, A and dt_bias fp32
    outs_ref, grads_ref = run(token_weights_reference, *(t if t is None else t.double() for t in (dt, A, bias)))
    for name, got, want in zip(("dt", "cum", "win", "wout", "decay"), outs, outs_ref):
        assert_close(got, want, TOL_FP32, name)
    assert grads[0].dtype == dt_dtype  # the gradient comes back in the raw dt's dtype
    for name, got, want in zip(("ddt", "dA", "ddt_bias"), grads, grads_ref):
        assert_close(got, want, TOL_FP32_GRAD, name)


def compare_launch_to_naive(case, dtype, change, tol, tol_grad, device=DEVICE):
    """ssd_scan_triton under default_launch with `change`, against the naive recurrence on the same inputs in fp64."""
    from kernels.ssd.triton_chunked import default_launch, ssd_scan_triton
    kw = make_inputs(case, dtype, device)
    launch = dataclasses.replace(default_launch(kw["x"], kw["B"], case.chunk), **change)
    y, f, grads = run_with_grads(lambda **k: ssd_scan_triton(**k, launch=launch), kw)
    y_ref, f_ref, g_ref = run_with_grads(lambda **k: ssd_scan(**k, backend="naive"), as_float64(kw))
    assert_close(y, y_ref, tol, "y")
    assert_close(f, f_ref, tol, "final_states")
    for name in g_ref:
        assert_close(grads[name], g_ref[name], tol_grad, f"d{name}")


@pytest.mark.parametrize("change", [
    dict(T=32, Q=16, grad_Q=16),
    dict(T=64, Q=16, grad_Q=32, BN_state=16, BN_grad=16, scan_block=128, scan_stages=2, heads_per_program=2, stages=2),
    dict(T=64, Q=32, grad_Q=16, warps=2, grad_warps=2, heads_per_program=1, grad_maxnreg=128, grad_stages=2),
    dict(T=64, Q=16, BN_state=16, one_pass_states=True),
], ids=["two_tiles_per_chunk", "four_tiles_two_head_splits_two_n_tiles", "two_wide_tiles_per_head",
        "states_in_one_pass_four_tiles_two_n_tiles"])
def test_triton_launch_does_not_change_the_result(change, nan_filled_allocations):
    """Every Launch the benchmark's sweep may pick computes the same scan: several Q-token tiles per
    T-token chunk (the loops over tiles in every kernel) and the gradient kernels' heads split several
    ways, _state_pass for _chunk_state and _state_scan, against the naive recurrence, forward and backward."""
    case = Case("launch", b=2, l=77, h=4, p=32, n=32, g=1, chunk=16, D="hp", seq_idx=True)
    compare_launch_to_naive(case, torch.float32, change, TOL_FP32, TOL_FP32_GRAD)


def test_states_in_one_pass_without_initial_states(nan_filled_allocations):
    """_state_pass's other ends: its carry starting from zeros, and a sequence shorter than one chunk."""
    case = Case("one_pass_short", b=2, l=9, h=2, p=16, n=32, g=1, chunk=16, init=False)
    compare_launch_to_naive(case, torch.float32, dict(one_pass_states=True, BN_state=16), TOL_FP32, TOL_FP32_GRAD)


@pytest.mark.parametrize("states", [dict(states_16bit=False), dict(states_16bit=True),
                                    dict(states_16bit=True, one_pass_states=True), dict(cb_16bit=True)],
                         ids=["fp32_states", "fp16_states", "fp16_states_one_pass", "fp16_cb"])
def test_triton_16bit_dot_operands(states, nan_filled_allocations):
    """prec "fp16" rounds every product's operands to fp16 first, states_16bit keeps the entering states and
    their gradients in fp16 too (initial_states and final_states stay as they are), and cb_16bit C_t . B_s.
    bf16 is the same code, but the interpreter gets bf16 wrong, so the gpu tier runs it."""
    case = Case("fp16_operands", b=1, l=77, h=4, p=32, n=32, g=2, chunk=16, D="hp", seq_idx=True)
    compare_launch_to_naive(case, torch.float16, dict(T=32, Q=16, grad_Q=16, prec="fp16", **states),
                            TOL_FP16, TOL_FP16)


@pytest.mark.parametrize("field", ["states_16bit", "cb_16bit"])
def test_16bit_buffers_need_16bit_products(field):
    from kernels.ssd.triton_chunked import Launch
    with pytest.raises(ValueError, match=f"{field} with prec = 'ieee'"):
        Launch(T=16, Q=16, grad_Q=16, BP=16, BN=16, BN_state=16, BN_grad=16, scan_block=256, warps=4, grad_warps=4,
               heads_per_program=1, prec="ieee", **{field: True})


def test_triton_launch_rejects_what_it_cannot_run():
    from kernels.ssd.triton_chunked import Launch, ssd_scan_triton
    fields = dict(T=32, Q=32, grad_Q=32, BP=16, BN=16, BN_state=16, BN_grad=16, scan_block=256, warps=4, grad_warps=4,
                  heads_per_program=1, prec="ieee")
    with pytest.raises(ValueError, match="Q = 64, T = 32"):
        Launch(**fields | dict(Q=64))
    with pytest.raises(ValueError, match="scan_stages = 0; expected at least 1"):
        Launch(**fields | dict(scan_stages=0))
    kw = make_inputs(Case("three_heads_per_group", b=1, l=5, h=3, g=1, p=16), torch.float32, DEVICE)
    launch = Launch(T=16, Q=16, grad_Q=16, BP=16, BN=16, BN_state=16, BN_grad=16, scan_block=256, warps=4, grad_warps=4,
                    heads_per_program=2, prec="ieee")
    with pytest.raises(ValueError, match="heads_per_program = 2, expected a divisor of the heads per group, 3"):
        ssd_scan_triton(**kw, launch=launch)


def test_triton_chaining_equals_whole(nan_filled_allocations):
    """Final -> initial through the Triton Function: forward and both state gradients."""
    case = Case("chain", b=1, l=40, p=16, n=16, chunk=16, seq_idx=True)
    kw = make_inputs(case, torch.float32, DEVICE)
    split = 21
    per_token = ("x", "dt", "B", "C", "z", "seq_idx")

    def part(kw, a, b):
        return {k: (v[:, a:b] if k in per_token and v is not None else v) for k, v in kw.items()}

    def chained(return_final_states, **kw):
        y1, state = ssd_scan(**part(kw, 0, split), return_final_states=True, backend="triton")
        y2, final = ssd_scan(**{**part(kw, split, case.l), "initial_states": state}, return_final_states=True,
                             backend="triton")
        return torch.cat([y1, y2], 1), final

    y, f, grads = run_with_grads(chained, kw)
    y_ref, f_ref, g_ref = run_with_grads(lambda **k: ssd_scan(**k, backend="naive"), kw)
    assert_close(y, y_ref, TOL_FP32, "chained y")
    assert_close(f, f_ref, TOL_FP32, "chained final_states")
    for name in g_ref:
        assert_close(grads[name], g_ref[name], TOL_FP32_GRAD, f"chained d{name}")


def test_triton_rejects_float64():
    with pytest.raises(ValueError, match="x.dtype"):
        ssd_scan(**make_inputs(Case("f64", l=5, p=16), torch.float64, DEVICE), backend="triton")


# ----------------------------------------------------------------------------- GPU tier
GPU_CASES = [
    Case("gpu_ragged", b=2, l=1000, h=8, p=64, g=2, n=128, chunk=256, D="h", seq_idx=True),
    Case("gpu_short", b=1, l=77, h=4, p=32, g=1, n=64, chunk=64, D="hp", dt_limit=(0.001, 0.5)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol, tol_grad", [
    (torch.float32, TOL_FP32, TOL_FP32_GRAD), (torch.float16, TOL_FP16, TOL_FP16), (torch.bfloat16, TOL_BF16, TOL_BF16)],
    ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_triton_gpu_matches_naive(case, dtype, tol, tol_grad, nan_filled_allocations):
    # The reference runs on the same (rounded) inputs in fp64: what is left is the kernel's own rounding.
    compare_to_naive(case, dtype, tol, tol_grad, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float16, TOL_FP16), (torch.bfloat16, TOL_BF16)], ids=["fp16", "bf16"])
@pytest.mark.parametrize("Q", [32, 64])
def test_triton_gpu_16bit_dot_operands(dtype, tol, Q, nan_filled_allocations):
    compare_launch_to_naive(GPU_CASES[0], dtype, dict(Q=Q, grad_Q=Q, prec="fp16" if dtype == torch.float16 else "bf16"),
                            tol, tol, "cuda")


@pytest.mark.parametrize("tiles", [dict(Q=64, grad_Q=32), dict(Q=32, grad_Q=64)])
def test_tf32_products_at_64_token_tiles_refused_for_16bit_inputs(tiles):
    from kernels.ssd.triton_chunked import default_launch, ssd_scan_triton
    case = Case("launch", b=1, l=70, h=2, p=16, n=16, g=1, chunk=64)
    kw = make_inputs(case, torch.float16, DEVICE)
    launch = dataclasses.replace(default_launch(kw["x"], kw["B"], 64), prec="tf32", **tiles)
    with pytest.raises(ValueError, match="tf32.*wrong gradients"):
        ssd_scan_triton(**kw, launch=launch)
    kw32 = make_inputs(case, torch.float32, DEVICE)  # fp32 inputs at 64 passed on the H200: allowed
    ssd_scan_triton(**kw32, launch=launch)


@pytest.fixture
def mamba_chunk_scan_combined():
    with mamba_ssm_or_skip():
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        yield mamba_chunk_scan_combined


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_gpu_matches_mamba_chunk_scan_combined(mamba_chunk_scan_combined, dtype):
    # seq_idx starts at 0: there mamba_ssm's and our initial-state conventions agree.
    case = Case("vs_mamba", b=2, l=1000, h=8, p=64, g=2, n=128, chunk=256, D="h", seq_idx=True)
    kw = make_inputs(case, dtype, "cuda")
    y_ref, f_ref, g_ref = run_with_grads(mamba_chunk_scan_combined, kw)
    y, f, grads = run_with_grads(lambda **k: ssd_scan(**k, backend="triton"), kw)
    tol = TOL_TF32 if dtype == torch.float32 else TOL_BF16
    assert_close(y, y_ref, tol, "y vs mamba_chunk_scan_combined")
    assert_close(f, f_ref, tol, "final_states vs mamba_chunk_scan_combined")
    for name in g_ref:
        assert_close(grads[name], g_ref[name], tol, f"d{name} vs mamba_chunk_scan_combined")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float16, TOL_FP16), (torch.bfloat16, TOL_BF16)], ids=["fp16", "bf16"])
@pytest.mark.parametrize("change", [dict(states_16bit=True), dict(states_16bit=True, one_pass_states=True),
                                    dict(cb_16bit=True)], ids=["two_pass", "one_pass", "cb"])
def test_triton_gpu_16bit_states(dtype, tol, change, nan_filled_allocations):
    # The launch sweep's "16-bit entering states", "states in one pass" and "C.B in 16 bits"; the CPU tier runs
    # fp16 only (the interpreter gets bf16 wrong). After the comparison with mamba_ssm, which gpu_check.sh's time
    # limit must not cut.
    compare_launch_to_naive(GPU_CASES[0], dtype, change, tol, tol, "cuda")


# Last in the file: gpu_check.sh gives the tier a fixed time, and tf32 is no default's.
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol, Q", [(torch.float32, TOL_TF32, 32), (torch.float32, TOL_TF32, 64),
                                          (torch.bfloat16, TOL_BF16, 32)], ids=["fp32-32", "fp32-64", "bf16-32"])
def test_triton_gpu_tf32_products(dtype, tol, Q, nan_filled_allocations):
    # tf32 was the default for 16-bit inputs until an H200 ran it: at Q 64 on bf16 inputs dL/ddt came out 63% off
    # (kernels/benchmarks/results/gpu_tests_NVIDIA-H200_2026-11-27.txt); Launch.check now refuses that.
    compare_launch_to_naive(GPU_CASES[0], dtype, dict(Q=Q, grad_Q=Q, prec="tf32"), tol, tol, "cuda")
