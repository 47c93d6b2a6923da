"""kernels.ssd on the CPU: the torch backend against the naive recurrence, chaining, ssd_step."""
import logging

import pytest
import torch

from kernels.ssd import ssd_scan, ssd_step
from ssd_testing import (CASES, TOL_FP32, TOL_FP32_GRAD, TOL_FP64, Case, as_float64, assert_close, make_inputs,
                         run_with_grads)


def scan(backend):
    return lambda **kw: ssd_scan(**kw, backend=backend)


def compare(case, backend, dtype, tol, tol_grad):
    ref_kw = make_inputs(case, torch.float64)
    kw = make_inputs(case, dtype)
    y_ref, f_ref, g_ref = run_with_grads(scan("naive"), ref_kw)
    y, f, grads = run_with_grads(scan(backend), kw)
    assert y.dtype == dtype and f.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(y, y_ref, tol, f"{case.name}: y")
    assert_close(f, f_ref, tol, f"{case.name}: final_states")
    assert set(grads) == set(g_ref)
    for name in g_ref:
        assert_close(grads[name], g_ref[name], tol_grad, f"{case.name}: d{name}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_matches_naive_fp64(case):
    compare(case, "torch", torch.float64, TOL_FP64, TOL_FP64)


@pytest.mark.parametrize("case", [CASES[0], CASES[7]], ids=lambda c: c.name)
def test_torch_fp32_matches_naive_fp64(case):
    compare(case, "torch", torch.float32, TOL_FP32, TOL_FP32_GRAD)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, TOL_FP64), (torch.float32, TOL_FP32)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_without_autograd_matches_naive(case, dtype, tol):
    """Under no_grad the torch backend runs chunk by chunk: the same y and final state."""
    ref_kw = make_inputs(case, torch.float64)
    kw = make_inputs(case, dtype)
    with torch.no_grad():
        y_ref, f_ref = ssd_scan(**ref_kw, return_final_states=True, backend="naive")
        y, f = ssd_scan(**kw, return_final_states=True, backend="torch")
    assert y.dtype == dtype and not y.requires_grad
    assert_close(y, y_ref, tol, f"{case.name}: y")
    assert_close(f, f_ref, tol, f"{case.name}: final_states")


SPANS = pytest.mark.parametrize("A", [
    [-1.0, 0.5, -0.2, 0.3],      # heads whose state grows (dt * A > 0)
    [-60.0, -8.0, -1.0, -0.1],   # dt * A about -16 a token (median): a chunk spans a few tokens
], ids=["growing_heads", "strong_decays"])
FP64_FP32 = pytest.mark.parametrize("dtype, tol, tol_grad", [(torch.float64, TOL_FP64, TOL_FP64),
                                                             (torch.float32, TOL_FP32, TOL_FP32_GRAD)],
                                    ids=["fp64", "fp32"])


def spans_inputs(A, dtype):
    kw = make_inputs(Case("spans", l=45, chunk=16, seq_idx=True), dtype)
    kw["A"] = torch.tensor(A, dtype=dtype, requires_grad=True)
    return kw


@FP64_FP32
@SPANS
def test_torch_without_autograd_cuts_chunks_where_exp_would_leave_fp32(A, dtype, tol, tol_grad):
    """Chunk by chunk, each token is rescaled by exp(+-its log decay since its chunk's first token), so
    chunks end where that would pass exp(MAX_SPAN): still the recurrence, in either direction. The caller's
    initial_states, which the loop updates in place, stays as it was."""
    kw = spans_inputs(A, dtype)
    initial = kw["initial_states"].detach().clone()
    with torch.no_grad():
        y_ref, f_ref = ssd_scan(**as_float64(kw), return_final_states=True, backend="naive")
        y, f = ssd_scan(**kw, return_final_states=True, backend="torch")
    assert_close(y, y_ref, tol, "y")
    assert_close(f, f_ref, tol, "final_states")
    assert torch.equal(kw["initial_states"], initial)


