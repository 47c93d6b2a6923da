"""Chunked SSD in Triton: fused forward and backward kernels under one autograd.Function.

Per (batch, head) the sequence is cut into chunks of Q tokens (Q = chunk_size capped at
64, so a (Q, Q) tile stays in registers; the result does not depend on Q beyond rounding).
With dt already processed, cum_t = sum_{s <= t in chunk} A dt_s, and S_c the state
entering chunk c:

    y_t  = sum_{s <= t} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s  +  exp(cum_t) C_t . S_c
    S_c+1 = exp(cum_end) S_c + sum_s exp(cum_end - cum_s) dt_s x_s B_s^T

Forward: `_fwd_state_kernel` walks the chunks of one (batch, head) in order and writes
every S_c (the only sequential part); `_fwd_output_kernel` then computes each chunk's
outputs in parallel. Backward mirrors it: `_bwd_state_kernel` walks the chunks in reverse
and writes dL/dS at every chunk end (and dL/d initial_states), then `_bwd_chunk_kernel`
computes every other gradient chunk by chunk in parallel. dt's own gradient (through
dt_bias, softplus, clamp) and the D / z epilogue are plain torch around the Function.

seq_idx: masks keep sources and targets of different sequences apart; the state entering
a chunk belongs to the sequence alive at the previous chunk's last token (for chunk 0,
the sequence at token 0: where initial_states belongs).

Loads are cast to fp32 and every accumulation is fp32 (fp16/bf16 inputs are fine);
states are kept fp32.
"""
import dataclasses

import torch
import triton
import triton.language as tl

from kernels.ssd.naive import gate_output, process_dt

MAX_CHUNK = 64


@triton.jit
def _chunk_decay(dt_ptr, seq_ptr, A_h, i_b, i_h, c, l, h, Q: tl.constexpr, HAS_SEQ: tl.constexpr):
    """For chunk c of (batch i_b, head i_h): dt (Q,), cum (Q,), cum_end, the chunk's whole decay,
    and the two per-token gates: continues-the-entering-state (Q,) and alive-at-chunk-end (Q,)."""
    offs_q = tl.arange(0, Q)
    t = c * Q + offs_q
    dt = tl.load(dt_ptr + (i_b * l + t) * h + i_h, mask=t < l, other=0.0).to(tl.float32)
    a = dt * A_h
    cum = tl.cumsum(a, 0)
    cum_end = tl.sum(a, 0)
    chunk_decay = tl.exp(cum_end)
    from_prev = tl.full((Q,), 1.0, tl.float32)
    at_end = tl.full((Q,), 1.0, tl.float32)
    seg = tl.zeros((Q,), tl.int32)
    if HAS_SEQ:
        # Clamped indices: padding positions behave like the last real token.
        seg = tl.load(seq_ptr + i_b * l + tl.minimum(t, l - 1))
        seg_end = tl.load(seq_ptr + i_b * l + tl.minimum(c * Q + Q - 1, l - 1))
        seg_prev = tl.load(seq_ptr + i_b * l + tl.maximum(c * Q - 1, 0))
        from_prev = tl.where(seg == seg_prev, from_prev, 0.0)
        at_end = tl.where(seg == seg_end, at_end, 0.0)
        chunk_decay = tl.where(seg_end == seg_prev, chunk_decay, 0.0)
    return dt, cum, cum_end, chunk_decay, from_prev, at_end, seg


@triton.jit
def _load_tile(ptr, i_b, i_head, c, l, heads, width, Q: tl.constexpr, BW: tl.constexpr, col0):
    """Rows c*Q.. of a (b, l, heads, width) tensor at one head, columns col0..col0+BW: (Q, BW) fp32."""
    t = c * Q + tl.arange(0, Q)
    cols = col0 + tl.arange(0, BW)
    offs = ((i_b * l + t[:, None]) * heads + i_head) * width + cols[None, :]
    mask = (t[:, None] < l) & (cols[None, :] < width)
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _state_offsets(i_bh, c, num_chunks, P, N, BP: tl.constexpr, BN: tl.constexpr, row0, col0):
    """Offsets and mask of the (BP, BN) tile at (row0, col0) of a (b*h, num_chunks, P, N) state buffer."""
    rows = row0 + tl.arange(0, BP)
    cols = col0 + tl.arange(0, BN)
    offs = ((i_bh * num_chunks + c) * P + rows[:, None]) * N + cols[None, :]
    return offs, (rows[:, None] < P) & (cols[None, :] < N)


