"""kernels.conv: the torch backend against the naive tap sum, chaining, the one-token step."""
import pytest
import torch

from kernels.conv import causal_conv1d, causal_conv1d_step

TOL_FP64 = (1e-10, 1e-8)


def inputs(b=2, d=6, l=17, w=4, bias=True, init=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    return dict(x=randn(b, d, l), weight=randn(d, w), bias=randn(d) if bias else None,
                initial_states=randn(b, d, w - 1) if init else None)


def outputs_and_grads(fn, kw, seed=1):
    y, final = fn(**kw, return_final_states=True)
    gen = torch.Generator().manual_seed(seed)
    cot = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (y, final)]
    names = [k for k, v in kw.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = torch.autograd.grad((y, final), [kw[k] for k in names], cot, allow_unused=True)
    return y, final, dict(zip(names, grads))


def assert_all_close(a, b, what):
    for got, want, name in zip(a[:2], b[:2], ("y", "final_states")):
        torch.testing.assert_close(got, want, atol=TOL_FP64[0], rtol=TOL_FP64[1], msg=f"{what}: {name}")
    assert set(a[2]) == set(b[2])
    for k in b[2]:
        torch.testing.assert_close(a[2][k], b[2][k], atol=TOL_FP64[0], rtol=TOL_FP64[1], msg=f"{what}: d{k}")


@pytest.mark.parametrize("w", [1, 2, 4])
@pytest.mark.parametrize("l", [1, 2, 17])
@pytest.mark.parametrize("bias, init, activation", [(True, True, "silu"), (False, False, None), (True, False, None)])
def test_torch_matches_naive(w, l, bias, init, activation):
    kw = inputs(l=l, w=w, bias=bias, init=init)
    got = outputs_and_grads(lambda **k: causal_conv1d(**k, activation=activation, backend="torch"), kw)
    want = outputs_and_grads(lambda **k: causal_conv1d(**k, activation=activation, backend="naive"), kw)
    assert_all_close(got, want, f"w={w} l={l}")


def test_naive_is_the_textbook_formula():
    """A hand-computed case: weights (1, 2, 3), history (10, 20), input (1, 2)."""
    x = torch.tensor([[[1.0, 2.0]]])
    weight = torch.tensor([[1.0, 2.0, 3.0]])
    history = torch.tensor([[[10.0, 20.0]]])
    y, final = causal_conv1d(x, weight, torch.tensor([0.5]), history, True, backend="naive")
    torch.testing.assert_close(y, torch.tensor([[[10 + 40 + 3 + 0.5, 20 + 2 + 6 + 0.5]]]))
    torch.testing.assert_close(final, torch.tensor([[[1.0, 2.0]]]))


@pytest.mark.parametrize("split", [1, 2, 9, 16])
def test_chaining_equals_whole(split):
    kw = inputs(l=17, w=4)

    def chained(x, weight, bias, initial_states, return_final_states):
        y1, state = causal_conv1d(x[..., :split], weight, bias, initial_states, True, "silu")
        y2, final = causal_conv1d(x[..., split:], weight, bias, state, True, "silu")
        return torch.cat([y1, y2], -1), final

    whole = outputs_and_grads(lambda **k: causal_conv1d(**k, activation="silu"), kw)
    assert_all_close(outputs_and_grads(chained, kw), whole, f"split {split}")


def test_step_repeated_equals_conv():
    kw = inputs(l=9, w=4)
    y_ref, f_ref = causal_conv1d(**kw, return_final_states=True, activation="silu")
    state, ys = kw["initial_states"], []
    for t in range(9):
        y, state = causal_conv1d_step(kw["x"][..., t], state, kw["weight"], kw["bias"], "silu")
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, -1), y_ref)
    torch.testing.assert_close(state, f_ref)


@pytest.mark.parametrize("bad, message", [
    (dict(initial_states=torch.zeros(2, 6, 4)), "initial_states.shape"),
    (dict(weight=torch.zeros(5, 4)), "weight"),
    (dict(bias=torch.zeros(3)), "bias.shape"),
    (dict(activation="relu"), "activation"),
    (dict(backend="triton"), "backend"),
])
def test_bad_input_names_the_argument(bad, message):
    with pytest.raises(ValueError, match=message):
        causal_conv1d(**{**inputs(), **bad})
