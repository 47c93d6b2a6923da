"""Chunked SSD in Triton: eight kernels (or nine, with a launch option) under one autograd.Function and two under
another, in mamba_ssm's chunk layout.

Per (batch, head) the sequence is cut into chunks of T tokens (T = chunk_size rounded down to a
power of two, 16..256), and a chunk is worked on in tiles of Q tokens (Q <= 64, so that a (Q, Q)
tile stays in registers). With dt already processed and cum_t = sum_{s <= t in its chunk} A dt_s:

    y_t     = win_t C_t . S_c  +  sum_{s <= t in the chunk} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s
    S_c+1   = decay_c S_c    +  sum_{s in the chunk} wout_s x_s B_s^T

S_c is the (p, n) state entering chunk c; win_t = exp(cum_t) weighs it at token t, wout_s =
exp(cum_end - cum_s) dt_s carries token s to the chunk's end, decay_c = exp(cum_end). seq_idx
zeroes win, wout and decay across sequence boundaries and masks the in-chunk sum (the state entering
a chunk belongs to the sequence alive at the previous chunk's last token; for chunk 0, to the
sequence at token 0, where initial_states belongs).

These per-token weights come from the raw dt (with dt_bias, softplus and dt_limit, as mamba_ssm's
_chunk_cumsum does) in one kernel under their own Function (`TokenWeights`); the chunk kernels return
gradients for win, wout, decay, cum and dt, and one more kernel takes those back to dt, A and dt_bias.
C_t . B_s is the same for every head of a group (for all heads when g = 1), so it is computed once per
group and chunk (`_cb_products`) and the kernels read its tiles instead of recomputing it per head.

    forward:  _token_weights_fwd  dt, cum, win, wout and decay from the raw dt    (parallel over chunks)
              _cb_products        C_t . B_s per group, the tiles on and below the diagonal
              _chunk_state        each chunk's own contribution to the state       (parallel over chunks)
              _state_scan         S_c for every chunk: the only sequential part     (elementwise)
              _chunk_output       y + D x, one Q-row tile at a time                 (parallel over tiles)
    backward: _chunk_state        dL/dS_c from chunk c's own outputs (u = dy, v = C, weights win)
              _state_scan         in reverse: dL/d(state leaving chunk c), and dL/d decay_c
              _chunk_grad_cols    dx (D dy included), dD, dL/dwout, dL/ddt and cum's column terms, per head
                                  and Q-column tile
              _chunk_grad_CB      the gradient of C_t . B_s summed over a block of a group's heads, and cum's
                                  row terms, per (Q-row, Q-column) tile pair
              _chunk_grad_C       dC and dL/dwin, per block of a group's heads and Q-row tile
              _chunk_grad_B       dB, per block of a group's heads and Q-column tile
              _token_weights_bwd  the weights' gradients taken back to the raw dt, A and dt_bias
    both ways, with Launch.one_pass_states (not the default until a GPU has timed it), _state_pass in place of
    _chunk_state and _state_scan: one sequential pass per state tile that keeps no chunk's own state in memory

_chunk_grad_CB, _C and _B take a block of heads of one group per program and sum over them in registers
(per-head fp32 copies of dC and dB would be h / g times the size of B). The tile kernels' grids put the
tiles of one chunk next to each other, so that the state and inputs they share come from L2.
States are kept once per chunk, in fp32 (or 16 bits: `Launch.states_16bit`), and so is C_t . B_s
(`Launch.cb_16bit`); loads are cast to fp32, products take fp32 operands (tf32 or exact) or 16-bit ones
(`Launch.prec`), and every accumulation is fp32.
Triton's software pipelining issues a loop's next loads early only where they feed a product's operands (or, when
asked, in a loop without products: _state_scan's); the per-token weights that scale a product's result are loaded
a head ahead by hand (`_next_head`), or all of a block's heads before the loop (_chunk_grad_CB). Whether a loop
still waits for a load shows only in the machine code, where ptxas can copy the registers a loop carries at its
end, waiting there for the load: at the default launch on 16-bit inputs no loop waits (`make bench-compile`).
The first version kept a state every Q tokens and, measured on an H100, spent the forward writing
and reading them (kernels/JOURNAL.md).
"""
import dataclasses

import torch
import triton
import triton.language as tl

from kernels.ssd.naive import gate_output

MAX_CHUNK = 256  # T: longer chunks keep fewer states but do more quadratic in-chunk work
MAX_TILE = 64    # Q


@triton.jit
def _load_rows(ptr, i_b, i_head, t0, l, heads, width, Q: tl.constexpr, BW: tl.constexpr, col0,
               TRANSPOSED: tl.constexpr = False):
    """Rows t0..t0+Q of a (b, l, heads, width) tensor at one head, columns col0..col0+BW: (Q, BW) fp32, or (BW, Q)
    if TRANSPOSED. Loaded transposed, a product's operand is copied to shared memory ahead of its iteration as any
    other; tl.trans of a tile loaded (Q, BW) went through registers, waited for (make bench-compile)."""
    t = t0 + tl.arange(0, Q)
    cols = col0 + tl.arange(0, BW)
    if TRANSPOSED:
        t, cols = t[None, :], cols[:, None]
    else:
        t, cols = t[:, None], cols[None, :]
    offs = ((i_b * l + t) * heads + i_head) * width + cols
    return tl.load(ptr + offs, mask=(t < l) & (cols < width), other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, value, i_b, i_head, t0, l, heads, width, Q: tl.constexpr, BW: tl.constexpr, col0=0):
    t = t0 + tl.arange(0, Q)
    cols = col0 + tl.arange(0, BW)
    offs = ((i_b * l + t[:, None]) * heads + i_head) * width + cols[None, :]
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=(t[:, None] < l) & (cols[None, :] < width))


@triton.jit
def _state_tile(i_bh, c, num_chunks, P, N, BP: tl.constexpr, BN: tl.constexpr, col0):
    """Offsets and mask of the (BP, BN) tile at column col0 of chunk c in a (b*h, num_chunks, P, N) buffer."""
    rows = tl.arange(0, BP)
    cols = col0 + tl.arange(0, BN)
    return ((i_bh * num_chunks + c) * P + rows[:, None]) * N + cols[None, :], (rows[:, None] < P) & (cols[None, :] < N)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a @ b accumulated in fp32. PREC "ieee" or "tf32": fp32 operands at that precision; "bf16" or "fp16":
    the operands rounded to that type first (the tensor cores' fastest path, and mamba_ssm's choice)."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PREC == "fp16":
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _head(i_bh, h, g, Lp):
    """Program index over b*h -> batch, head, its group, and the offsets of its per-token and seq_idx rows."""
    i_b, i_h = i_bh // h, i_bh % h
    return i_b, i_h, i_h // (h // g), i_bh * Lp, i_b * Lp


@triton.jit
def _cb_tile(cb_ptr, i_bg, c, m, k, num_chunks, T: tl.constexpr, Q: tl.constexpr):
    """The (Q, Q) tile of C_t . B_s for rows m*Q.., columns k*Q.. of chunk c (b*g, chunks, T, T), in the buffer's
    dtype (fp32, or 16 bits with Launch.cb_16bit: the fp32 factors it meets promote it)."""
    rows = m * Q + tl.arange(0, Q)
    cols = k * Q + tl.arange(0, Q)
    return tl.load(cb_ptr + ((i_bg * num_chunks + c) * T + rows[:, None]) * T + cols[None, :])


@triton.jit
def _D_row(D_ptr, i_h, P, BP: tl.constexpr):
    cols = tl.arange(0, BP)
    return tl.load(D_ptr + i_h * P + cols, mask=cols < P, other=0.0)


@triton.jit
def _seq_ids(seq_ptr, seq_row, t, HAS_SEQ: tl.constexpr):
    """seq_idx at tokens t, for _in_chunk_keep (t itself without seq_idx: unread there)."""
    if HAS_SEQ:
        return tl.load(seq_ptr + seq_row + t)
    else:
        return t


