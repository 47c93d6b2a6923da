"""The specification of the causal depthwise conv1d: an explicit sum over the w taps.

    y[:, :, t] = act(bias + sum_k weight[:, k] * xx[:, :, t + k]),  xx = [initial_states | x]

so weight[:, -1] multiplies the current token and initial_states (b, d, w-1) holds the
w-1 inputs before position 0, oldest first (zeros when None). The final state is the last
w-1 entries of xx: exactly the initial state of the next piece.
"""
import torch
import torch.nn.functional as F


def apply_activation(y, activation):
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"kernels.conv: activation = {activation!r}, expected None or 'silu'")


def causal_conv1d_naive(x, weight, bias=None, initial_states=None, return_final_states=False, activation=None):
    """x (b, d, l), weight (d, w), bias (d,), initial_states (b, d, w-1) ->
    y (b, d, l) in x.dtype [, final_states (b, d, w-1) in x.dtype]. Computes in fp32 (fp64 for fp64)."""
    b, d, l = x.shape
    w = weight.shape[1]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    history = x.new_zeros(b, d, w - 1, dtype=dtype) if initial_states is None else initial_states.to(dtype)
    xx = torch.cat([history, x.to(dtype)], dim=-1)                     # (b, d, w - 1 + l)
    y = sum(weight[:, k, None].to(dtype) * xx[:, :, k:k + l] for k in range(w))
    if bias is not None:
        y = y + bias[:, None].to(dtype)
    y = apply_activation(y, activation).to(x.dtype)
    return (y, xx[:, :, xx.shape[-1] - (w - 1):].to(x.dtype)) if return_final_states else y
