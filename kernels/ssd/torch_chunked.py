"""Chunked SSD (state-space duality) in plain torch: the CPU path and the GPU fallback.

The sequence is cut into chunks of Q tokens. Inside a chunk the scan is a masked
"attention" (C_t . B_s) * exp(cum_t - cum_s) * dt_s, a (Q, Q) matrix per head; across
chunks only the (p, n) state travels, through a short loop over chunks. Memory is
O(l * Q) per head, never O(l^2); autograd differentiates the plain torch ops.

Letters in the einsums: b batch, c chunk, q and s positions inside a chunk (q the
target, s the source), g group, r head inside its group (h = g * r), p head dim,
n state dim. Keeping heads as (g, r) lets every head of a group share one C B^T
product instead of repeating B and C per head.
"""
import torch
import torch.nn.functional as F

from kernels.ssd.naive import compute_dtype, gate_output, process_dt


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
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    Q = chunk_size
    c = -(-l // Q)
    pad = c * Q - l
    dtype = compute_dtype(x)

    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)

    def chunked(t):
        # Zero padding is inert: dt = 0 means no decay and no input, so the final state
        # and the real positions are untouched.
        t = t.to(dtype)
        if pad:
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.view(b, c, Q, *t.shape[2:])

    xc = chunked(x).view(b, c, Q, g, r, p)
    Bc, Cc = chunked(B), chunked(C)                       # (b, c, Q, g, n)
    dtc = chunked(dt).view(b, c, Q, g, r).permute(0, 3, 4, 1, 2)  # (b, g, r, c, Q)
    cum = (dtc * A.to(dtype).view(g, r, 1, 1)).cumsum(-1)  # log-decay from chunk start to q, inclusive

    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    if seq_idx is not None:
        same, from_prev, end_same = (m[:, None, None] for m in _segment_masks(seq_idx, l, c, Q))
        causal = causal & same

    # 1. Inside each chunk: y_q = sum_{s <= q} (C_q . B_s) exp(cum_q - cum_s) dt_s x_s.
    # masked_fill before exp: the upper triangle holds positive exponents that would overflow.
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill_(~causal, float("-inf")).exp_()
    CB = torch.einsum("bcqgn,bcsgn->bgcqs", Cc, Bc)[:, :, None]  # shared by the r heads of a group
    # dt_s scales the source token: fold it into x (l * p values) rather than into the (Q, Q) matrix.
    x_dt = xc * dtc.permute(0, 3, 4, 1, 2)[..., None]
    y = torch.einsum("bgrcqs,bcsgrp->bcqgrp", CB * decay, x_dt)

    # 2. The state each chunk adds, as seen at its end: sum_s exp(cum_end - cum_s) dt_s x_s B_s^T.
    to_end = torch.exp(cum[..., -1:] - cum)
    chunk_decay = torch.exp(cum[..., -1])                     # (b, g, r, c)
    if seq_idx is not None:
        to_end = to_end * end_same
        chunk_decay = chunk_decay * (from_prev[..., -1])
    local = torch.einsum("bcsgrp,bcsgn->bcgrpn", x_dt * to_end.permute(0, 3, 4, 1, 2)[..., None], Bc)

    # 3. Pass the state across chunks: a short sequential loop over l / Q chunks.
    state = (x.new_zeros(b, g, r, p, n, dtype=dtype) if initial_states is None
             else initial_states.to(dtype).reshape(b, g, r, p, n))
    entering = []
    for k in range(c):
        entering.append(state)
        state = chunk_decay[..., k, None, None] * state + local[:, k]
    entering = torch.stack(entering, dim=1)                  # (b, c, g, r, p, n): state before each chunk

    # 4. What the entering state contributes: y_q += exp(cum_q) C_q . S_enter.
    from_start = torch.exp(cum)
    if seq_idx is not None:
        from_start = from_start * from_prev
    y_off = torch.einsum("bcqgn,bcgrpn->bcqgrp", Cc, entering) * from_start.permute(0, 3, 4, 1, 2)[..., None]
    y = (y + y_off).reshape(b, c * Q, h, p)[:, :l]

    y = gate_output(y, x.to(dtype), D, z).to(x.dtype)
    return (y, state.reshape(b, h, p, n)) if return_final_states else y
