"""Chunked SSD (state-space duality) in plain torch: the CPU path and the GPU fallback.

The sequence is cut into chunks of at most Q tokens. Inside a chunk the scan is a masked
"attention" (C_q . B_s) * exp(cum_q - cum_s) * dt_s; across chunks only the (p, n) state
travels, through a short loop over chunks. Memory is O(l * Q), never O(l^2); autograd
differentiates the plain torch ops.

Letters: b batch, c chunk, q and s positions inside a chunk (q the target, s the
source), g group, r head inside its group (h = g * r), p head dim, n state dim.
Speed on a CPU comes from the layouts. The r heads of a group share B and C, and the decay
factorises, exp(cum_q - cum_s) = exp(rel_q) exp(-rel_s) with rel the log decay since the
chunk's first token, so all three products (inside the chunk, what a chunk adds to the state,
what the entering state gives each position) fold a group's heads into one (r * p)-wide matrix
per (batch, chunk, group), which is the input's own memory layout: nothing is per head and
(Q, Q). exp(+-rel) must stay inside fp32, which bounds how far a chunk may reach (MAX_SPAN).

Two forms of the same scan: with autograd, whole-sequence tensor ops on chunks of one length
(`_scan_for_autograd`); without (evaluation, prefill, the benchmark's forward), a loop that
finishes one chunk before the next (`_scan_chunk_by_chunk`), whose intermediates stay in cache.
"""
import torch
import torch.nn.functional as F

from kernels.ssd.naive import compute_dtype, gate_output, process_dt

# Inside a chunk the work per token grows with Q (the (Q, Q) products), across chunks it does
# not. At Mamba-2 sizes (n 128, p 64, b 2, l 4096) on this project's CPU, one thread, Q 32 / 64 / 128
# took 45 / 43 / 47 ms forward and 349 / 227 / 239 ms forward+backward (a side-by-side run in
# session 6, not a kept benchmark). Larger requested chunks run as several of this size, which
# changes nothing beyond rounding.
MAX_CHUNK = 64
# The in-chunk product rescales each token by exp(+-rel), rel its log decay since its chunk's first token;
# |rel| <= 60 keeps exp(rel) in [1e-26, 1e26], far inside fp32's range (about 1e+-38) for any dt * x below
# 1e12. Chunk by chunk, a chunk ends early where a head would pass it; with autograd, the chunk length
# is halved until every chunk fits.
MAX_SPAN = 60.0


def _segment_masks(seg, alive_before):
    """seg (..., q) the seq_idx of a chunk's positions, alive_before (...,) the sequence alive before the
    chunk -> masks over the chunk's positions, all bool:

    same (..., q, q): target q and source s belong to one sequence;
    from_prev (..., q): position q continues the sequence alive before its chunk;
    end_same (..., q): position s belongs to the sequence alive at its chunk's end.
    The state before position 0 belongs to the sequence at position 0.
    """
    return seg[..., :, None] == seg[..., None, :], seg == alive_before[..., None], seg == seg[..., -1:]


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
    scan = _scan_for_autograd if needs_graph else _scan_chunk_by_chunk
    y, state = scan(x, dt, A, B, C, Q, initial_states, seq_idx, dtype)
    y = gate_output(y, x.to(dtype), D, z, in_place=not needs_graph).to(x.dtype)
    return (y, state) if return_final_states else y


