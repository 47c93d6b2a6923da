"""Chunked SSD (state-space duality) in plain torch: the CPU path and the GPU fallback.

The sequence is cut into chunks of Q tokens. Inside a chunk the scan is a masked
"attention" (C_t . B_s) * exp(cum_t - cum_s) * dt_s, a (Q, Q) matrix per head; across
chunks only the (p, n) state travels, through a short loop over chunks. Memory is
O(l * Q) per head, never O(l^2); autograd differentiates the plain torch ops.

Letters: b batch, c chunk, q and s positions inside a chunk (q the target, s the
source), g group, r head inside its group (h = g * r), p head dim, n state dim.
Speed on a CPU comes from the layouts: the r heads of a group share B and C, so the two
state products (what a chunk adds to the state, what the entering state gives each
position) fold the heads into one (r * p)-wide matrix per (batch, chunk, group), which
is the input's own memory layout; only the quadratic in-chunk product needs a per-head
layout, and it gets one copy of x.

Two forms of the same scan: with autograd, whole-sequence tensor ops (`_scan_for_autograd`);
without (evaluation, the benchmark's forward) and on large inputs, a loop that finishes one chunk
before the next (`_scan_chunk_by_chunk`), whose intermediates stay in cache.
"""
import torch
import torch.nn.functional as F

from kernels.ssd.naive import compute_dtype, gate_output, process_dt

# Inside a chunk the work per token grows with Q (the (Q, Q) decay matrix), across chunks
# it does not. At Mamba-2 sizes (n 128, p 64) on this project's 2-core CPU, 64 and 128 timed
# alike forward and 64 was faster forward+backward, with less memory (a side-by-side run
# while writing this backend, not a kept benchmark). Larger requested chunks run as several
# of this size, which changes nothing beyond rounding.
MAX_CHUNK = 64
# Without autograd, inputs of at least this many elements (x.numel()) go chunk by chunk: at b 4, l 1500,
# h 8, p 32 (1.5M) it was 1.1-1.2x faster than the batched form on this CPU, at b 2, l 4096, h 8, p 64 1.15x
# (one thread) to 1.6x (two); at b 1, l 300 (77K) its per-chunk Python overhead made it 1.2-1.8x slower
# (a side-by-side run while writing it, not a kept benchmark; `make bench` keeps B2_L4096).
CHUNK_BY_CHUNK_MIN_NUMEL = 1 << 20


def _segment_masks(seq_idx, l, num_chunks, chunk):
    """seq_idx (b, l) -> masks over chunk positions, all bool.

    same (b, c, Q, Q): target q and source s belong to one sequence;
    from_prev (b, c, Q): position q continues the sequence alive before its chunk;
    end_same (b, c, Q): position s belongs to the sequence alive at its chunk's end.
    The state before position 0 belongs to the sequence at position 0.
    """
    seg = F.pad(seq_idx, (0, num_chunks * chunk - l), mode="replicate") if num_chunks * chunk > l else seq_idx
    seg = seg.view(seq_idx.shape[0], num_chunks, chunk)
    # The sequence alive when a chunk starts: the last one of the previous chunk.
    prev = torch.cat([seg[:, :1, 0], seg[:, :-1, -1]], dim=1)
    same = seg[..., :, None] == seg[..., None, :]
    return same, seg == prev[..., None], seg == seg[..., -1:]


def ssd_scan_torch(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                   seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False):
    """Chunked SSD scan; signature and semantics of `kernels.ssd.ssd_scan`.

    x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n), D (h,) or (h, p),
    z (b, l, h, p), dt_bias (h,), initial_states (b, h, p, n), seq_idx (b, l) int.
    Computes in fp32 (fp64 for fp64 x). Returns y (b, l, h, p) in x.dtype
    [, final_states (b, h, p, n) fp32 (fp64 for fp64 x)].
    """
    dtype = compute_dtype(x)
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)
    Q = min(chunk_size, MAX_CHUNK)
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, initial_states))
    by_chunk = not needs_graph and x.numel() >= CHUNK_BY_CHUNK_MIN_NUMEL
    scan = _scan_chunk_by_chunk if by_chunk else _scan_for_autograd
    y, state = scan(x, dt, A, B, C, Q, initial_states, seq_idx, dtype)
    y = gate_output(y, x.to(dtype), D, z).to(x.dtype)
    return (y, state) if return_final_states else y