@triton.jit
def _fwd_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, seq_ptr, init_ptr, states_ptr, final_ptr,
                      l, h, g, P, N, num_chunks,
                      Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, PREC: tl.constexpr):
    """Grid (b*h, cdiv(N, BN), cdiv(P, BP)): walk the chunks in order; write the state entering each chunk."""
    i_bh, i_n, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // h, i_bh % h
    i_g = i_h // (h // g)
    A_h = tl.load(A_ptr + i_h).to(tl.float32)
    offs0, mask0 = _state_offsets(i_bh, 0, 1, P, N, BP, BN, i_p * BP, i_n * BN)
    if HAS_INIT:
        state = tl.load(init_ptr + offs0, mask=mask0, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BP, BN), tl.float32)
    for c in range(num_chunks):
        offs, mask = _state_offsets(i_bh, c, num_chunks, P, N, BP, BN, i_p * BP, i_n * BN)
        tl.store(states_ptr + offs, state, mask=mask)
        dt, cum, cum_end, chunk_decay, from_prev, at_end, seg = _chunk_decay(
            dt_ptr, seq_ptr, A_h, i_b, i_h, c, l, h, Q, HAS_SEQ)
        to_end = tl.exp(cum_end - cum) * dt * at_end
        x = _load_tile(x_ptr, i_b, i_h, c, l, h, P, Q, BP, i_p * BP)
        B = _load_tile(B_ptr, i_b, i_g, c, l, g, N, Q, BN, i_n * BN)
        state = chunk_decay * state + tl.dot(tl.trans(x * to_end[:, None]), B, input_precision=PREC)
    tl.store(final_ptr + offs0, state, mask=mask0)


@triton.jit
def _fwd_output_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, seq_ptr, states_ptr, y_ptr,
                       l, h, g, P, N, num_chunks,
                       Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                       HAS_SEQ: tl.constexpr, PREC: tl.constexpr):
    """Grid (b*h, num_chunks): one chunk's outputs, the intra-chunk part plus the entering state's."""
    i_bh, c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // h, i_bh % h
    i_g = i_h // (h // g)
    A_h = tl.load(A_ptr + i_h).to(tl.float32)
    dt, cum, cum_end, chunk_decay, from_prev, at_end, seg = _chunk_decay(
        dt_ptr, seq_ptr, A_h, i_b, i_h, c, l, h, Q, HAS_SEQ)
    x = _load_tile(x_ptr, i_b, i_h, c, l, h, P, Q, BP, 0)
    B = _load_tile(B_ptr, i_b, i_g, c, l, g, N, Q, BN, 0)
    C = _load_tile(C_ptr, i_b, i_g, c, l, g, N, Q, BN, 0)
    offs, mask = _state_offsets(i_bh, c, num_chunks, P, N, BP, BN, 0, 0)
    state = tl.load(states_ptr + offs, mask=mask, other=0.0)

    offs_q = tl.arange(0, Q)
    keep = offs_q[:, None] >= offs_q[None, :]
    if HAS_SEQ:
        keep = keep & (seg[:, None] == seg[None, :])
    # -inf before exp: the upper triangle's exponents are positive and could overflow.
    decay = tl.exp(tl.where(keep, cum[:, None] - cum[None, :], float("-inf")))
    M = tl.dot(C, tl.trans(B), input_precision=PREC) * decay * dt[None, :]
    y = tl.dot(M, x, input_precision=PREC)
    y += tl.dot(C, tl.trans(state), input_precision=PREC) * (tl.exp(cum) * from_prev)[:, None]

    t = c * Q + offs_q
    cols = tl.arange(0, BP)
    tl.store(y_ptr + ((i_b * l + t[:, None]) * h + i_h) * P + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(t[:, None] < l) & (cols[None, :] < P))