@triton.jit
def _in_chunk_keep(t, s, seq_t, seq_s, HAS_SEQ: tl.constexpr):
    """(len t, len s) tile of whether s <= t in the same sequence (seq_t, seq_s from _seq_ids): where token s's
    input reaches token t."""
    keep = t[:, None] >= s[None, :]
    if HAS_SEQ:
        keep = keep & (seq_t[:, None] == seq_s[None, :])
    return keep


@triton.jit
def _in_chunk_decay(cum_t, cum_s, keep):
    """(len t, len s) tile of exp(cum_t - cum_s) where keep, else 0."""
    # -inf before exp: where s > t the exponent is positive and could overflow.
    return tl.exp(tl.where(keep, cum_t[:, None] - cum_s[None, :], float("-inf")))


@triton.jit
def _dt_chunk(dt_ptr, bias_ptr, A_ptr, seq_ptr, i_b, i_h, c, l, h, Lp, lo, hi, T: tl.constexpr,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """Chunk c of one (batch, head) from the raw dt (b, l, h): dt processed as process_dt does it (zero past l),
    cum, the 0/1 gates seq_idx puts on win, wout and decay, and, for the backward, dt before softplus (u) and
    before the clamp (pre)."""
    t = c * T + tl.arange(0, T)
    valid = t < l
    u = tl.load(dt_ptr + (i_b * l + t) * h + i_h, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(bias_ptr + i_h)
    pre = u
    if SOFTPLUS:  # torch's softplus: the identity above 20
        pre = tl.where(u <= 20.0, tl.log(1.0 + tl.exp(u)), u)
    dt = pre
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, lo), hi)
    dt = tl.where(valid, dt, 0.0)  # padding to whole chunks: dt = 0, no decay, no input
    cum = tl.cumsum(tl.load(A_ptr + i_h) * dt, 0)
    cum_end = tl.sum(tl.where(tl.arange(0, T) == T - 1, cum, 0.0), 0)
    gate_in, gate_out, gate_decay = 1.0, 1.0, 1.0
    if HAS_SEQ:  # seq is padded to Lp with its last value
        seq_t = tl.load(seq_ptr + i_b * Lp + t)
        before = tl.load(seq_ptr + i_b * Lp + tl.maximum(c * T - 1, 0))  # alive before the chunk
        end = tl.load(seq_ptr + i_b * Lp + c * T + T - 1)
        gate_in, gate_out = (seq_t == before).to(tl.float32), (seq_t == end).to(tl.float32)
        gate_decay = (end == before).to(tl.float32)
    return t, valid, dt, cum, cum_end, gate_in, gate_out, gate_decay, u, pre