def _scan_for_autograd(x, dt, A, B, C, Q, initial_states, seq_idx, dtype):
    """The scan as whole-sequence tensor ops, for autograd: dt processed; returns (y before D and z,
    final state (b, h, p, n)), both in `dtype`."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    c = -(-l // Q)
    pad = c * Q - l

    def chunked(t):
        # Zero padding is inert: dt = 0 means no decay and no input, so the final state
        # and the real positions are untouched.
        t = t.to(dtype)
        if pad:
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.view(b, c, Q, *t.shape[2:])

    xc = chunked(x).view(b, c, Q, g, r, p)
    Bc = chunked(B).transpose(2, 3)                          # (b, c, g, Q, n), a view
    Cc = chunked(C).transpose(2, 3)
    dtc = chunked(dt).view(b, c, Q, g, r)
    cum = (dtc * A.to(dtype).view(g, r)).cumsum(2)           # log-decay from chunk start to q, inclusive
    cum_h = cum.permute(0, 1, 3, 4, 2)                       # (b, c, g, r, Q)

    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    if seq_idx is not None:
        same, from_prev, end_same = _segment_masks(seq_idx, l, c, Q)
        causal = causal & same[:, :, None, None]             # (b, c, 1, 1, Q, Q)
        from_prev, end_same = from_prev[..., None, None], end_same[..., None, None]  # (b, c, Q, 1, 1)

    # 1. Inside each chunk, per head: y_q = sum_{s <= q} (C_q . B_s) exp(cum_q - cum_s) dt_s x_s.
    # masked_fill before exp: the upper triangle holds positive exponents that would overflow.
    decay = (cum_h[..., :, None] - cum_h[..., None, :]).masked_fill_(~causal, float("-inf")).exp_()
    CB = (Cc @ Bc.transpose(-1, -2))[:, :, :, None]          # (b, c, g, 1, Q, Q): shared by a group's heads
    # dt_s scales the source token: fold it into x (l * p values) rather than into the (Q, Q) matrix.
    x_dt = xc * dtc[..., None]                               # (b, c, Q, g, r, p)
    y_diag = (CB * decay) @ x_dt.permute(0, 1, 3, 4, 2, 5)   # (b, c, g, r, Q, p)

    # 2. The state each chunk adds, as seen at its end: sum_s exp(cum_end - cum_s) dt_s x_s B_s^T,
    # all r heads of a group in one (r p, Q) @ (Q, n) product.
    to_end = torch.exp(cum[:, :, -1:] - cum)                 # (b, c, Q, g, r)
    chunk_decay = torch.exp(cum[:, :, -1])                   # (b, c, g, r)
    if seq_idx is not None:
        to_end = to_end * end_same
        chunk_decay = chunk_decay * from_prev[:, :, -1]
    x_end = (x_dt * to_end[..., None]).view(b, c, Q, g, r * p).transpose(2, 3)   # (b, c, g, Q, r p)
    local = (x_end.transpose(-1, -2) @ Bc).view(b, c, g, r, p, n)

    # 3. Pass the state across chunks, a short sequential loop over l / Q chunks, and
    # 4. what the state entering a chunk gives its positions: y_q += exp(cum_q) C_q . S_enter,
    # per group (b, g, Q, n) @ (b, g, n, r p). unbind, not indexing: the backward of
    # local[:, k] would write a whole zero gradient per chunk.
    state = (x.new_zeros(b, g, r, p, n, dtype=dtype) if initial_states is None
             else initial_states.to(dtype).reshape(b, g, r, p, n))
    y_off = []
    for C_k, local_k, decay_k in zip(Cc.unbind(1), local.unbind(1), chunk_decay[..., None, None].unbind(1)):
        y_off.append(C_k @ state.view(b, g, r * p, n).transpose(-1, -2))
        state = torch.addcmul(local_k, decay_k, state)
    y_off = torch.stack(y_off, dim=1).view(b, c, g, Q, r, p).transpose(2, 3)   # (b, c, Q, g, r, p)
    from_start = torch.exp(cum)                              # (b, c, Q, g, r)
    if seq_idx is not None:
        from_start = from_start * from_prev
    y = y_off * from_start[..., None] + y_diag.permute(0, 1, 4, 2, 3, 5)
    return y.reshape(b, c * Q, h, p)[:, :l], state.reshape(b, h, p, n)


def _scan_chunk_by_chunk(x, dt, A, B, C, Q, initial_states, seq_idx, dtype):
    """The same scan without autograd (evaluation, generation's prefill, the benchmark's forward): one chunk
    at a time, so that every intermediate is a chunk-sized tile that stays in cache. The batched form writes
    and reads a sequence-long tensor at each elementwise step, and those passes were ~60% of its forward
    on a CPU. Same arguments and results as _scan_for_autograd."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    x, B, C = x.to(dtype), B.to(dtype), C.to(dtype)
    log_decay = dt * A.to(dtype)                             # (b, l, h)
    y = x.new_empty(b, l, h, p)
    state = (x.new_zeros(b, g, r, p, n) if initial_states is None
             else initial_states.to(dtype).reshape(b, g, r, p, n))
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    if seq_idx is not None:
        same, from_prev, end_same = _segment_masks(seq_idx, l, -(-l // Q), Q)
    for k, start in enumerate(range(0, l, Q)):
        q, chunk = min(Q, l - start), slice(start, start + Q)
        cum = log_decay[:, chunk].cumsum(1)                  # (b, q, h)
        cum_h = cum.transpose(1, 2)                          # (b, h, q)
        keep = causal[:q, :q] if seq_idx is None else causal[:q, :q] & same[:, k, None, :q, :q]
        decay = (cum_h[..., :, None] - cum_h[..., None, :]).masked_fill_(~keep, float("-inf")).exp_()
        B_k, C_k = B[:, chunk].transpose(1, 2), C[:, chunk].transpose(1, 2)   # (b, g, q, n)
        x_dt = x[:, chunk] * dt[:, chunk, :, None]           # (b, q, h, p)

        # Inside the chunk, per head: y_q = sum_{s <= q} (C_q . B_s) exp(cum_q - cum_s) dt_s x_s.
        M = decay.view(b, g, r, q, q) * (C_k @ B_k.transpose(-1, -2))[:, :, None]
        y_k = M @ x_dt.view(b, q, g, r, p).permute(0, 2, 3, 1, 4)            # (b, g, r, q, p)
        # The entering state: y_q += exp(cum_q) C_q . S.
        from_start = cum.exp() if seq_idx is None else cum.exp() * from_prev[:, k, :q, None]
        y_state = C_k[:, :, None] @ state.transpose(-1, -2)                   # (b, g, r, q, p)
        y_k.addcmul_(y_state, from_start.view(b, q, g, r, 1).permute(0, 2, 3, 1, 4))
        y[:, chunk].view(b, q, g, r, p).copy_(y_k.permute(0, 3, 1, 2, 4))

        # The state leaving the chunk: exp(cum_end) S + sum_s exp(cum_end - cum_s) dt_s x_s B_s^T.
        to_end = (cum[:, -1:] - cum).exp_()                  # (b, q, h)
        chunk_decay = cum[:, -1].exp()                       # (b, h)
        if seq_idx is not None:
            to_end = to_end * end_same[:, k, :q, None]
            chunk_decay = chunk_decay * from_prev[:, k, -1, None]
        x_end = (x_dt * to_end[..., None]).view(b, q, g, r * p).permute(0, 2, 3, 1)   # (b, g, r p, q)
        state = torch.baddbmm((state * chunk_decay.view(b, g, r, 1, 1)).view(b * g, r * p, n),
                              x_end.reshape(b * g, r * p, q), B_k.reshape(b * g, q, n)).view(b, g, r, p, n)
    return y, state.reshape(b, h, p, n)