@triton.jit
def _bwd_state_kernel(dy_ptr, dt_ptr, A_ptr, C_ptr, seq_ptr, states_ptr, dfinal_ptr,
                      dstates_ptr, ddecay_ptr, dinit_ptr,
                      l, h, g, P, N, num_chunks,
                      Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      HAS_SEQ: tl.constexpr, PREC: tl.constexpr):
    """Grid (b*h, cdiv(N, BN), cdiv(P, BP)): walk the chunks in reverse carrying dL/dS.

    Writes dL/d(state leaving chunk c) for every c, this tile's share of dL/d(chunk decay)
    (summed over tiles on the host), and dL/d initial_states.
    """
    i_bh, i_n, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // h, i_bh % h
    i_g = i_h // (h // g)
    A_h = tl.load(A_ptr + i_h).to(tl.float32)
    offs0, mask0 = _state_offsets(i_bh, 0, 1, P, N, BP, BN, i_p * BP, i_n * BN)
    dstate = tl.load(dfinal_ptr + offs0, mask=mask0, other=0.0).to(tl.float32)
    num_tiles = tl.num_programs(1) * tl.num_programs(2)
    i_tile = i_p * tl.num_programs(1) + i_n
    for i in range(num_chunks):
        c = num_chunks - 1 - i
        offs, mask = _state_offsets(i_bh, c, num_chunks, P, N, BP, BN, i_p * BP, i_n * BN)
        tl.store(dstates_ptr + offs, dstate, mask=mask)
        dt, cum, cum_end, chunk_decay, from_prev, at_end, seg = _chunk_decay(
            dt_ptr, seq_ptr, A_h, i_b, i_h, c, l, h, Q, HAS_SEQ)
        entering = tl.load(states_ptr + offs, mask=mask, other=0.0)
        tl.store(ddecay_ptr + (i_bh * num_chunks + c) * num_tiles + i_tile, tl.sum(tl.sum(dstate * entering, 1), 0))
        dy = _load_tile(dy_ptr, i_b, i_h, c, l, h, P, Q, BP, i_p * BP)
        C = _load_tile(C_ptr, i_b, i_g, c, l, g, N, Q, BN, i_n * BN)
        from_start = tl.exp(cum) * from_prev
        dstate = chunk_decay * dstate + tl.dot(tl.trans(dy * from_start[:, None]), C, input_precision=PREC)
    tl.store(dinit_ptr + offs0, dstate, mask=mask0)


