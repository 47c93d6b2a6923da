"""One recurrent SSD step, for generation and streaming (one token per call)."""
import torch

from kernels.ssd.naive import compute_dtype, gate_output, process_dt


def ssd_step_torch(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                   dt_limit=(0.0, float("inf"))):
    """state (b, h, p, n), x (b, h, p), dt (b, h), A (h,), B and C (b, g, n), D (h,) or (h, p),
    z (b, h, p), dt_bias (h,) -> (y (b, h, p) in x.dtype, new_state (b, h, p, n) fp32 (fp64 for fp64 x)).

    S' = exp(A dt) S + dt x B^T ;  y = (S' C + D x) * silu(z). Differentiable; does not modify `state`.
    """
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    dtype = compute_dtype(x)
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)                 # (b, h)
    xs = x.to(dtype).view(b, g, h // g, p)
    decay = torch.exp(A.to(dtype) * dt).view(b, g, h // g, 1, 1)
    inject = torch.einsum("bgrp,bgn->bgrpn", xs * dt.view(b, g, h // g, 1), B.to(dtype))
    new_state = decay * state.to(dtype).view(b, g, h // g, p, n) + inject
    y = torch.einsum("bgrpn,bgn->bgrp", new_state, C.to(dtype)).reshape(b, 1, h, p)
    y = gate_output(y, x.to(dtype)[:, None], D, None if z is None else z[:, None])
    return y[:, 0].to(x.dtype), new_state.reshape(b, h, p, n)
