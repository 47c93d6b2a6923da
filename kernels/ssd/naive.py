"""The specification of the Mamba-2 SSD scan: a sequential recurrence, one token at a time.

Slow (a Python loop over the sequence) and obviously right; every other backend is
tested against it. It computes in fp32, or in fp64 when `x` is fp64 (for tight
gradient checks), and autograd differentiates it.

Per batch row and head, with dt already biased, soft-plussed and clamped:

    S_t = exp(A * dt_t) * S_{t-1} + dt_t * x_t B_t^T          S: (p, n)
    y_t = (S_t C_t + D * x_t) * silu(z_t)

`seq_idx` packs several sequences in one row: where seq_idx changes the state restarts
from zero. `initial_states` is the state before position 0 and belongs to the sequence
at position 0, so cutting a row anywhere and feeding final_states into the next piece
reproduces the whole row.
"""
import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64 (gradient checks); everything else accumulates in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def process_dt(dt, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")), dtype=torch.float32):
    """dt (b, l, h) -> dt + dt_bias, softplus, clamped to dt_limit, in `dtype` (mamba_ssm order)."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def gate_output(y, x, D=None, z=None, in_place=False):
    """y (b, l, h, p) scan output -> (y + D * x) * silu(z); D (h,) or (h, p), z like x.

    in_place overwrites y (outside autograd, when the caller owns it): a fresh output as large as the
    sequence costs its page faults, which on a CPU were a tenth of a chunked forward."""
    if D is not None:
        D = (D[:, None] if D.dim() == 1 else D).to(y.dtype)
        y = y.addcmul_(x, D) if in_place else torch.addcmul(y, x, D)  # one pass over y, not two
    if z is not None:
        gate = F.silu(z.to(y.dtype))
        y = y.mul_(gate) if in_place else y * gate
    return y


def ssd_scan_naive(x, dt, A, B, C, chunk_size=None, D=None, z=None, dt_bias=None, initial_states=None,
                   seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False):
    """Sequential SSD recurrence; same signature and semantics as `kernels.ssd.ssd_scan`.

    x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n) with h % g == 0,
    D (h,) or (h, p), z (b, l, h, p), dt_bias (h,), initial_states (b, h, p, n),
    seq_idx (b, l) int. `chunk_size` is ignored (the recurrence has no chunks).
    Returns y (b, l, h, p) in x.dtype [, final_states (b, h, p, n) fp32 (fp64 for fp64 x)].
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dtype = compute_dtype(x)
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)
    decay = torch.exp(A.to(dtype)[None, None, :] * dt)  # (b, l, h)
    # Each head reads the B and C of its group: head i uses group i // (h // g).
    Bh = B.to(dtype).repeat_interleave(h // g, dim=2)
    Ch = C.to(dtype).repeat_interleave(h // g, dim=2)
    xf = x.to(dtype)

    state = x.new_zeros(b, h, p, n, dtype=dtype) if initial_states is None else initial_states.to(dtype)
    ys = []
    for t in range(l):
        keep = decay[:, t, :, None, None]
        if seq_idx is not None and t > 0:
            # A new sequence starts here: forget the previous one's state.
            same = (seq_idx[:, t] == seq_idx[:, t - 1]).to(dtype)
            keep = keep * same[:, None, None, None]
        inject = (dt[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]  # (b, h, p, n)
        state = keep * state + inject
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if l > 0 else xf.new_zeros(b, 0, h, p)
    y = gate_output(y, xf, D, z).to(x.dtype)
    return (y, state) if return_final_states else y