@triton.jit
def _bwd_chunk_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, seq_ptr, states_ptr, dstates_ptr, ddecay_ptr, dy_ptr,
                      dx_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr,
                      l, h, g, P, N, num_chunks,
                      Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      HAS_SEQ: tl.constexpr, PREC: tl.constexpr):
    """Grid (b*h, num_chunks): all gradients of one chunk but dL/dS. dB, dC are per head (b, l, h, n);
    the host sums the heads of a group. dA is per (b*h, chunk), summed on the host."""
    i_bh, c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // h, i_bh % h
    i_g = i_h // (h // g)
    A_h = tl.load(A_ptr + i_h).to(tl.float32)
    dt, cum, cum_end, chunk_decay, from_prev, at_end, seg = _chunk_decay(
        dt_ptr, seq_ptr, A_h, i_b, i_h, c, l, h, Q, HAS_SEQ)
    x = _load_tile(x_ptr, i_b, i_h, c, l, h, P, Q, BP, 0)
    dy = _load_tile(dy_ptr, i_b, i_h, c, l, h, P, Q, BP, 0)
    B = _load_tile(B_ptr, i_b, i_g, c, l, g, N, Q, BN, 0)
    C = _load_tile(C_ptr, i_b, i_g, c, l, g, N, Q, BN, 0)
    offs, mask = _state_offsets(i_bh, c, num_chunks, P, N, BP, BN, 0, 0)
    entering = tl.load(states_ptr + offs, mask=mask, other=0.0)
    dleaving = tl.load(dstates_ptr + offs, mask=mask, other=0.0)

    # Intra-chunk: y = M x with M = (C B^T) * decay * dt_s, lower triangular.
    offs_q = tl.arange(0, Q)
    keep = offs_q[:, None] >= offs_q[None, :]
    if HAS_SEQ:
        keep = keep & (seg[:, None] == seg[None, :])
    decay = tl.exp(tl.where(keep, cum[:, None] - cum[None, :], float("-inf")))
    CB_decay = tl.dot(C, tl.trans(B), input_precision=PREC) * decay
    M = CB_decay * dt[None, :]
    dM = tl.dot(dy, tl.trans(x), input_precision=PREC)
    dx = tl.dot(tl.trans(M), dy, input_precision=PREC)
    dCB = dM * decay * dt[None, :]
    dC = tl.dot(dCB, B, input_precision=PREC)
    dB = tl.dot(tl.trans(dCB), C, input_precision=PREC)
    ddt = tl.sum(dM * CB_decay, 0)
    # decay_ts = exp(cum_t - cum_s): its log moves cum_t up and cum_s down.
    dM_M = dM * M
    dcum = tl.sum(dM_M, 1) - tl.sum(dM_M, 0)

    # The entering state's share: y_t += exp(cum_t) C_t . S.
    from_start = tl.exp(cum) * from_prev
    dC += tl.dot(dy, entering, input_precision=PREC) * from_start[:, None]
    dcum += tl.sum(dy * tl.dot(C, tl.trans(entering), input_precision=PREC), 1) * from_start

    # The chunk's own input to the leaving state: S' += sum_s w_s x_s B_s^T, w_s = exp(cum_end - cum_s) dt_s.
    to_end = tl.exp(cum_end - cum) * at_end
    w = to_end * dt
    B_dS = tl.dot(B, tl.trans(dleaving), input_precision=PREC)            # (Q, BP)
    dx += B_dS * w[:, None]
    dB += tl.dot(x, dleaving, input_precision=PREC) * w[:, None]
    dw = tl.sum(x * B_dS, 1)
    ddt += dw * to_end
    dcum -= dw * w
    # cum_end feeds w (above) and the chunk decay exp(cum_end) (its gradient came from _bwd_state_kernel).
    dcum_end = tl.sum(dw * w, 0) + tl.load(ddecay_ptr + i_bh * num_chunks + c) * chunk_decay
    dcum += tl.where(offs_q == Q - 1, dcum_end, 0.0)

    # cum = cumsum(A dt): a reverse cumulative sum turns dL/dcum into dL/d(A dt).
    da = tl.sum(dcum, 0) - tl.cumsum(dcum, 0) + dcum
    ddt += da * A_h
    tl.store(dA_ptr + i_bh * num_chunks + c, tl.sum(da * dt, 0))

    t = c * Q + offs_q
    row_ok = t < l
    cols_p = tl.arange(0, BP)
    cols_n = tl.arange(0, BN)
    tl.store(dx_ptr + ((i_b * l + t[:, None]) * h + i_h) * P + cols_p[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols_p[None, :] < P))
    tl.store(ddt_ptr + (i_b * l + t) * h + i_h, ddt, mask=row_ok)
    offs_n = ((i_b * l + t[:, None]) * h + i_h) * N + cols_n[None, :]
    mask_n = row_ok[:, None] & (cols_n[None, :] < N)
    tl.store(dB_ptr + offs_n, dB, mask=mask_n)
    tl.store(dC_ptr + offs_n, dC, mask=mask_n)


