"""Mamba-2 SSD scan with differentiable initial and final states.

`ssd_scan` is a drop-in for mamba_ssm's `mamba_chunk_scan_combined` (same arguments,
same semantics) whose states are differentiable at both ends, so a sequence can be cut
anywhere and processed block by block (MA-GC). `ssd_step` advances the state by one token.

Backends: "naive" (sequential recurrence, the specification), "torch" (chunked, plain
torch), "triton" (fused chunked kernels), "auto" (triton for CUDA tensors, torch
otherwise; logs once which one ran). LONGWATCH_SSD_TUNE=1 has the Triton backend time its candidate
launches at each new shape and run the fastest (kernels.ssd.tuning).
"""
import logging

from kernels.ssd.naive import ssd_scan_naive
from kernels.ssd.step import ssd_step_torch
from kernels.ssd.torch_chunked import ssd_scan_torch

__all__ = ["ssd_scan", "ssd_step", "BACKENDS"]

BACKENDS = ("auto", "triton", "torch", "naive")
log = logging.getLogger(__name__)
_auto_logged: set[tuple[str, str]] = set()


def _check_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_limit, backend):
    def fail(name, value, want):
        raise ValueError(f"kernels.ssd.ssd_scan: {name} = {value}, expected {want}")

    if backend not in BACKENDS:
        fail("backend", repr(backend), f"one of {BACKENDS}")
    if x.dim() != 4:
        fail("x.shape", tuple(x.shape), "(b, l, h, p)")
    b, l, h, p = x.shape
    if tuple(dt.shape) != (b, l, h):
        fail("dt.shape", tuple(dt.shape), (b, l, h))
    if tuple(A.shape) != (h,):
        fail("A.shape", tuple(A.shape), (h,))
    if B.dim() != 4 or B.shape[:2] != (b, l):
        fail("B.shape", tuple(B.shape), f"({b}, {l}, g, n)")
    g, n = B.shape[2], B.shape[3]
    if h % g:
        fail("B.shape[2] (groups)", g, f"a divisor of h = {h}")
    if C.shape != B.shape:
        fail("C.shape", tuple(C.shape), tuple(B.shape))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        fail("chunk_size", chunk_size, "a positive int")
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        fail("D.shape", tuple(D.shape), f"({h},) or ({h}, {p})")
    if z is not None and z.shape != x.shape:
        fail("z.shape", tuple(z.shape), tuple(x.shape))
    if dt_bias is not None and tuple(dt_bias.shape) != (h,):
        fail("dt_bias.shape", tuple(dt_bias.shape), (h,))
    if initial_states is not None and tuple(initial_states.shape) != (b, h, p, n):
        fail("initial_states.shape", tuple(initial_states.shape), (b, h, p, n))
    if seq_idx is not None:
        if tuple(seq_idx.shape) != (b, l):
            fail("seq_idx.shape", tuple(seq_idx.shape), (b, l))
        if seq_idx.dtype.is_floating_point:
            fail("seq_idx.dtype", seq_idx.dtype, "an integer dtype")
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        fail("dt_limit", dt_limit, "(low, high) with low <= high")


def ssd_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
             dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, backend="auto"):
    """Mamba-2 selective state-space scan (SSD), chunked.

    Shapes (mamba_ssm's): x (b, l, h, p), dt (b, l, h), A (h,) (negative), B and C (b, l, g, n)
    with h % g == 0 (head i reads group i // (h // g)), D (h,) or (h, p), z (b, l, h, p),
    dt_bias (h,), initial_states (b, h, p, n), seq_idx (b, l) int, non-decreasing along l.

    dt <- clamp(softplus?(dt + dt_bias), dt_limit); per head the state S (p, n) follows
    S_t = exp(A dt_t) S_{t-1} + dt_t x_t B_t^T and y_t = (S_t C_t + D x_t) * silu(z_t).
    Where seq_idx changes the state restarts from zero; `initial_states` is the state before
    position 0 and belongs to the sequence at position 0 (mamba_ssm ties it to seq_idx 0
    instead; the two agree whenever seq_idx[:, 0] == 0).

    Returns y (b, l, h, p) in x.dtype [, final_states (b, h, p, n) fp32 (fp64 for fp64 x)].
    Differentiable in x, dt, A, B, C, D, z, dt_bias and initial_states; a gradient on
    final_states flows back. `chunk_size` changes speed and memory, never the result
    beyond rounding (torch caps it at 64 tokens, its fastest on a CPU; triton keeps one state
    per chunk, rounding chunk_size down to a power of two in 16..256, and works in tiles of at
    most 64 tokens).
    """
    _check_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_limit, backend)
    if backend == "auto":
        backend = "triton" if x.is_cuda else "torch"
        if (x.device.type, backend) not in _auto_logged:
            _auto_logged.add((x.device.type, backend))
            log.info("kernels.ssd.ssd_scan: backend 'auto' runs '%s' for %s tensors", backend, x.device.type)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, initial_states=initial_states, seq_idx=seq_idx,
                  dt_softplus=dt_softplus, dt_limit=tuple(dt_limit), return_final_states=return_final_states)
    if backend == "naive" or x.shape[1] == 0:  # an empty sequence has no chunks: the recurrence's zero steps
        return ssd_scan_naive(x, dt, A, B, C, chunk_size, **kwargs)
    if backend == "torch":
        return ssd_scan_torch(x, dt, A, B, C, chunk_size, **kwargs)
    # Imported here, not at the top: TRITON_INTERPRET must be set before Triton's jit runs,
    # and CPU-only users never need Triton compiled.
    from kernels.ssd.triton_chunked import ssd_scan_triton
    return ssd_scan_triton(x, dt, A, B, C, chunk_size, **kwargs)


def ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=(0.0, float("inf"))):
    """One token of the scan, for generation: state (b, h, p, n), x (b, h, p), dt (b, h), A (h,),
    B and C (b, g, n), D (h,) or (h, p), z (b, h, p), dt_bias (h,).

    Returns (y (b, h, p) in x.dtype, new_state (b, h, p, n) fp32). Calling it l times equals
    `ssd_scan` over the l tokens with `initial_states=state`. Plain torch on every device.
    """
    b, h, p = x.shape
    if state.shape[:3] != (b, h, p) or B.dim() != 3 or B.shape[0] != b or h % B.shape[1]:
        raise ValueError(f"kernels.ssd.ssd_step: state {tuple(state.shape)}, x {tuple(x.shape)}, "
                         f"B {tuple(B.shape)} do not fit state (b, h, p, n), x (b, h, p), B (b, g, n)")
    return ssd_step_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