@triton.jit
def _token_weights_fwd(dt_ptr, bias_ptr, A_ptr, seq_ptr, dt_out_ptr, cum_ptr, win_ptr, wout_ptr, decay_ptr,
                       l, h, Lp, num_chunks, lo, hi, T: tl.constexpr, HAS_BIAS: tl.constexpr,
                       SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """Grid (b*h, chunks): one chunk's per-token weights."""
    i_bh, c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // h, i_bh % h
    t, valid, dt, cum, cum_end, gate_in, gate_out, gate_decay, u, pre = _dt_chunk(
        dt_ptr, bias_ptr, A_ptr, seq_ptr, i_b, i_h, c, l, h, Lp, lo, hi, T, HAS_BIAS, SOFTPLUS, HAS_LIMIT, HAS_SEQ)
    row = i_bh * Lp + t
    tl.store(dt_out_ptr + row, dt)
    tl.store(cum_ptr + row, cum)
    tl.store(win_ptr + row, tl.exp(cum) * gate_in)
    tl.store(wout_ptr + row, tl.exp(cum_end - cum) * dt * gate_out)
    tl.store(decay_ptr + i_bh * num_chunks + c, tl.exp(cum_end) * gate_decay)


@triton.jit
def _token_weights_bwd(dt_ptr, bias_ptr, A_ptr, seq_ptr, ddt_out_ptr, dcum_ptr, dwin_ptr, dwout_ptr, ddecay_ptr,
                       ddt_ptr, dA_ptr, dbias_ptr, l, h, Lp, num_chunks, lo, hi, T: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
                       HAS_SEQ: tl.constexpr):
    """Grid (b*h, chunks): the weights recomputed from the raw dt, their gradients taken back to the raw dt,
    and this chunk's shares of dA and d dt_bias (summed on the host: no atomics)."""
    i_bh, c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // h, i_bh % h
    t, valid, dt, cum, cum_end, gate_in, gate_out, gate_decay, u, pre = _dt_chunk(
        dt_ptr, bias_ptr, A_ptr, seq_ptr, i_b, i_h, c, l, h, Lp, lo, hi, T, HAS_BIAS, SOFTPLUS, HAS_LIMIT, HAS_SEQ)
    row = i_bh * Lp + t
    to_end = tl.exp(cum_end - cum) * gate_out        # wout = to_end dt
    dwout_wout = tl.load(dwout_ptr + row) * to_end * dt
    dcum = tl.load(dcum_ptr + row) + tl.load(dwin_ptr + row) * tl.exp(cum) * gate_in - dwout_wout
    dcum_end = tl.sum(dwout_wout, 0) + tl.load(ddecay_ptr + i_bh * num_chunks + c) * tl.exp(cum_end) * gate_decay
    dcum += tl.where(tl.arange(0, T) == T - 1, dcum_end, 0.0)
    # cum_t = sum_{s <= t} A dt_s, so d(A dt_s) = sum_{t >= s} dcum_t.
    dAdt = tl.sum(dcum, 0) - tl.cumsum(dcum, 0) + dcum
    A = tl.load(A_ptr + i_h)
    ddt = tl.load(ddt_out_ptr + row) + tl.load(dwout_ptr + row) * to_end + A * dAdt
    tl.store(dA_ptr + i_bh * num_chunks + c, tl.sum(dt * dAdt, 0))
    if HAS_LIMIT:  # torch.clamp passes the gradient where lo <= value <= hi
        ddt = tl.where((pre >= lo) & (pre <= hi), ddt, 0.0)
    if SOFTPLUS:
        e = tl.exp(tl.minimum(u, 20.0))
        ddt = tl.where(u <= 20.0, ddt * e / (e + 1.0), ddt)
    ddt = tl.where(valid, ddt, 0.0)
    tl.store(ddt_ptr + (i_b * l + t) * h + i_h, ddt.to(ddt_ptr.dtype.element_ty), mask=valid)
    if HAS_BIAS:
        tl.store(dbias_ptr + i_bh * num_chunks + c, tl.sum(ddt, 0))


@triton.jit
def _cb_products(B_ptr, C_ptr, CB_ptr, l, g, N, num_chunks,
                 T: tl.constexpr, Q: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """Grid (T // Q, T // Q, b*g*chunks): tile (m, k) of C_t . B_s in chunk c, summed in fp32 and stored in CB's
    dtype (b*g, chunks, T, T), for k <= m only. No kernel reads a tile above the diagonal at this Q or a smaller
    one, so those stay unwritten."""
    m, k, i_bgc = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    if k <= m:
        i_bg, c = i_bgc // num_chunks, i_bgc % num_chunks
        i_b, i_g = i_bg // g, i_bg % g
        C_m = _load_rows(C_ptr, i_b, i_g, c * T + m * Q, l, g, N, Q, BN, 0)
        B_k = _load_rows(B_ptr, i_b, i_g, c * T + k * Q, l, g, N, Q, BN, 0)
        rows, cols = m * Q + tl.arange(0, Q), k * Q + tl.arange(0, Q)
        tl.store(CB_ptr + (i_bgc * T + rows[:, None]) * T + cols[None, :],
                 _dot(C_m, tl.trans(B_k), PREC).to(CB_ptr.dtype.element_ty))


@triton.jit
def _chunk_state(u_ptr, v_ptr, wt_ptr, out_ptr, l, Lp, h, g, P, N, num_chunks,
                 T: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """Grid (b*h, chunks, cdiv(N, BN)): out[c] = sum_{t in chunk c} wt_t u_t v_t^T, u (b, l, h, P) by head,
    v (b, l, g, N) by group, wt (b*h, Lp). Forward: (x, B, wout); backward: (dy, C, win)."""
    i_bh, c, i_n = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_b, i_h, i_g, tok, _ = _head(i_bh, h, g, Lp)
    acc = tl.zeros((BP, BN), tl.float32)
    for k in range(T // Q):
        t0 = c * T + k * Q
        u = _load_rows(u_ptr, i_b, i_h, t0, l, h, P, Q, BP, 0)
        v = _load_rows(v_ptr, i_b, i_g, t0, l, g, N, Q, BN, i_n * BN)
        wt = tl.load(wt_ptr + tok + t0 + tl.arange(0, Q))
        # Which operand the weights scale decides how ptxas compiles the loop (make bench-compile): on 16-bit
        # operands, scaling u left its tile waited for in each iteration (Triton 3.7), scaling v waits for none; on
        # fp32 ones (FMA units), scaling v spilled 400 bytes a thread.
        if PREC == "bf16" or PREC == "fp16":
            acc += _dot(tl.trans(u), v * wt[:, None], PREC)
        else:
            acc += _dot(tl.trans(u * wt[:, None]), v, PREC)
    offs, mask = _state_tile(i_bh, c, num_chunks, P, N, BP, BN, i_n * BN)
    tl.store(out_ptr + offs, acc, mask=mask)


@triton.jit
def _state_scan(own_ptr, decay_ptr, init_ptr, out_ptr, final_ptr, with_ptr, dot_ptr, num_chunks, PN,
                BLOCK: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DOT: tl.constexpr,
                STAGES: tl.constexpr):
    """Grid (b*h, cdiv(PN, BLOCK)): carry = init; for each chunk c (last to first if REVERSE):
    out[c] = carry, carry = decay[c] * carry + own[c]; final = carry. out may be own (read first).
    Forward: own = each chunk's contribution, out = the state entering each chunk. Backward: own =
    dL/dS_c from chunk c's outputs, out = dL/d(state leaving chunk c), final = dL/d initial_states, and
    (HAS_DOT) this block's share of dL/d decay_c = <out[c], S_c>, S = with (b*h, chunks, PN), to
    dot (b*h, chunks, blocks): the host sums the blocks.
    The loop's loads feed no product, so Triton pipelines them only when asked: STAGES (Launch.scan_stages) issues
    the next STAGES - 1 chunks' loads as async copies into shared memory. Loaded a chunk ahead by hand into
    registers instead, they were waited for all the same: ptxas copied the carried registers at the loop's end,
    while the load was in flight (make bench-compile reads that from the machine code)."""
    i_bh = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    if HAS_INIT:
        carry = tl.load(init_ptr + i_bh * PN + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK,), tl.float32)
    for i in tl.range(num_chunks, num_stages=STAGES):
        if REVERSE:
            here = i_bh * num_chunks + num_chunks - 1 - i
        else:
            here = i_bh * num_chunks + i
        own = tl.load(own_ptr + here * PN + offs, mask=mask, other=0.0)
        tl.store(out_ptr + here * PN + offs, carry.to(out_ptr.dtype.element_ty), mask=mask)
        if HAS_DOT:
            S = tl.load(with_ptr + here * PN + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(dot_ptr + here * tl.num_programs(1) + tl.program_id(1), tl.sum(carry * S, 0))
        carry = tl.load(decay_ptr + here) * carry + own
    tl.store(final_ptr + i_bh * PN + offs, carry, mask=mask)


@triton.jit
def _state_pass_chunk(j, num_chunks, T: tl.constexpr, Q: tl.constexpr, REVERSE: tl.constexpr):
    """_state_pass's iteration j -> the chunk it works in, and whether j is that chunk's first tile."""
    c = j // (T // Q)
    if REVERSE:
        c = num_chunks - 1 - c
    return c, j % (T // Q) == 0


@triton.jit
def _state_pass(u_ptr, v_ptr, wt_ptr, decay_ptr, init_ptr, out_ptr, final_ptr, with_ptr, dot_ptr,
                l, Lp, h, g, P, N, num_chunks,
                T: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
                REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DOT: tl.constexpr):
    """_chunk_state and _state_scan in one kernel (Launch.one_pass_states), grid (b*h, cdiv(N, BN)): the program
    carries its (P, BN) tile of the state across the chunks (last to first if REVERSE) in registers, so no chunk's
    own contribution goes through memory (fla's chunk_fwd_h works this way). One flat loop over every Q-token
    tile of every chunk, so that software pipelining issues the next tiles' loads while this one's carry is
    being summed. At a chunk's first tile: out[c] = carry (with HAS_DOT, this tile's share of <out[c], with[c]>
    to dot (b*h, chunks, cdiv(N, BN))), then carry *= decay[c]; every tile adds sum_t wt_t u_t v_t^T.
    final = carry. Same arguments and results as the two kernels.
    Compiled for sm_90, Triton pipelines the u, v and wt loads (cp.async) but not the decay's, which does not feed
    the product: it is loaded an iteration ahead by hand. HAS_DOT's tile of `with` is not: held across an
    iteration it cost 5-61 registers a thread, and with 16-bit states 12 resident warps became 8 (make
    bench-compile). So the backward waits for that load once a chunk."""
    i_bh, i_n = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h, i_g, tok, _ = _head(i_bh, h, g, Lp)
    ends, mask = _state_tile(i_bh, 0, 1, P, N, BP, BN, i_n * BN)  # init and final: (b*h, P, N)
    if HAS_INIT:
        carry = tl.load(init_ptr + ends, mask=mask, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BP, BN), tl.float32)
    steps = num_chunks * (T // Q)
    decay = tl.load(decay_ptr + i_bh * num_chunks + _state_pass_chunk(0, num_chunks, T, Q, REVERSE)[0])
    for j in tl.range(steps):
        c, first = _state_pass_chunk(j, num_chunks, T, Q, REVERSE)  # masks, not a branch: one pipelined loop
        here = _state_tile(i_bh, c, num_chunks, P, N, BP, BN, i_n * BN)[0]
        tl.store(out_ptr + here, carry.to(out_ptr.dtype.element_ty), mask=mask & first)
        if HAS_DOT:
            S = tl.load(with_ptr + here, mask=mask & first, other=0.0).to(tl.float32)
            tl.store(dot_ptr + (i_bh * num_chunks + c) * tl.num_programs(1) + i_n, tl.sum(tl.sum(carry * S, 1), 0),
                     mask=first)
        t0 = c * T + (j % (T // Q)) * Q
        u = _load_rows(u_ptr, i_b, i_h, t0, l, h, P, Q, BP, 0)
        v = _load_rows(v_ptr, i_b, i_g, t0, l, g, N, Q, BN, i_n * BN)
        wt = tl.load(wt_ptr + tok + t0 + tl.arange(0, Q))
        scale = tl.where(first, decay, 1.0)
        next_chunk = _state_pass_chunk(tl.minimum(j + 1, steps - 1), num_chunks, T, Q, REVERSE)[0]
        decay = tl.load(decay_ptr + i_bh * num_chunks + next_chunk)
        carry = scale * carry + _dot(tl.trans(u * wt[:, None]), v, PREC)
    tl.store(final_ptr + ends, carry, mask=mask)


@triton.jit
def _chunk_output(x_ptr, CB_ptr, C_ptr, dt_ptr, cum_ptr, win_ptr, states_ptr, seq_ptr, D_ptr, y_ptr,
                  l, Lp, h, g, P, N, num_chunks,
                  T: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                  HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, PREC: tl.constexpr):
    """Grid (T // Q, b*h, chunks): rows m*Q.. of chunk c of y, the scan plus D x (D (h, P) fp32), before z.
    The tiles of one chunk run next to each other, so the state and x tiles they share are read from L2."""
    m, i_bh, c = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_b, i_h, i_g, tok, seq_row = _head(i_bh, h, g, Lp)
    t_m = c * T + m * Q + tl.arange(0, Q)
    C_m = _load_rows(C_ptr, i_b, i_g, c * T + m * Q, l, g, N, Q, BN, 0)
    cum_m, seq_m = tl.load(cum_ptr + tok + t_m), _seq_ids(seq_ptr, seq_row, t_m, HAS_SEQ)
    offs, mask = _state_tile(i_bh, c, num_chunks, P, N, BP, BN, 0)
    S = tl.load(states_ptr + offs, mask=mask, other=0.0)
    y = _dot(C_m, tl.trans(S), PREC) * tl.load(win_ptr + tok + t_m)[:, None]
    for k in range(0, m + 1):
        t_k = c * T + k * Q + tl.arange(0, Q)
        x_k = _load_rows(x_ptr, i_b, i_h, c * T + k * Q, l, h, P, Q, BP, 0)
        keep = _in_chunk_keep(t_m, t_k, seq_m, _seq_ids(seq_ptr, seq_row, t_k, HAS_SEQ), HAS_SEQ)
        decay = _in_chunk_decay(cum_m, tl.load(cum_ptr + tok + t_k), keep)
        M = _cb_tile(CB_ptr, i_b * g + i_g, c, m, k, num_chunks, T, Q) * decay * tl.load(dt_ptr + tok + t_k)[None, :]
        y += _dot(M, x_k, PREC)
    if HAS_D:  # here, not as a torch epilogue: that would read and write y twice more
        y += _load_rows(x_ptr, i_b, i_h, c * T + m * Q, l, h, P, Q, BP, 0) * _D_row(D_ptr, i_h, P, BP)[None, :]
    _store_rows(y_ptr, y, i_b, i_h, c * T + m * Q, l, h, P, Q, BP)


@triton.jit
def _split(i_sp, h, g, HP: tl.constexpr):
    """Index over (b, g, splits), each split HP heads of one group -> batch, group, the split's first head."""
    splits = (h // g) // HP
    i_b, i_g = i_sp // (g * splits), (i_sp // splits) % g
    return i_b, i_g, i_g * (h // g) + (i_sp % splits) * HP


@triton.jit
def _head_block(i_pid, h, g, N, BN: tl.constexpr, HP: tl.constexpr):
    """Program index over (b, g, splits, n tiles) -> batch, group, the split's first head, the split's index
    i_sp over (b, g, splits), its slot in a (b, l, g * splits, n) buffer of per-split sums, the slot count, and
    the n tile."""
    n_tiles = tl.cdiv(N, BN)
    i_sp, i_n = i_pid // n_tiles, i_pid % n_tiles
    i_b, i_g, head0 = _split(i_sp, h, g, HP)
    slots = g * ((h // g) // HP)
    return i_b, i_g, head0, i_sp, i_sp % slots, slots, i_n


# The backward's in-chunk work. M_ts = (C_t . B_s) decay_ts dt_s and y_t = sum_s M_ts x_s; dM_ts = dy_t . x_s.
# The gradient of C_t . B_s, dCB_ts = sum over a group's heads of dM_ts decay_ts dt_s, is what dC (its rows times
# B) and dB (its columns times C) both need: _chunk_grad_CB forms it once per block of heads, with cum's row
# terms, which need the same dM; _chunk_grad_C and _B read it. (Before, those three kernels each formed dM for
# every head.) _chunk_grad_cols sums over targets t >= s for each source column s, per head.


@triton.jit
def _next_head(i_bh0, j, HP: tl.constexpr, Lp):
    """Offset of the per-token row (b*h, Lp) of head j + 1 of a block of HP heads starting at i_bh0 (the last head's
    own at the end, so that the load stays in bounds). The per-token weights that scale a product's result, not its
    operands, are left in the loop by Triton's software pipelining (3.6, 3.7), each head's waited for before its
    product can be used; loaded a head ahead by hand, they arrive while this head's product runs."""
    return (i_bh0 + tl.minimum(j + 1, HP - 1)) * Lp


@triton.jit
def _tile_pair_weights(cum_ptr, dt_ptr, tok, t_m, t_k):
    """A head's cum at rows t_m and at columns t_k, and its dt at the columns: what its dM tile is scaled by."""
    return tl.load(cum_ptr + tok + t_m), tl.load(cum_ptr + tok + t_k), tl.load(dt_ptr + tok + t_k)


@triton.jit
def _split_weights(cum_ptr, dt_ptr, i_bh0, t_m, t_k, Lp, HP: tl.constexpr):
    """_tile_pair_weights of heads i_bh0..i_bh0 + HP (HP a power of two) as (HP, Q) tiles, a head a row."""
    rows = ((i_bh0 + tl.arange(0, HP)) * Lp)[:, None]
    return (tl.load(cum_ptr + rows + t_m[None, :]), tl.load(cum_ptr + rows + t_k[None, :]),
            tl.load(dt_ptr + rows + t_k[None, :]))


@triton.jit
def _head_row(tile, j, HP: tl.constexpr):
    """Row j of an (HP, Q) tile of _split_weights."""
    return tl.sum(tl.where(tl.arange(0, HP)[:, None] == j, tile, 0.0), 0)


@triton.jit
def _chunk_grad_CB(dy_ptr, x_ptr, CB_ptr, dt_ptr, cum_ptr, seq_ptr, dCB_ptr, dcum_ptr,
                   l, Lp, h, g, P, N, num_chunks,
                   T: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, HP: tl.constexpr,
                   HAS_SEQ: tl.constexpr, PREC: tl.constexpr):
    """Grid (T // Q, T // Q, b * g * splits * chunks), tile (m, k) of chunk c for a split of HP heads: for k <= m,
    dCB_ts = sum over the heads of dM_ts decay_ts dt_s, to dCB (b * g * splits, chunks, T, T), in its dtype; and
    each head's share of cum_t's row term from these columns, sum_s dM_ts M_ts, to row k of dcum (b*h, T // Q,
    Lp) fp32 (zeros for k > m), which the host sums."""
    m, k, i_spc = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_sp, c = i_spc // num_chunks, i_spc % num_chunks
    i_b, i_g, head0 = _split(i_sp, h, g, HP)
    t_m = c * T + m * Q + tl.arange(0, Q)
    if k > m:
        for j in range(HP):
            tl.store(dcum_ptr + ((i_b * h + head0 + j) * (T // Q) + k) * Lp + t_m, tl.zeros((Q,), tl.float32))
    else:
        t_k = c * T + k * Q + tl.arange(0, Q)
        CB = _cb_tile(CB_ptr, i_b * g + i_g, c, m, k, num_chunks, T, Q)
        dCB = tl.zeros((Q, Q), tl.float32)
        seq_m, seq_k = _seq_ids(seq_ptr, i_b * Lp, t_m, HAS_SEQ), _seq_ids(seq_ptr, i_b * Lp, t_k, HAS_SEQ)
        # The weights of every head of the split, loaded before the loop as (HP, Q) tiles, where they fit: loaded a
        # head ahead instead, they were copied at the loop's end by ptxas, which waited there for them (make
        # bench-compile). With fp32 products (FMA units) the tiles spilled 272 bytes a thread.
        PRELOAD: tl.constexpr = HP <= 8 and (PREC == "bf16" or PREC == "fp16")
        if PRELOAD:
            cum_ms, cum_ks, dt_ks = _split_weights(cum_ptr, dt_ptr, i_b * h + head0, t_m, t_k, Lp, HP)
        for j in range(HP):
            i_bh = i_b * h + head0 + j
            if PRELOAD:
                cum_m, cum_k, dt_k = _head_row(cum_ms, j, HP), _head_row(cum_ks, j, HP), _head_row(dt_ks, j, HP)
            else:
                cum_m, cum_k, dt_k = _tile_pair_weights(cum_ptr, dt_ptr, i_bh * Lp, t_m, t_k)
            dy_m = _load_rows(dy_ptr, i_b, head0 + j, c * T + m * Q, l, h, P, Q, BP, 0)
            x_k = _load_rows(x_ptr, i_b, head0 + j, c * T + k * Q, l, h, P, Q, BP, 0)
            decay = _in_chunk_decay(cum_m, cum_k, _in_chunk_keep(t_m, t_k, seq_m, seq_k, HAS_SEQ))
            dM_decay_dt = _dot(dy_m, tl.trans(x_k), PREC) * decay * dt_k[None, :]
            tl.store(dcum_ptr + (i_bh * (T // Q) + k) * Lp + t_m, tl.sum(dM_decay_dt * CB, 1))
            dCB += dM_decay_dt
        rows, cols = m * Q + tl.arange(0, Q), k * Q + tl.arange(0, Q)
        tl.store(dCB_ptr + (i_spc * T + rows[:, None]) * T + cols[None, :], dCB.to(dCB_ptr.dtype.element_ty))


@triton.jit
def _chunk_grad_C(dy_ptr, B_ptr, C_ptr, win_ptr, states_ptr, dCB_ptr, dC_ptr, dwin_ptr,
                  l, Lp, h, g, P, N, num_chunks,
                  T: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HP: tl.constexpr,
                  PREC: tl.constexpr):
    """Grid (T // Q, b * g * splits * cdiv(N, BN), chunks), rows t of tile m, columns of n tile i_n: dC_t = sum
    over HP heads of win_t S^T dy_t, plus sum_s dCB_ts B_s (the host sums the splits). S^T dy_t also gives each
    head's dL/dwin_t = C_t . S^T dy_t, this n tile's share of it to row i_n of dwin (b*h, n tiles, Lp) fp32."""
    m, c = tl.program_id(0), tl.program_id(2)
    i_b, i_g, head0, i_sp, slot, slots, i_n = _head_block(tl.program_id(1).to(tl.int64), h, g, N, BN, HP)
    t_m = c * T + m * Q + tl.arange(0, Q)
    C_m = _load_rows(C_ptr, i_b, i_g, c * T + m * Q, l, g, N, Q, BN, i_n * BN)
    dC = tl.zeros((Q, BN), tl.float32)
    win_m = tl.load(win_ptr + (i_b * h + head0) * Lp + t_m)
    for j in range(HP):  # the entering state's term, head by head
        i_bh = i_b * h + head0 + j
        dy_m = _load_rows(dy_ptr, i_b, head0 + j, c * T + m * Q, l, h, P, Q, BP, 0)
        offs, mask = _state_tile(i_bh, c, num_chunks, P, N, BP, BN, i_n * BN)
        S_dy = _dot(dy_m, tl.load(states_ptr + offs, mask=mask, other=0.0), PREC)
        tl.store(dwin_ptr + (i_bh * tl.cdiv(N, BN) + i_n) * Lp + t_m, tl.sum(S_dy * C_m, 1))
        dC += S_dy * win_m[:, None]
        win_m = tl.load(win_ptr + _next_head(i_b * h + head0, j, HP, Lp) + t_m)  # a head ahead (_next_head's reason)
    for k in range(0, m + 1):  # the in-chunk term
        B_k = _load_rows(B_ptr, i_b, i_g, c * T + k * Q, l, g, N, Q, BN, i_n * BN)
        dC += _dot(_cb_tile(dCB_ptr, i_sp, c, m, k, num_chunks, T, Q), B_k, PREC)
    _store_rows(dC_ptr, dC, i_b, slot, c * T + m * Q, l, slots, N, Q, BN, i_n * BN)


@triton.jit
def _chunk_grad_cols(dy_ptr, x_ptr, B_ptr, CB_ptr, dt_ptr, cum_ptr, wout_ptr, dleaving_ptr, seq_ptr, D_ptr,
                     dx_ptr, ddt_ptr, dwout_ptr, dD_ptr,
                     l, Lp, h, g, P, N, num_chunks,
                     T: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, PREC: tl.constexpr):
    """Grid (T // Q, b*h, chunks), columns s of tile k: dx_s = wout_s G B_s + sum_t M_ts dy_t + D dy_s, dL/dwout_s =
    x_s . G B_s and dL/ddt_s through M, sum_t dM_ts (C_t . B_s) decay_ts (cum_s's share of d exp(cum_t - cum_s)
    is -dt_s times it). G = dL/d(state leaving chunk c). With D, this program's share of dD, sum_s dy_s x_s,
    goes to row (b*h, chunk, tile) of dD (b*h*chunks*T/Q, P) fp32; the host sums the rows.
    Both sums over t come from one product: with acc_s = sum_t (C_t . B_s) decay_ts dy_t, the in-chunk dx_s is
    dt_s acc_s and dL/ddt_s is x_s . acc_s, since dM_ts = dy_t . x_s. (The first version also formed the (Q, Q)
    dM tile, one more product a step, and held both in registers.)"""
    k, i_bh, c = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_b, i_h, i_g, tok, seq_row = _head(i_bh, h, g, Lp)
    t_k = c * T + k * Q + tl.arange(0, Q)
    cum_k, seq_k = tl.load(cum_ptr + tok + t_k), _seq_ids(seq_ptr, seq_row, t_k, HAS_SEQ)
    # acc transposed, the only tile the loop keeps (its operands are loaded after it). As (Q, BP) with the tile of
    # C.B times decay, made in registers, as the product's first operand, each of the product's four wgmma
    # instructions was waited for before the next (make bench-compile); as the second, they run back to back.
    accT = tl.zeros((BP, Q), tl.float32)
    for m in range(k, T // Q):
        t_m = c * T + m * Q + tl.arange(0, Q)
        dyT_m = _load_rows(dy_ptr, i_b, i_h, c * T + m * Q, l, h, P, Q, BP, 0, TRANSPOSED=True)
        CB_decay = _cb_tile(CB_ptr, i_b * g + i_g, c, m, k, num_chunks, T, Q) * \
            _in_chunk_decay(tl.load(cum_ptr + tok + t_m), cum_k,
                            _in_chunk_keep(t_m, t_k, _seq_ids(seq_ptr, seq_row, t_m, HAS_SEQ), seq_k, HAS_SEQ))
        accT += _dot(dyT_m, CB_decay, PREC)
    acc = tl.trans(accT)
    x_k = _load_rows(x_ptr, i_b, i_h, c * T + k * Q, l, h, P, Q, BP, 0)
    tl.store(ddt_ptr + tok + t_k, tl.sum(x_k * acc, 1))
    dx = acc * tl.load(dt_ptr + tok + t_k)[:, None]
    B_k = _load_rows(B_ptr, i_b, i_g, c * T + k * Q, l, g, N, Q, BN, 0)
    offs, mask = _state_tile(i_bh, c, num_chunks, P, N, BP, BN, 0)
    GB = _dot(B_k, tl.trans(tl.load(dleaving_ptr + offs, mask=mask, other=0.0)), PREC)  # (Q, BP): G B_s per row
    tl.store(dwout_ptr + tok + t_k, tl.sum(x_k * GB, 1))
    dx += GB * tl.load(wout_ptr + tok + t_k)[:, None]
    if HAS_D:
        dy_k = _load_rows(dy_ptr, i_b, i_h, c * T + k * Q, l, h, P, Q, BP, 0)
        dx += dy_k * _D_row(D_ptr, i_h, P, BP)[None, :]
        cols = tl.arange(0, BP)
        tl.store(dD_ptr + ((i_bh * num_chunks + c) * (T // Q) + k) * P + cols, tl.sum(dy_k * x_k, 0), mask=cols < P)
    _store_rows(dx_ptr, dx, i_b, i_h, c * T + k * Q, l, h, P, Q, BP)


@triton.jit
def _chunk_grad_B(x_ptr, C_ptr, wout_ptr, dleaving_ptr, dCB_ptr, dB_ptr,
                  l, Lp, h, g, P, N, num_chunks,
                  T: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HP: tl.constexpr,
                  PREC: tl.constexpr):
    """Grid (T // Q, b * g * splits * cdiv(N, BN), chunks), columns s of tile k, n tile i_n: dB_s = sum over
    HP heads of wout_s G^T x_s, plus sum_t dCB_ts C_t (the host sums the splits)."""
    k, c = tl.program_id(0), tl.program_id(2)
    i_b, i_g, head0, i_sp, slot, slots, i_n = _head_block(tl.program_id(1).to(tl.int64), h, g, N, BN, HP)
    t_k = c * T + k * Q + tl.arange(0, Q)
    dB = tl.zeros((Q, BN), tl.float32)
    wout_k = tl.load(wout_ptr + (i_b * h + head0) * Lp + t_k)
    for j in range(HP):  # the leaving state's term, head by head
        i_bh = i_b * h + head0 + j
        x_k = _load_rows(x_ptr, i_b, head0 + j, c * T + k * Q, l, h, P, Q, BP, 0)
        offs, mask = _state_tile(i_bh, c, num_chunks, P, N, BP, BN, i_n * BN)
        dB += _dot(x_k, tl.load(dleaving_ptr + offs, mask=mask, other=0.0), PREC) * wout_k[:, None]
        wout_k = tl.load(wout_ptr + _next_head(i_b * h + head0, j, HP, Lp) + t_k)  # a head ahead (_next_head's reason)
    for m in range(k, T // Q):  # the in-chunk term
        C_m = _load_rows(C_ptr, i_b, i_g, c * T + m * Q, l, g, N, Q, BN, i_n * BN)
        dB += _dot(tl.trans(_cb_tile(dCB_ptr, i_sp, c, m, k, num_chunks, T, Q)), C_m, PREC)
    _store_rows(dB_ptr, dB, i_b, slot, c * T + k * Q, l, slots, N, Q, BN, i_n * BN)


@dataclasses.dataclass(frozen=True)
class Launch:
    """How the kernels cut the problem. Every Launch gives the same result up to rounding."""
    T: int            # tokens per chunk (one state kept per chunk): a power of two, 16..MAX_CHUNK
    Q: int            # tokens per tile of the forward kernels: a power of two, 16..min(T, MAX_TILE)
    grad_Q: int       # and of the gradient kernels
    BP: int           # p and n padded to powers of two (>= 16): tiles hold whole rows
    BN: int
    BN_state: int     # _chunk_state splits n into tiles of this width
    BN_grad: int      # and so do _chunk_grad_C and _chunk_grad_B
    scan_block: int   # _state_scan's elements per program
    warps: int        # the forward's tile kernels
    grad_warps: int   # the gradient kernels
    heads_per_program: int  # _chunk_grad_CB, _C and _B sum over this many heads of a group in registers
    prec: str         # tl.dot operands: fp32 at "ieee" or "tf32" precision, or rounded to "bf16" / "fp16"
    scan_stages: int = 3  # _state_scan's loop pipelined: the next scan_stages - 1 chunks' loads in flight
    grad_maxnreg: int = 0  # registers a thread of the gradient kernels may hold (0: ptxas's choice)
    stages: int = 0   # software-pipelining stages of the forward's tile kernels' loops (0: Triton's default, 3)
    grad_stages: int = 0  # and of the gradient kernels' loops
    states_16bit: bool = False  # entering states and their gradients kept in prec's 16-bit type, as mamba_ssm's
    one_pass_states: bool = False  # _state_pass instead of _chunk_state then _state_scan: no chunk's own state kept
    cb_16bit: bool = False  # C_t . B_s kept in prec's 16-bit type, where mamba_ssm keeps it fp32

    @property
    def operand_dtype(self) -> torch.dtype:
        """What a product's operands are rounded to: prec's 16-bit type, else fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.prec, torch.float32)

    @property
    def states_dtype(self) -> torch.dtype:
        """Of the kept entering states and dL/d(state leaving each chunk): every product rounds them to prec's
        type anyway; only dL/d decay (the reverse scan's fp32 carry dotted with the states) and the bytes
        see the difference."""
        return self.operand_dtype if self.states_16bit else torch.float32

    def options(self, gradients=False) -> dict:
        """Triton's launch options for the forward's tile kernels or the gradient kernels: only those set, so that
        the default launches exactly as before they existed."""
        if gradients:
            return dict(num_warps=self.grad_warps, **({"maxnreg": self.grad_maxnreg} if self.grad_maxnreg else {}),
                        **({"num_stages": self.grad_stages} if self.grad_stages else {}))
        return dict(num_warps=self.warps, **({"num_stages": self.stages} if self.stages else {}))

    def __post_init__(self):
        for name in ("states_16bit", "cb_16bit"):
            if getattr(self, name) and self.prec not in ("bf16", "fp16"):
                raise ValueError(f"kernels.ssd triton Launch: {name} with prec = {self.prec!r}; expected prec 'bf16' "
                                 "or 'fp16' (16 bits means the products' operand type)")
        if self.scan_stages < 1:
            raise ValueError(f"kernels.ssd triton Launch: scan_stages = {self.scan_stages}; expected at least 1 (1: "
                             "_state_scan issues no load ahead)")
        for name in ("Q", "grad_Q"):
            tile = getattr(self, name)
            if tile > self.T or self.T % tile or tile < 16:
                raise ValueError(f"kernels.ssd triton Launch: {name} = {tile}, T = {self.T}; expected 16 <= {name} "
                                 "<= T, both powers of two")

    def check(self, heads_per_group, dtype):
        if heads_per_group % self.heads_per_program:
            raise ValueError(f"kernels.ssd triton Launch: heads_per_program = {self.heads_per_program}, expected a "
                             f"divisor of the heads per group, {heads_per_group}")
        # Measured, not understood: on an H200 (Triton 3.6) tf32 products at Q = grad_Q = 64 on bf16 inputs got
        # dL/ddt 63% off the fp64 reference, where fp32 inputs at 64 and bf16 at 32 passed (the GPU tier's
        # test_triton_gpu_tf32_products). Which of the two tiles it takes is not known, so both are refused.
        if self.prec == "tf32" and dtype != torch.float32 and max(self.Q, self.grad_Q) >= 64:
            raise ValueError(f"kernels.ssd triton Launch: prec = 'tf32' with Q = {self.Q}, grad_Q = {self.grad_Q} on "
                             f"{dtype} inputs gave wrong gradients on an H200; use prec = 'bf16' or 'fp16' (the "
                             "default for 16-bit inputs), or Q and grad_Q of at most 32")


def default_launch(x, B, chunk_size) -> Launch:
    p, n = x.shape[-1], B.shape[-1]
    BP, BN = max(16, triton.next_power_of_2(p)), max(16, triton.next_power_of_2(n))
    heads_per_group = x.shape[2] // B.shape[2]
    T = max(16, min(MAX_CHUNK, 1 << (chunk_size.bit_length() - 1)))
    # fp32 inputs get exact fp32 products. 16-bit inputs get products on operands of their own type, as mamba_ssm's:
    # on an H200 (2026-11-27) they passed the GPU tier and ran forward+backward 1.71x faster than tf32, which
    # got dL/ddt wrong there (Launch.check).
    exact = x.dtype == torch.float32
    tile = 32 if exact else MAX_TILE
    return Launch(T=T, BP=BP, BN=BN, BN_state=min(BN, 64), BN_grad=min(BN, 128), scan_block=1024,
                  # Compiled for sm_90 (make bench-compile; p 64, n 128, 16-bit inputs): at Q 64 every product
                  # is a Hopper wgmma (at Q 32, mma.sync). The gradient kernels at 4 warps ran forward+backward
                  # 1.04-1.34x faster than at 8 at every shape of the GPU suite on an H200
                  # (kernels/benchmarks/results/ssd_NVIDIA-H200_2026-11-27.md), and dC and dB in n tiles of 128
                  # 1.2x faster than in 64; both measured before _chunk_grad_CB, when the gradient kernels did
                  # 1.7x today's products and three of them spilled.
                  # Exact fp32 products run on FMA units, where big tiles gain nothing and spilled 1.9 KB a thread
                  # (`python -m kernels.benchmarks.gpu_compile --dtype fp32 --change Q=64 --change grad_Q=64`).
                  Q=min(T, tile), warps=4, grad_Q=min(T, tile), grad_warps=4,
                  # Per-head dB and dC in fp32 would be h / g times the size of B: 5.4 GB at L 64K, 80 heads.
                  heads_per_program=max(d for d in (1, 2, 4, 8) if heads_per_group % d == 0),
                  prec="ieee" if exact else {torch.float16: "fp16"}.get(x.dtype, "bf16"))


def _num_chunks(l, T):
    """Chunks of T tokens that hold l tokens (at least one): the kernels pad the last one."""
    return max(1, triton.cdiv(l, T))


class TokenWeights(torch.autograd.Function):
    """(dt (b, l, h) raw, A (h,) fp32, dt_bias (h,) fp32 or None, seq (b, Lp) int32 or None, T, dt_softplus,
    dt_limit) -> per-token (b, h, Lp) fp32, padded with dt = 0 to whole chunks: dt processed (process_dt's
    bias, softplus, clamp), cum (A dt summed within the chunk), win (the entering state's weight), wout (the
    weight towards the chunk's end); and decay (b, h, chunks). One kernel each way; the backward recomputes
    the weights from the raw dt rather than reading them back."""

    @staticmethod
    def _inputs(dt, A, dt_bias, seq):
        """The kernels' first four pointers: dt stands in for the absent ones, which HAS_BIAS / HAS_SEQ skip."""
        return dt, dt if dt_bias is None else dt_bias, A, dt if seq is None else seq

    @staticmethod
    def forward(ctx, dt, A, dt_bias, seq, T, dt_softplus, dt_limit):
        b, l, h = dt.shape
        num_chunks = _num_chunks(l, T)
        Lp = num_chunks * T
        weights = [torch.empty(b, h, Lp, device=dt.device, dtype=torch.float32) for _ in range(4)]
        decay = torch.empty(b, h, num_chunks, device=dt.device, dtype=torch.float32)
        ctx.sizes = (l, h, Lp, num_chunks, float(dt_limit[0]), float(dt_limit[1]))
        ctx.flags = dict(T=T, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
                         HAS_LIMIT=tuple(dt_limit) != (0.0, float("inf")), HAS_SEQ=seq is not None)
        _token_weights_fwd[(b * h, num_chunks)](*TokenWeights._inputs(dt, A, dt_bias, seq), *weights, decay,
                                                *ctx.sizes, **ctx.flags)
        ctx.save_for_backward(dt, A, dt_bias, seq)
        return (*weights, decay)

    @staticmethod
    def backward(ctx, ddt_out, dcum, dwin, dwout, ddecay):
        dt, A, dt_bias, seq = ctx.saved_tensors
        b, l, h = dt.shape
        num_chunks = ctx.sizes[3]
        ddt = torch.empty_like(dt)
        dA, dbias = (torch.empty(b, h, num_chunks, device=dt.device, dtype=torch.float32) for _ in range(2))
        grads = [g.contiguous() for g in (ddt_out, dcum, dwin, dwout, ddecay)]
        _token_weights_bwd[(b * h, num_chunks)](*TokenWeights._inputs(dt, A, dt_bias, seq), *grads, ddt, dA, dbias,
                                                *ctx.sizes, **ctx.flags)
        return (ddt, dA.sum((0, 2)), None if dt_bias is None else dbias.sum((0, 2)), None, None, None, None)


def _padded_seq(seq_idx, T):
    """seq_idx (b, l) -> (b, whole chunks of T) int32, padded with its last value (the padding belongs to the
    last sequence)."""
    b, l = seq_idx.shape
    last = seq_idx[:, -1:] if l else seq_idx.new_zeros(b, 1)
    return torch.cat([seq_idx, last.expand(b, _num_chunks(l, T) * T - l)], 1).to(torch.int32).contiguous()


def _chunk_cb(B, C, num_chunks, launch):
    """C_t . B_s for the pairs of tokens of a chunk the kernels read, per group: (b, g, chunks, T, T), fp32 or
    (Launch.cb_16bit) the products' 16-bit type.
    Computed once for all the heads of a group (with one group, once for all heads), not per head in the
    kernels; from B and C as they are (a torch matmul would want them cast to fp32 and padded first)."""
    b, l, g, n = B.shape
    T, Q = launch.T, max(launch.Q, launch.grad_Q)  # the larger tile's diagonal tiles hold the smaller's
    CB = torch.empty(b, g, num_chunks, T, T, device=B.device,
                     dtype=launch.operand_dtype if launch.cb_16bit else torch.float32)
    # 16-bit values are exact as 16-bit products' operands; fp32 ones need exact fp32 products.
    prec = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(B.dtype, "ieee") if B.dtype == C.dtype else "ieee"
    _cb_products[(T // Q, T // Q, b * g * num_chunks)](B, C, CB, l, g, n, num_chunks, T=T, Q=Q, BN=launch.BN,
                                                       PREC=prec, **launch.options())
    return CB


def _sizes(x, B, decay, launch):
    """The size arguments every kernel takes, and the tile constants of the per-chunk kernels."""
    b, l, h, p = x.shape
    num_chunks = decay.shape[-1]
    sizes = (l, num_chunks * launch.T, h, B.shape[2], p, B.shape[3], num_chunks)
    return sizes, dict(T=launch.T, Q=launch.Q, BP=launch.BP, PREC=launch.prec)


def _sum_partials(partials, like):
    """(b*h, parts, Lp) partial sums -> their sum shaped like `like` (b, h, Lp); one part is a view, no kernel."""
    return (partials[:, 0] if partials.shape[1] == 1 else partials.sum(1)).view_as(like)


def _chunk_carries(u, v, weights, decay, init, reverse, launch, dot_with=None):
    """carry' = decay_c carry + sum_{t in chunk c} weights_t u_t v_t^T over the chunks (last to first if
    reverse), from init (zeros if None): the carry entering each chunk (b, h, chunks, p, n), the last, and
    <carry entering chunk c, dot_with[c]> (b, h, chunks) if dot_with is given, else None.
    Forward: the states, from (x, B, wout). Backward: dL/d(state leaving each chunk), from (dy, C, win),
    and dL/d decay with dot_with = the states. The carries are kept in launch.states_dtype, the carry itself and
    the last in fp32."""
    b, _, h, p = u.shape
    n = v.shape[3]
    sizes, tiles = _sizes(u, v, decay, launch)
    num_chunks = sizes[-1]
    last = torch.empty(b, h, p, n, device=u.device, dtype=torch.float32)
    n_tiles = triton.cdiv(n, launch.BN_state)
    parts = n_tiles if launch.one_pass_states else triton.cdiv(p * n, launch.scan_block)  # one per scan program
    dots = None if dot_with is None else torch.empty(b, h, num_chunks, parts, device=u.device, dtype=torch.float32)

    def scan_args(carries):  # init, out, final, with and dot: what both scan kernels take after the decay
        return (init if init is not None else last, carries, last, dot_with if dot_with is not None else last,
                dots if dots is not None else last)
    flags = dict(REVERSE=reverse, HAS_INIT=init is not None, HAS_DOT=dot_with is not None)
    if launch.one_pass_states:
        carries = torch.empty(b, h, num_chunks, p, n, device=u.device, dtype=launch.states_dtype)
        # At Triton's default 3 stages ptxas copies the tile of u pipelined in registers at the loop's end, and waits
        # there for its load every tile; at 2 the loop waits for no load but, in reverse, the state at a chunk's
        # start (make bench-compile).
        _state_pass[(b * h, n_tiles)](u, v, weights, decay, *scan_args(carries), *sizes, **tiles,
                                      BN=launch.BN_state, **flags, **({"num_stages": 2} | launch.options()))
    else:
        own = torch.empty(b, h, num_chunks, p, n, device=u.device, dtype=torch.float32)
        _chunk_state[(b * h, num_chunks, n_tiles)](u, v, weights, own, *sizes, **tiles, BN=launch.BN_state,
                                                   **launch.options())
        # fp32 carries replace each chunk's own contribution in place; 16-bit ones need their own buffer.
        carries = own if launch.states_dtype == torch.float32 else torch.empty_like(own, dtype=launch.states_dtype)
        _state_scan[(b * h, parts)](own, decay, *scan_args(carries), num_chunks, p * n, BLOCK=launch.scan_block,
                                    STAGES=launch.scan_stages, **flags)
    return carries, last, None if dots is None else dots.sum(-1)


class SSDChunks(torch.autograd.Function):
    """(x, B, C, D, dt, cum, win, wout, decay, initial_states, seq, launch) -> (y before z, final_states fp32).
    D is (h, p) fp32 or None. Per-token inputs are TokenWeights' (b, h, Lp) tensors; gradients flow to all
    but seq and launch."""

    @staticmethod
    def forward(ctx, x, B, C, D, dt, cum, win, wout, decay, initial_states, seq, launch):
        sizes, tiles = _sizes(x, B, decay, launch)
        b, _, h, _ = x.shape
        states, final, _ = _chunk_carries(x, B, wout, decay, initial_states, False, launch)
        CB = _chunk_cb(B, C, sizes[-1], launch)
        y = torch.empty_like(x)
        _chunk_output[(launch.T // launch.Q, b * h, sizes[-1])](
            x, CB, C, dt, cum, win, states, seq if seq is not None else dt, D if D is not None else dt, y, *sizes,
            BN=launch.BN, HAS_SEQ=seq is not None, HAS_D=D is not None, **tiles, **launch.options())
        ctx.save_for_backward(x, B, C, D, CB, dt, cum, win, wout, decay, seq, states)
        # An output nobody used gets None, not a tensor of zeros: final_states mostly goes unused, and its
        # zeros would be written, then read by the reverse state scan.
        ctx.set_materialize_grads(False)
        ctx.launch = launch
        ctx.init_dtype = None if initial_states is None else initial_states.dtype
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, B, C, D, CB, dt, cum, win, wout, decay, seq, states = ctx.saved_tensors
        launch = ctx.launch
        sizes, tiles = _sizes(x, B, decay, launch)
        b, l, h, _ = x.shape
        groups, n = B.shape[2], B.shape[3]
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dfinal = None if dfinal is None else dfinal.float().contiguous()
        # dL/d decay_c = <dL/dS_c+1, S_c>, summed in the same pass
        dleaving, dinit, ddecay = _chunk_carries(dy, C, win, decay, dfinal, True, launch, dot_with=states)
        seq_ptr = seq if seq is not None else dt
        f32 = dict(device=x.device, dtype=torch.float32)
        args = dict(tiles, Q=launch.grad_Q, **launch.options(gradients=True))
        q_tiles = launch.T // launch.grad_Q
        per_head = (q_tiles, b * h, sizes[-1])
        dx, ddt, dwout = (torch.empty_like(t) for t in (x, dt, wout))
        # dD per (b*h, chunk, tile) program, summed here: no atomics, so the result does not depend on their order.
        dD = None if D is None else torch.empty(b * h * per_head[2] * per_head[0], x.shape[3], **f32)
        _chunk_grad_cols[per_head](dy, x, B, CB, dt, cum, wout, dleaving, seq_ptr, D if D is not None else dt,
                                   dx, ddt, dwout, dD if D is not None else dt, *sizes, **args, BN=launch.BN,
                                   HAS_SEQ=seq is not None, HAS_D=D is not None)
        # Heads of one group read the same B and C: the kernels sum their gradients over heads_per_program
        # heads, the host over the splits (in fp32; with one split the kernels write dC and dB as they are).
        splits = h // groups // launch.heads_per_program
        # dCB in the products' operand type: its tiles are rounded to it anyway where dC and dB read them.
        dCB = torch.empty(b * groups * splits, sizes[-1], launch.T, launch.T, device=x.device,
                          dtype=launch.operand_dtype)
        # Partial sums, summed below: cum's row terms per column tile, dL/dwin per n tile.
        dcum = torch.empty(b * h, q_tiles, cum.shape[-1], **f32)
        dwin = torch.empty(b * h, triton.cdiv(n, launch.BN_grad), cum.shape[-1], **f32)
        args = dict(args, HP=launch.heads_per_program)
        _chunk_grad_CB[(q_tiles, q_tiles, b * groups * splits * sizes[-1])](
            dy, x, CB, dt, cum, seq_ptr, dCB, dcum, *sizes, **args, HAS_SEQ=seq is not None)
        summed = (q_tiles, b * groups * splits * triton.cdiv(n, launch.BN_grad), sizes[-1])
        dC, dB = (torch.empty(b, l, groups * splits, n, device=x.device, dtype=torch.float32 if splits > 1 else t.dtype)
                  for t in (C, B))
        _chunk_grad_C[summed](dy, B, C, win, states, dCB, dC, dwin, *sizes, **args, BN=launch.BN_grad)
        _chunk_grad_B[summed](x, C, wout, dleaving, dCB, dB, *sizes, **args, BN=launch.BN_grad)
        # cum_s's share of d exp(cum_t - cum_s) is the negative of dt_s's share of M_ts, times dt_s.
        dcum = _sum_partials(dcum, cum) - ddt * dt
        dwin = _sum_partials(dwin, win)
        dB, dC = (d.view(b, l, groups, splits, n).sum(3) if splits > 1 else d.view(b, l, groups, n) for d in (dB, dC))
        dB, dC = dB.to(B.dtype), dC.to(C.dtype)
        dinit = None if ctx.init_dtype is None else dinit.to(ctx.init_dtype)
        dD = None if D is None else dD.view(b, h, -1, x.shape[3]).sum((0, 2))
        return dx, dB, dC, dD, ddt, dcum, dwin, dwout, ddecay, dinit, None, None


def ssd_scan_triton(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                    seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False,
                    launch=None):
    """Chunked SSD scan in Triton; signature and semantics of `kernels.ssd.ssd_scan`.
    `launch`: a Launch overrides `default_launch` (the benchmark's launch sweep uses it); "tuned" takes the
    fastest launch for this shape on this device (kernels.ssd.tuning), as None does with LONGWATCH_SSD_TUNE=1.

    x (b, l, h, p) fp32/fp16/bf16, dt (b, l, h), A (h,), B and C (b, l, g, n), D (h,) or (h, p),
    z (b, l, h, p), dt_bias (h,), initial_states (b, h, p, n), seq_idx (b, l) int.
    Returns y (b, l, h, p) in x.dtype [, final_states (b, h, p, n) fp32].
    """
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"kernels.ssd triton backend: x.dtype = {x.dtype}, expected float32, float16 or bfloat16 "
                         "(use backend='torch' or 'naive' for float64)")
    if launch is None or launch == "tuned":
        from kernels.ssd import tuning  # imported here: it imports this module
        if launch == "tuned" or tuning.enabled():
            launch = tuning.tuner().launch(x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, seq_idx,
                                           dt_softplus, dt_limit)
        else:
            launch = default_launch(x, B, chunk_size)
    if not isinstance(launch, Launch):
        raise ValueError(f"kernels.ssd triton backend: launch = {launch!r}, expected a Launch, 'tuned' or None")
    launch.check(x.shape[2] // B.shape[2], x.dtype)
    seq = None if seq_idx is None else _padded_seq(seq_idx, launch.T)
    weights = TokenWeights.apply(dt.contiguous(), A.float().contiguous(),
                                 None if dt_bias is None else dt_bias.float().contiguous(), seq, launch.T,
                                 dt_softplus, tuple(dt_limit))
    init = None if initial_states is None else initial_states.contiguous()
    if D is not None:  # (h,) -> (h, p): autograd sums the gradient back over p
        D = (D[:, None].expand(-1, x.shape[3]) if D.dim() == 1 else D).float().contiguous()
    y, final = SSDChunks.apply(x.contiguous(), B.contiguous(), C.contiguous(), D, *weights, init, seq, launch)
    if z is not None:  # the gate in fp32 on the kernel's output, which holds the scan and D x
        y = gate_output(y.float(), x, None, z).to(x.dtype)
    return (y, final) if return_final_states else y
