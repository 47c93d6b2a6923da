"""Causal depthwise conv1d in plain torch: one grouped F.conv1d over [initial_states | x]."""
import torch
import torch.nn.functional as F

from kernels.conv.naive import apply_activation


def causal_conv1d_torch(x, weight, bias=None, initial_states=None, return_final_states=False, activation=None):
    """x (b, d, l), weight (d, w), bias (d,), initial_states (b, d, w-1) ->
    y (b, d, l) [, final_states (b, d, w-1)], both in x.dtype; semantics of `causal_conv1d_naive`."""
    d, w = weight.shape
    if initial_states is None:
        # Left zero padding is the same as a zero initial state.
        xx = F.pad(x, (w - 1, 0))
    else:
        xx = torch.cat([initial_states.to(x.dtype), x], dim=-1)
    y = F.conv1d(xx, weight[:, None, :].to(x.dtype), None if bias is None else bias.to(x.dtype), groups=d)
    y = apply_activation(y, activation)
    return (y, xx[:, :, xx.shape[-1] - (w - 1):]) if return_final_states else y


def causal_conv1d_step_torch(x, conv_state, weight, bias=None, activation=None):
    """x (b, d), conv_state (b, d, w-1) -> (y (b, d), new_conv_state (b, d, w-1)); does not modify conv_state."""
    window = torch.cat([conv_state.to(x.dtype), x[:, :, None]], dim=-1)   # (b, d, w): oldest first
    y = (window * weight.to(x.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return apply_activation(y, activation), window[:, :, 1:]
