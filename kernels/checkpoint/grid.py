"""The MA-GC checkpointed grid runner: a stack of stateful sequence layers, recomputed cell by cell.

A layer is any callable `f(h, state) -> (h_out, new_state)`: h (b, s, ...) a block of tokens
(sequence on dim 1), state a tuple of tensors carried from the previous block (None before
the first block: the layer starts from its zero state). Feeding a sequence block by block,
each block starting from the previous block's final state, must equal feeding it whole —
exactly what an SSM layer with differentiable initial/final states gives.

The grid: layers are cut into groups of l, the sequence into blocks of s tokens. Forward runs
without autograd and keeps only (a) each group's input for all S tokens and (b) every layer's
state at every block start. Backward walks the cells in reverse — blocks last to first, and in
a block groups top to bottom — recomputes one cell (l layers x s tokens) from its kept input
and states with autograd on, and backpropagates it: the gradient of the cell input goes to the
group below, the gradients of its initial states to the previous block (as d final states).
Memory: (L/l) S C_L + L (S/s) C_S + one cell's activations, instead of L S C_grid.

Why a custom autograd.Function and not torch.utils.checkpoint per cell (the authors' choice):
- the order of recomputation is explicit, so exactly one cell's activations and one block's
  state gradients are alive at any time, whatever order the autograd engine would pick;
- what is kept is saved with ctx.save_for_backward, so saved-tensor hooks (memory accounting,
  offloading) see it; non-reentrant checkpoint keeps cell inputs in Python closures, invisible
  to those hooks;
- the forward runs once under no_grad with no per-cell bookkeeping.
Parameters are inputs of the Function and their gradients are returned from its backward
(summed over the cells that use them), so torch.autograd.grad over parameters, DDP's gradient
hooks and frozen parameters all behave as without checkpointing. Double backward is not
supported. Layers must be deterministic (no dropout): the RNG state is not replayed.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

State = tuple[torch.Tensor, ...]
Layer = Callable[[torch.Tensor, "State | None"], "tuple[torch.Tensor, State]"]


def checkpointed_grid(layers: Sequence[Layer], x: torch.Tensor, states: Sequence[State | None] | None = None,
                      group_size: int = 1, block_size: int | None = None,
                      shared_params: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, list[State]]:
    """Run `layers` over x (b, S, ...) on an l x s checkpoint grid; returns (y (b, S, ...),
    per-layer final states). Differentiable in x, in the tensors of `states` and in the
    parameters: those of layers that are nn.Modules, plus `shared_params` (tensors a plain
    callable closes over; they are treated as used by every layer).

    group_size l in [1, len(layers)]: the input of every l-th layer is kept.
    block_size s >= 1 (None: S, one block): every layer's state is kept every s tokens.
    l = 1, s = S is per-layer checkpointing; l = L, s = S keeps only x.
    """
    n_layers = len(layers)
    if n_layers == 0:
        raise ValueError("checkpointed_grid: no layers")
    if x.dim() < 2 or x.shape[1] == 0:
        raise ValueError(f"checkpointed_grid: x.shape = {tuple(x.shape)}, expected (b, S, ...) with S >= 1")
    seqlen = x.shape[1]
    block_size = seqlen if block_size is None else block_size
    if not 1 <= group_size <= n_layers:
        raise ValueError(f"checkpointed_grid: group_size = {group_size}, expected an int in [1, {n_layers}]")
    if block_size < 1:
        raise ValueError(f"checkpointed_grid: block_size = {block_size}, expected >= 1")
    states = [None] * n_layers if states is None else list(states)
    if len(states) != n_layers:
        raise ValueError(f"checkpointed_grid: {len(states)} states for {n_layers} layers")

    # Parameters, each once, and for each layer the indices of those it uses.
    params: list[torch.Tensor] = []
    index: dict[int, int] = {}

    def param_ids(tensors):
        ids = []
        for p in tensors:
            if p.requires_grad:
                if id(p) not in index:
                    index[id(p)] = len(params)
                    params.append(p)
                ids.append(index[id(p)])
        return ids

    shared = param_ids(shared_params)
    layer_params = [sorted(set(shared + param_ids(f.parameters() if isinstance(f, nn.Module) else ())))
                    for f in layers]

    state_sizes = [None if s is None else len(s) for s in states]
    flat_states = [t for s in states if s is not None for t in s]
    spec = _GridSpec(layers=list(layers), group_size=group_size, block_size=min(block_size, seqlen),
                     layer_params=layer_params, state_sizes=state_sizes, n_params=len(params))
    y, *flat_final = _Grid.apply(spec, x, *flat_states, *params)
    return y, _unflatten(flat_final, spec.final_state_sizes)


@dataclass
class _GridSpec:
    layers: list[Layer]
    group_size: int
    block_size: int
    layer_params: list[list[int]]
    state_sizes: list[int | None]  # tensors per initial state (None: no initial state)
    n_params: int
    final_state_sizes: list[int] | None = None  # filled by the forward

    def groups(self) -> list[range]:
        n = len(self.layers)
        return [range(i, min(i + self.group_size, n)) for i in range(0, n, self.group_size)]

    def blocks(self, seqlen: int) -> list[tuple[int, int]]:
        return [(a, min(a + self.block_size, seqlen)) for a in range(0, seqlen, self.block_size)]


def _unflatten(flat: Sequence, sizes: Sequence[int | None]) -> list:
    out, i = [], 0
    for n in sizes:
        out.append(None if n is None else tuple(flat[i:i + n]))
        i += n or 0
    return out


def _compact(t: torch.Tensor) -> torch.Tensor:
    """A kept tensor must not pin a larger buffer it is a view of (a conv state sliced from a
    whole block's input would keep the block alive)."""
    if t.untyped_storage().nbytes() > t.numel() * t.element_size() or not t.is_contiguous():
        return t.clone(memory_format=torch.contiguous_format)
    return t


class _Grid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _GridSpec, x: torch.Tensor, *flat):
        n_layers, seqlen = len(spec.layers), x.shape[1]
        n_state = len(flat) - spec.n_params
        initial = _unflatten(flat[:n_state], spec.state_sizes)
        groups, blocks = spec.groups(), spec.blocks(seqlen)

        carry = list(initial)
        group_inputs: list[torch.Tensor | None] = [None] * len(groups)  # group 0 reads x itself
        kept_states: list[list[State]] = [[] for _ in range(n_layers)]  # layer k, blocks 1, 2, ...
        y = None
        for j, (a, b) in enumerate(blocks):
            h = x[:, a:b]
            for g, layer_ids in enumerate(groups):
                if g > 0:
                    if len(blocks) == 1:
                        group_inputs[g] = _compact(h)
                    else:
                        if group_inputs[g] is None:
                            group_inputs[g] = h.new_empty((h.shape[0], seqlen, *h.shape[2:]))
                        group_inputs[g][:, a:b] = h
                for k in layer_ids:
                    if j > 0:
                        kept_states[k].append(carry[k])
                    h, state = spec.layers[k](h, carry[k])
                    carry[k] = tuple(_compact(t) for t in state)
            if len(blocks) == 1:
                y = h
            else:
                if y is None:
                    y = h.new_empty((h.shape[0], seqlen, *h.shape[2:]))
                y[:, a:b] = h

        spec.final_state_sizes = [len(s) for s in carry]
        ctx.spec = spec
        ctx.n_state = n_state
        ctx.autocast = _autocast_state(x.device.type)
        kept = group_inputs[1:] + [t for k in kept_states for s in k for t in s]
        ctx.save_for_backward(x, *flat, *kept)
        ctx.set_materialize_grads(False)
        return (y, *[t for s in carry for t in s])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, *dfinal_flat):
        spec, n_state = ctx.spec, ctx.n_state
        saved = ctx.saved_tensors
        x, flat = saved[0], saved[1:1 + n_state + spec.n_params]
        initial = _unflatten(flat[:n_state], spec.state_sizes)
        params = flat[n_state:]
        groups, blocks = spec.groups(), spec.blocks(x.shape[1])
        rest = iter(saved[1 + n_state + spec.n_params:])
        group_inputs = [None] + [next(rest) for _ in groups[1:]]
        kept_states = [[tuple(next(rest) for _ in range(n)) for _ in blocks[1:]] for n in spec.final_state_sizes]

        needs = ctx.needs_input_grad
        x_needs_grad = needs[1]
        initial_needs_grad = _unflatten(needs[2:2 + n_state], spec.state_sizes)
        param_needs_grad = needs[2 + n_state:]
        dcarry = _unflatten(dfinal_flat, spec.final_state_sizes)  # per layer: grads of its current final state
        dparams: list[torch.Tensor | None] = [None] * spec.n_params
        dx = torch.zeros_like(x) if x_needs_grad else None

        for j in reversed(range(len(blocks))):
            a, b = blocks[j]
            dh = None if dy is None else dy[:, a:b]
            for g in reversed(range(len(groups))):
                layer_ids = groups[g]
                h_in = (x if g == 0 else group_inputs[g])[:, a:b].detach().requires_grad_(g > 0 or x_needs_grad)
                states_in = []
                for k in layer_ids:
                    if j == 0:
                        s, wants = initial[k], initial_needs_grad[k]
                        states_in.append(None if s is None else
                                         tuple(t.detach().requires_grad_(w) for t, w in zip(s, wants)))
                    else:
                        states_in.append(tuple(t.detach().requires_grad_(True) for t in kept_states[k][j - 1]))
                with torch.enable_grad(), _autocast(*ctx.autocast):
                    h, states_out = h_in, []
                    for k, s in zip(layer_ids, states_in):
                        h, s = spec.layers[k](h, s)
                        states_out.append(s)

                outputs, grads = [], []
                if dh is not None:
                    outputs.append(h)
                    grads.append(dh)
                for k, s in zip(layer_ids, states_out):
                    for t, dt in zip(s, dcarry[k] or ()):
                        if dt is not None and t.requires_grad:  # else it depends on nothing we differentiate
                            outputs.append(t)
                            grads.append(dt)
                state_inputs = [t for s in states_in if s is not None for t in s if t.requires_grad]
                param_ids = sorted({i for k in layer_ids for i in spec.layer_params[k] if param_needs_grad[i]})
                inputs = ([h_in] if h_in.requires_grad else []) + state_inputs + [params[i] for i in param_ids]
                got = (torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
                       if outputs and inputs else [None] * len(inputs))
                got = iter(got)
                dh = next(got) if h_in.requires_grad else None
                for k, s in zip(layer_ids, states_in):
                    dcarry[k] = None if s is None else tuple(next(got) if t.requires_grad else None for t in s)
                for i in param_ids:
                    d = next(got)
                    if d is not None:
                        dparams[i] = d if dparams[i] is None else dparams[i] + d
            if dx is not None and dh is not None:
                dx[:, a:b] = dh

        dinitial = []
        for s, d in zip(initial, dcarry):
            if s is not None:
                dinitial.extend(d if d is not None else [None] * len(s))
        return (None, dx, *dinitial, *dparams)


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _autocast(device_type: str, enabled: bool, dtype: torch.dtype):
    """Recompute under the autocast state the forward ran with."""
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)