@dataclasses.dataclass(frozen=True)
class Launch:
    """How the kernels cut the problem. Every Launch gives the same result up to rounding."""
    Q: int            # tokens per chunk: a power of two, at least 16
    BP: int           # p and n padded to powers of two (>= 16): the per-chunk kernels hold whole rows
    BN: int
    BP_state: int     # the sequential state walks split the (p, n) state into tiles of this size:
    BN_state: int     # more programs in flight, smaller tiles in registers
    warps: int        # per-chunk kernels
    state_warps: int  # state walks
    prec: str         # tl.dot input precision: "ieee" or "tf32"


def default_launch(x, n, chunk_size) -> Launch:
    p = x.shape[-1]
    BP, BN = max(16, triton.next_power_of_2(p)), max(16, triton.next_power_of_2(n))
    tf32 = x.dtype != torch.float32
    # With tf32 dots (16-bit inputs) the backward chunk kernel stages its operands in shared memory:
    # at Q 64, p 64, n 128 it asked 262 KB on an H100, which has 227 KB. Q 32 halves the Q-sized tiles.
    max_chunk = 32 if tf32 and BP * BN >= 64 * 128 else MAX_CHUNK
    return Launch(
        # Largest power of two <= min(chunk_size, max_chunk), at least 16 (tl.dot's smallest tile on a GPU).
        Q=max(16, min(max_chunk, 1 << (chunk_size.bit_length() - 1))), BP=BP, BN=BN,
        BP_state=BP, BN_state=min(BN, 64),
        # More warps for the (Q, p) x (Q, n) tiles of real models, so they fit in registers.
        warps=8 if BP * BN >= 64 * 128 else 4, state_warps=4,
        # fp32 inputs get exact fp32 dots; 16-bit inputs lose nothing measurable to tf32.
        prec="tf32" if tf32 else "ieee")


def _state_grid(b, h, p, n, launch):
    return b * h, triton.cdiv(n, launch.BN_state), triton.cdiv(p, launch.BP_state)


