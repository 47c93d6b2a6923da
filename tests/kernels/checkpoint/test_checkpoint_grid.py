"""The checkpointed grid runner against a plain loop over the same stateful layers: outputs,
final states and every gradient (inputs, initial states, parameters), on grids that divide
neither the layers nor the sequence; and what it keeps for backward."""
import math

import pytest
import torch
from torch import nn

from kernels.checkpoint import checkpointed_grid


class ToyRecurrent(nn.Module):
    """A stateful sequence layer with a two-tensor state, like an SSM layer's (conv, ssm):
    h_t = sigmoid(a) * h_{t-1} + tanh(x_t W);  y_t = x_t + h_t + 0.5 * x_{t-1}.
    x (b, s, d), state (h (b, d), x_prev (b, d)) or None (zeros)."""

    def __init__(self, d):
        super().__init__()
        self.W = nn.Parameter(torch.randn(d, d) / math.sqrt(d))
        self.a = nn.Parameter(torch.randn(d))

    def forward(self, x, state=None):
        h, prev = (torch.zeros_like(x[:, 0]), torch.zeros_like(x[:, 0])) if state is None else state
        ys = []
        for t in range(x.shape[1]):
            h = torch.sigmoid(self.a) * h + torch.tanh(x[:, t] @ self.W)
            ys.append(x[:, t] + h + 0.5 * prev)
            prev = x[:, t]
        return torch.stack(ys, 1), (h, prev)


def plain(layers, x, states):
    finals = []
    for f, s in zip(layers, states):
        x, s = f(x, s)
        finals.append(s)
    return x, finals


def run_and_grad(run, layers, x, states, dy, dstates):
    x = x.clone().requires_grad_()
    states = [None if s is None else tuple(t.clone().requires_grad_() for t in s) for s in states]
    y, finals = run(layers, x, states)
    # A gradient arrives on the output and on some final states (a later piece used them).
    loss = (y * dy).sum() + sum((t * d).sum() for s, ds in zip(finals, dstates) for t, d in zip(s, ds))
    params = [p for f in layers for p in f.parameters()]
    state_tensors = [t for s in states if s is not None for t in s]
    grads = torch.autograd.grad(loss, [x, *state_tensors, *params])
    return y.detach(), [t.detach() for s in finals for t in s], grads


@pytest.mark.parametrize("group_size, block_size", [(1, None), (2, 4), (3, 7), (5, 1), (5, 30), (2, 100)])
@pytest.mark.parametrize("with_initial_states", [False, True])
def test_grid_equals_plain_loop(group_size, block_size, with_initial_states):
    torch.manual_seed(0)
    n_layers, b, seqlen, d = 5, 2, 17, 6
    layers = [ToyRecurrent(d) for _ in range(n_layers)]
    x, dy = torch.randn(b, seqlen, d), torch.randn(b, seqlen, d)
    states = [(torch.randn(b, d), torch.randn(b, d)) if with_initial_states and k % 2 == 0 else None
              for k in range(n_layers)]
    dstates = [(torch.randn(b, d), torch.randn(b, d)) if k in (0, 3) else (torch.zeros(b, d),) * 2
               for k in range(n_layers)]
    ref = run_and_grad(plain, layers, x, states, dy, dstates)
    grid = run_and_grad(lambda f, x, s: checkpointed_grid(f, x, s, group_size, block_size),
                        layers, x, states, dy, dstates)
    (y, finals, grads), (y_ref, finals_ref, grads_ref) = grid, ref
    for got, want in zip([y, *finals, *grads], [y_ref, *finals_ref, *grads_ref]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_input_without_grad_and_shared_params():
    torch.manual_seed(0)
    layers = [ToyRecurrent(4) for _ in range(3)]
    layers[1].W.requires_grad_(False)
    scale = torch.tensor(1.5, requires_grad=True)  # closed over by a plain callable

    def scaled(x, state):
        y, state = layers[2](x * scale, state)
        return y, state

    stack = [layers[0], layers[1], scaled]
    x = torch.randn(1, 9, 4)  # no grad: like frozen vision features
    y_ref, _ = plain(stack, x, [None] * 3)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [layers[0].W, layers[2].a, scale])
    # A plain callable declares the tensors it closes over; a Module's parameters are found.
    y, _ = checkpointed_grid(stack, x, None, group_size=2, block_size=4,
                             shared_params=[scale, *layers[2].parameters()])
    loss = y.square().sum()
    grads = torch.autograd.grad(loss, [layers[0].W, layers[2].a, scale], retain_graph=True)
    for g, w in zip(grads, grads_ref):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert layers[1].W.grad is None and layers[0].W.grad is not None


def test_keeps_only_group_inputs_and_block_states():
    """Saved for backward (beyond x and the parameters): the input of every group after the
    first, for all S tokens, and every layer's state at every block start after the first."""
    torch.manual_seed(0)
    n_layers, b, seqlen, d, l, s = 5, 2, 23, 8, 2, 5
    layers = [ToyRecurrent(d) for _ in range(n_layers)]
    x = torch.randn(b, seqlen, d, requires_grad=True)
    known = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for f in layers for p in f.parameters()}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in known:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = checkpointed_grid(layers, x, None, group_size=l, block_size=s)
    groups, blocks = math.ceil(n_layers / l), math.ceil(seqlen / s)
    expected = (groups - 1) * b * seqlen * d * 4 + n_layers * (blocks - 1) * 2 * b * d * 4
    assert sum(storages.values()) == expected

    storages.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        plain(layers, x, [None] * n_layers)
    assert sum(storages.values()) > 4 * expected  # the plain loop keeps every step of every layer


def test_bad_arguments_raise():
    layers = [ToyRecurrent(2)]
    with pytest.raises(ValueError, match="group_size = 2"):
        checkpointed_grid(layers, torch.randn(1, 3, 2), group_size=2)
    with pytest.raises(ValueError, match="2 states for 1 layers"):
        checkpointed_grid(layers, torch.randn(1, 3, 2), [None, None])