def _scan_for_autograd(x, dt, A, B, C, Q, initial_states, seq_idx, dtype):
    """The scan as whole-sequence tensor ops, for autograd: dt processed; returns (y before D and z,
    final state (b, h, p, n)), both in `dtype`.

    The chunks here all have one length, so where exp(+-rel) would leave fp32 (MAX_SPAN) that length is
    halved until every chunk fits (at 1 token, rel is 0)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    log_decay = dt * A.to(dtype)                             # (b, l, h)
    while Q > 1 and _max_span(log_decay, Q) > MAX_SPAN:
        Q //= 2
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
    cum = chunked(log_decay).view(b, c, Q, g, r).cumsum(2)
    rel = cum - cum[:, :, :1]                                # log decay since the chunk's first token
    enter = cum[:, :, 0].exp()                               # (b, c, g, r): the entering state through token 0
    leave = rel[:, :, -1].exp()                              # (b, c, g, r): from token 0 to the chunk's end

    CB = Cc @ Bc.transpose(-1, -2)                           # (b, c, g, Q, Q): shared by a group's heads
    keep = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    C_state, B_state = Cc, Bc
    if seq_idx is not None:
        seg = (F.pad(seq_idx, (0, pad), mode="replicate") if pad else seq_idx).view(b, c, Q)
        # The sequence alive when a chunk starts: the last one of the previous chunk (position 0's for the first).
        same, from_prev, end_same = _segment_masks(seg, torch.cat([seg[:, :1, 0], seg[:, :-1, -1]], dim=1))
        keep = keep & same[:, :, None]                       # (b, c, 1, Q, Q)
        C_state = Cc * from_prev[:, :, None, :, None]        # the entering state reaches q
        B_state = Bc * end_same[:, :, None, :, None]         # s reaches the chunk's end
    # masked_fill, not a product with the mask: autograd then keeps a bool mask, not a float one.
    CB = CB.masked_fill(~keep, 0.0)

    # 1. Sources exp(-rel_s) dt_s x_s, in the input's layout; (b, c, g, Q, r p) as a view.
    x_src = (xc * (chunked(dt).view(b, c, Q, g, r) * (-rel).exp())[..., None]).view(b, c, Q, g, r * p)
    x_src = x_src.transpose(2, 3)
    # 2. Inside each chunk: sum_{s <= q} (C_q . B_s) x_src_s, all heads of a group in one product,
    # 3. what a chunk adds to its state, sum_s x_src_s B_s^T, before the decay to its end, and
    # 4. the state passed across chunks (a short loop over l / Q chunks) and what it gives each position,
    #    C_q . S. unbind, not indexing: the backward of local[:, k] would write a whole zero gradient per chunk.
    y_in = CB @ x_src                                        # (b, c, g, Q, r p)
    local = (x_src.transpose(-1, -2) @ B_state).view(b, c, g, r, p, n)
    # The loop carries the state as it is after each chunk's first token: from one chunk's to the next's
    # it decays by `leave` then the next `enter` (the last chunk: by `leave` alone, to the sequence's end).
    state = (x.new_zeros(b, g, r, p, n, dtype=dtype) if initial_states is None
             else initial_states.to(dtype).reshape(b, g, r, p, n) * enter[:, 0, ..., None, None])
    onward = leave * torch.cat([enter[:, 1:], torch.ones_like(enter[:, :1])], dim=1)
    # The entering state reaches the chunk's end unless a sequence starts inside it.
    carry = [None] * c if seq_idx is None else from_prev[:, :, -1].to(dtype).view(b, c, 1, 1, 1, 1).unbind(1)
    y_state = []
    for C_k, local_k, onward_k, carry_k in zip(C_state.unbind(1), local.unbind(1),
                                               onward[..., None, None].unbind(1), carry):
        y_state.append(C_k @ state.view(b, g, r * p, n).transpose(-1, -2))
        state = (state + local_k if carry_k is None else torch.addcmul(local_k, state, carry_k)) * onward_k
    # y_q = exp(rel_q) (C_q . S + sum_{s <= q} (C_q . B_s) x_src_s)
    y = (torch.stack(y_state, dim=1) + y_in).transpose(2, 3).reshape(b, c, Q, g, r, p) * rel.exp()[..., None]
    return y.reshape(b, c * Q, h, p)[:, :l], state.reshape(b, h, p, n)


def _max_span(log_decay, Q):
    """The largest |log decay| from a chunk's first token to any of its tokens, with chunks of Q tokens."""
    b, l, h = log_decay.shape
    c = -(-l // Q)
    cum = F.pad(log_decay, (0, 0, 0, c * Q - l)).view(b, c, Q, h).cumsum(2)
    return float((cum - cum[:, :, :1]).abs().max().detach())


def _chunk_starts(log_decay, cum, Q):
    """The first token of each chunk, for the chunk-by-chunk scan; log_decay (b, l, h) and its cumulative
    sum cum, in fp64. Every Q tokens, except that a chunk ends before a token whose decay (or growth) since
    the chunk's first token passes exp(MAX_SPAN) in some head."""
    l = cum.shape[1]
    if _max_span(log_decay, Q) <= MAX_SPAN:                  # the usual case: no head decays that fast
        return list(range(0, l, Q))
    starts = [0]
    while True:
        s = starts[-1]
        too_far = (cum[:, s:s + Q] - cum[:, s:s + 1]).abs().amax(dim=(0, 2)) > MAX_SPAN
        s += int(F.pad(too_far, (0, 1), value=True).byte().argmax())   # the first token too far, or Q on
        if s >= l:
            return starts
        starts.append(s)


def _scan_chunk_by_chunk(x, dt, A, B, C, Q, initial_states, seq_idx, dtype):
    """The same scan without autograd (evaluation, generation's prefill, the benchmark's forward): one chunk
    at a time, so that every intermediate is a chunk-sized tile that stays in cache. Same arguments and
    results as _scan_for_autograd.

    Chunks are Q tokens long except where _chunk_starts ends one early to keep exp(+-rel) inside fp32."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    x, B, C = x.to(dtype), B.to(dtype), C.to(dtype)

    # Per-token weights for the whole sequence, (b, l, h); the loop below only slices them.
    log_decay = dt * A.to(dtype)
    cum = log_decay.cumsum(1, dtype=torch.float64)           # fp64: chunks subtract it at their first token
    starts = _chunk_starts(log_decay, cum, Q)
    lengths = [end - start for start, end in zip(starts, starts[1:] + [l])]
    first = torch.tensor(starts, dtype=torch.long, device=x.device).repeat_interleave(
        torch.tensor(lengths, dtype=torch.long, device=x.device))
    rel = (cum - cum[:, first]).to(dtype)                    # log decay since the token's chunk's first token
    grow = rel.exp()                                         # what an output is scaled by
    src = dt * (-rel).exp()                                  # what a source token is scaled by
    enter = log_decay[:, starts].exp()                       # (b, c, h): the entering state through token 0
    leave = grow[:, [start + q - 1 for start, q in zip(starts, lengths)]]   # (b, c, h): token 0 to the end

    y = x.new_empty(b, l, h, p)
    state = (x.new_zeros(b, g, r, p, n) if initial_states is None  # updated in place: the caller's is copied
             else initial_states.to(dtype, copy=True).reshape(b, g, r, p, n))
    # One view per chunk of everything the loop reads or writes, cut in one call each.
    per_chunk = zip(starts, lengths, *(t.split(lengths, dim=1) for t in (x, src, grow, B, C, y)),
                    enter.view(b, -1, g, r, 1, 1).unbind(1), leave.view(b, -1, g, r, 1, 1).unbind(1))
    for start, q, x_k, src_k, grow_k, B_k, C_k, y_k, enter_k, leave_k in per_chunk:
        B_k, C_k = B_k.transpose(1, 2), C_k.transpose(1, 2)  # (b, g, q, n)
        CB = (C_k @ B_k.transpose(-1, -2)).tril_()           # (b, g, q, q)
        if seq_idx is not None:
            same, from_prev, end_same = _segment_masks(seq_idx[:, start:start + q], seq_idx[:, max(start - 1, 0)])
            CB *= same[:, None]
            C_k = C_k * from_prev[:, None, :, None]
            B_k = B_k * end_same[:, None, :, None]

        state.mul_(enter_k)
        x_src = (x_k * src_k[..., None]).view(b, q, g, r * p).transpose(1, 2)   # (b, g, q, r p)
        # y_q = exp(rel_q) (C_q . S + sum_{s <= q} (C_q . B_s) x_src_s), all heads of a group at once.
        y_in = C_k @ state.view(b, g, r * p, n).transpose(-1, -2)                # (b, g, q, r p)
        y_in.view(b * g, q, r * p).baddbmm_(CB.view(b * g, q, q), x_src.reshape(b * g, q, r * p))
        torch.mul(y_in.view(b, g, q, r, p).transpose(1, 2), grow_k.view(b, q, g, r, 1),
                  out=y_k.view(b, q, g, r, p))

        # The state leaving the chunk: exp(rel_end) (S + sum_s x_src_s B_s^T).
        if seq_idx is not None:
            state.mul_(from_prev[:, -1].view(b, 1, 1, 1, 1))
        state.view(b * g, r * p, n).baddbmm_(x_src.reshape(b * g, q, r * p).transpose(1, 2),
                                             B_k.reshape(b * g, q, n))
        state.mul_(leave_k)
    return y, state.reshape(b, h, p, n)