def _fwd(x, dt, A, B, C, initial_states, seq_idx, launch):
    """x (b, l, h, p), dt (b, l, h) fp32 processed, A (h,) fp32, B, C (b, l, g, n) ->
    y (b, l, h, p) in x.dtype, final (b, h, p, n) fp32, states (b, h, chunks, p, n) fp32 (entering each chunk)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    num_chunks = triton.cdiv(l, launch.Q)
    states = torch.empty(b, h, num_chunks, p, n, device=x.device, dtype=torch.float32)
    final = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    y = torch.empty_like(x)
    seq = seq_idx if seq_idx is not None else dt  # any pointer; unused when HAS_SEQ is False
    init = initial_states if initial_states is not None else final
    _fwd_state_kernel[_state_grid(b, h, p, n, launch)](
        x, dt, A, B, seq, init, states, final, l, h, g, p, n, num_chunks,
        Q=launch.Q, BP=launch.BP_state, BN=launch.BN_state, HAS_INIT=initial_states is not None,
        HAS_SEQ=seq_idx is not None, PREC=launch.prec, num_warps=launch.state_warps)
    _fwd_output_kernel[(b * h, num_chunks)](
        x, dt, A, B, C, seq, states, y, l, h, g, p, n, num_chunks,
        Q=launch.Q, BP=launch.BP, BN=launch.BN, HAS_SEQ=seq_idx is not None, PREC=launch.prec, num_warps=launch.warps)
    return y, final, states


def _bwd(x, dt, A, B, C, seq_idx, states, dy, dfinal, launch):
    """Gradients of _fwd: (dx, ddt fp32, dA fp32, dB, dC, dinitial_states fp32)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    num_chunks = states.shape[2]
    grid = _state_grid(b, h, p, n, launch)
    seq = seq_idx if seq_idx is not None else dt
    f32 = dict(device=x.device, dtype=torch.float32)
    dstates = torch.empty(b, h, num_chunks, p, n, **f32)
    ddecay = torch.empty(b * h, num_chunks, grid[1] * grid[2], **f32)
    dinit = torch.empty(b, h, p, n, **f32)
    _bwd_state_kernel[grid](
        dy, dt, A, C, seq, states, dfinal, dstates, ddecay, dinit, l, h, g, p, n, num_chunks,
        Q=launch.Q, BP=launch.BP_state, BN=launch.BN_state, HAS_SEQ=seq_idx is not None, PREC=launch.prec,
        num_warps=launch.state_warps)
    ddecay = ddecay.sum(-1).contiguous()
    dx = torch.empty_like(x)
    ddt = torch.empty(b, l, h, **f32)
    dA = torch.empty(b * h, num_chunks, **f32)
    dB = torch.empty(b, l, h, n, **f32)
    dC = torch.empty(b, l, h, n, **f32)
    _bwd_chunk_kernel[(b * h, num_chunks)](
        x, dt, A, B, C, seq, states, dstates, ddecay, dy, dx, ddt, dA, dB, dC, l, h, g, p, n, num_chunks,
        Q=launch.Q, BP=launch.BP, BN=launch.BN, HAS_SEQ=seq_idx is not None, PREC=launch.prec, num_warps=launch.warps)
    # Heads of one group read the same B and C: their gradients add up.
    dB = dB.view(b, l, g, h // g, n).sum(3).to(B.dtype)
    dC = dC.view(b, l, g, h // g, n).sum(3).to(C.dtype)
    dA = dA.view(b, h, num_chunks).sum((0, 2))
    return dx, ddt, dA, dB, dC, dinit


class SSDChunkScan(torch.autograd.Function):
    """(x, dt, A, B, C, initial_states, seq_idx, launch) -> (scan output y, final_states); dt processed, fp32."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, initial_states, seq_idx, launch):
        y, final, states = _fwd(x, dt, A, B, C, initial_states, seq_idx, launch)
        ctx.save_for_backward(x, dt, A, B, C, seq_idx, states)
        ctx.launch = launch
        ctx.init_dtype = None if initial_states is None else initial_states.dtype
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, seq_idx, states = ctx.saved_tensors
        if dfinal is None:
            dfinal = torch.zeros(states.shape[0], states.shape[1], *states.shape[3:], device=x.device)
        dx, ddt, dA, dB, dC, dinit = _bwd(x, dt, A, B, C, seq_idx, states, dy.contiguous(),
                                          dfinal.float().contiguous(), ctx.launch)
        dinit = None if ctx.init_dtype is None else dinit.to(ctx.init_dtype)
        return dx, ddt, dA.to(A.dtype), dB, dC, dinit, None, None


def ssd_scan_triton(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                    seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False,
                    launch=None):
    """Chunked SSD scan in Triton; signature and semantics of `kernels.ssd.ssd_scan`.
    `launch` (a Launch) overrides `default_launch`: the benchmark's launch sweep uses it.

    x (b, l, h, p) fp32/fp16/bf16, dt (b, l, h), A (h,), B and C (b, l, g, n), D (h,) or (h, p),
    z (b, l, h, p), dt_bias (h,), initial_states (b, h, p, n), seq_idx (b, l) int.
    Returns y (b, l, h, p) in x.dtype [, final_states (b, h, p, n) fp32].
    """
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"kernels.ssd triton backend: x.dtype = {x.dtype}, expected float32, float16 or bfloat16 "
                         "(use backend='torch' or 'naive' for float64)")
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit, torch.float32).contiguous()
    init = None if initial_states is None else initial_states.contiguous()
    seq = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
    y, final = SSDChunkScan.apply(x.contiguous(), dt, A.float().contiguous(), B.contiguous(), C.contiguous(),
                                  init, seq, launch or default_launch(x, B.shape[-1], chunk_size))
    # D and z in fp32: a bf16 epilogue would round the scan output twice.
    y = gate_output(y.float(), x.float(), D, z).to(x.dtype)
    return (y, final) if return_final_states else y