@FP64_FP32
@SPANS
def test_torch_with_autograd_shortens_chunks_where_exp_would_leave_fp32(A, dtype, tol, tol_grad):
    """With autograd, all chunks have one length, halved until exp(+-rel) fits: outputs and every gradient
    still match the recurrence."""
    kw = spans_inputs(A, dtype)
    y_ref, f_ref, g_ref = run_with_grads(scan("naive"), as_float64(kw))
    y, f, grads = run_with_grads(scan("torch"), kw)
    assert_close(y, y_ref, tol, "y")
    assert_close(f, f_ref, tol, "final_states")
    for name in g_ref:
        assert_close(grads[name], g_ref[name], tol_grad, f"d{name}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_sequence_passes_the_state_through(backend):
    kw = slice_inputs(make_inputs(Case("empty", seq_idx=True)), 0, 0)
    y, f = ssd_scan(**kw, return_final_states=True, backend=backend)
    assert y.shape == (2, 0, 4, 8)
    assert torch.equal(f, kw["initial_states"])
    (grad,) = torch.autograd.grad(f.sum(), kw["initial_states"])
    assert torch.equal(grad, torch.ones_like(grad))


def test_chunk_size_does_not_change_the_result():
    kw = make_inputs(Case("chunks", l=45, seq_idx=True))
    outs = [ssd_scan(**{**kw, "chunk_size": q}, backend="torch", return_final_states=True) for q in (1, 4, 16, 64)]
    for y, f in outs[1:]:
        assert_close(y, outs[0][0], TOL_FP64, "y across chunk sizes")
        assert_close(f, outs[0][1], TOL_FP64, "final_states across chunk sizes")


def slice_inputs(kw, start, stop):
    """The inputs of positions [start, stop) of every per-token tensor."""
    per_token = ("x", "dt", "B", "C", "z", "seq_idx")
    return {k: (v[:, start:stop] if k in per_token and v is not None else v) for k, v in kw.items()}


@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("split", [1, 8, 20, 44])
def test_chaining_equals_whole(backend, split):
    """Cut anywhere, carry final_states into initial_states: same outputs, states and gradients."""
    case = Case("chain", l=45, chunk=8, seq_idx=True)
    kw = make_inputs(case)

    def chained(**kw):
        first = {**slice_inputs(kw, 0, split), "return_final_states": True}
        y1, state = ssd_scan(**first, backend=backend)
        second = {**slice_inputs(kw, split, case.l), "initial_states": state, "return_final_states": True}
        y2, final = ssd_scan(**second, backend=backend)
        return torch.cat([y1, y2], dim=1), final

    y, f, grads = run_with_grads(lambda **k: chained(**{a: b for a, b in k.items() if a != "return_final_states"}), kw)
    y_ref, f_ref, g_ref = run_with_grads(scan(backend), kw)
    assert_close(y, y_ref, TOL_FP64, "chained y")
    assert_close(f, f_ref, TOL_FP64, "chained final_states")
    for name in g_ref:
        assert_close(grads[name], g_ref[name], TOL_FP64, f"chained d{name}")


def test_step_repeated_equals_scan():
    case = Case("step", l=11, D="hp", dt_limit=(0.05, 0.6))
    kw = make_inputs(case)
    y_ref, f_ref = ssd_scan(**kw, backend="torch", return_final_states=True)
    state, ys = kw["initial_states"], []
    for t in range(case.l):
        y, state = ssd_step(state, kw["x"][:, t], kw["dt"][:, t], kw["A"], kw["B"][:, t], kw["C"][:, t],
                            D=kw["D"], z=kw["z"][:, t], dt_bias=kw["dt_bias"], dt_softplus=True,
                            dt_limit=case.dt_limit)
        ys.append(y)
    assert_close(torch.stack(ys, 1), y_ref, TOL_FP64, "stepped y")
    assert_close(state, f_ref, TOL_FP64, "stepped state")
    # Differentiable through the steps, into the state we started from.
    (grad,) = torch.autograd.grad(state.sum() + torch.stack(ys).sum(), kw["initial_states"])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_auto_runs_torch_on_cpu_and_says_so(caplog):
    import kernels.ssd as ssd
    ssd._auto_logged.discard(("cpu", "torch"))
    kw = make_inputs(Case("auto", l=9))
    with caplog.at_level(logging.INFO, logger="kernels.ssd"):
        y = ssd_scan(**kw)
        ssd_scan(**kw)
    assert [r.getMessage() for r in caplog.records].count(
        "kernels.ssd.ssd_scan: backend 'auto' runs 'torch' for cpu tensors") == 1
    assert_close(y, ssd_scan(**kw, backend="naive"), TOL_FP64, "auto y")


@pytest.mark.parametrize("bad, message", [
    (dict(backend="cuda"), "backend"),
    (dict(dt=torch.zeros(2, 9, 3)), "dt.shape"),
    (dict(B=torch.zeros(2, 9, 3, 16), C=torch.zeros(2, 9, 3, 16)), "groups"),
    (dict(D=torch.zeros(5)), "D.shape"),
    (dict(initial_states=torch.zeros(2, 4, 8, 8)), "initial_states.shape"),
    (dict(seq_idx=torch.zeros(2, 9)), "seq_idx.dtype"),
    (dict(chunk_size=0), "chunk_size"),
])
def test_bad_input_names_the_argument(bad, message):
    kw = {**make_inputs(Case("bad", l=9)), **bad}
    with pytest.raises(ValueError, match=message):
        ssd_scan(**kw)
