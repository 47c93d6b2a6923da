"""Causal depthwise conv1d (Mamba's short conv) with differentiable initial and final states.

State layout, shared by `causal_conv1d` (initial_states / final_states) and
`causal_conv1d_step` (conv_state): (b, d, w-1), the last w-1 inputs, oldest first,
newest at index -1. A sequence cut anywhere and run piece by piece, each piece starting
from the previous piece's final state, gives the same outputs as the whole sequence.
(mamba_ssm's `causal_conv1d_update` keeps a (b, d, w) buffer and updates it in place;
ours is w-1 long, functional and differentiable.)

Backends: "naive" (explicit tap sum, the specification), "torch" (grouped F.conv1d),
"auto" (torch on every device: there is no Triton conv here yet; logs that once).
"""
import logging

from kernels.conv.naive import causal_conv1d_naive
from kernels.conv.torch_conv import causal_conv1d_step_torch, causal_conv1d_torch

__all__ = ["causal_conv1d", "causal_conv1d_step", "BACKENDS"]

BACKENDS = ("auto", "torch", "naive")
log = logging.getLogger(__name__)
_auto_logged = False


def causal_conv1d(x, weight, bias=None, initial_states=None, return_final_states=False, activation=None,
                  backend="auto"):
    """Causal depthwise conv: x (b, d, l), weight (d, w), bias (d,) or None,
    initial_states (b, d, w-1) or None (zeros), activation None or "silu".

    y[:, :, t] = act(bias + sum_k weight[:, k] * [initial_states | x][:, :, t + k]).
    Returns y (b, d, l) [, final_states (b, d, w-1)], in x.dtype. Differentiable in x,
    weight, bias and initial_states; a gradient on final_states flows back.
    """
    global _auto_logged
    if backend not in BACKENDS:
        raise ValueError(f"kernels.conv.causal_conv1d: backend = {backend!r}, expected one of {BACKENDS}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"kernels.conv.causal_conv1d: x {tuple(x.shape)}, weight {tuple(weight.shape)} "
                         "do not fit x (b, d, l), weight (d, w)")
    b, d, _ = x.shape
    w = weight.shape[1]
    if initial_states is not None and tuple(initial_states.shape) != (b, d, w - 1):
        raise ValueError(f"kernels.conv.causal_conv1d: initial_states.shape = {tuple(initial_states.shape)}, "
                         f"expected {(b, d, w - 1)}")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"kernels.conv.causal_conv1d: bias.shape = {tuple(bias.shape)}, expected {(d,)}")
    if backend == "auto":
        backend = "torch"
        if not _auto_logged:
            _auto_logged = True
            log.info("kernels.conv.causal_conv1d: backend 'auto' runs 'torch' (no Triton conv yet)")
    run = causal_conv1d_naive if backend == "naive" else causal_conv1d_torch
    return run(x, weight, bias, initial_states, return_final_states, activation)


def causal_conv1d_step(x, conv_state, weight, bias=None, activation=None):
    """One token: x (b, d), conv_state (b, d, w-1) (layout above), weight (d, w), bias (d,) ->
    (y (b, d), new_conv_state (b, d, w-1)). Calling it l times equals `causal_conv1d` over
    the l tokens with initial_states=conv_state. Does not modify conv_state."""
    if x.dim() != 2 or tuple(conv_state.shape) != (x.shape[0], x.shape[1], weight.shape[1] - 1):
        raise ValueError(f"kernels.conv.causal_conv1d_step: x {tuple(x.shape)}, conv_state "
                         f"{tuple(conv_state.shape)}, weight {tuple(weight.shape)} do not fit "
                         "x (b, d), conv_state (b, d, w-1), weight (d, w)")
    return causal_conv1d_step_torch(x, conv_state, weight, bias, activation)
