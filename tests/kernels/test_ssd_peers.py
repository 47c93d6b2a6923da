"""Parity with the peers on the same inputs: mamba_ssm's ssd_minimal_discrete and its Triton
mamba_chunk_scan_combined (run in the Triton interpreter), and transformers' Mamba2.

mamba_ssm installs pure-Python on a CPU; `kernels.benchmarks.peers.mamba_ssm_imported` imports it
for one test at a time (a stub for its CUDA extension, and every module it brought taken out
afterwards, so that transformers never sees it). The transformers tests call the torch reference
functions themselves (`__wrapped__`, set by transformers' kernel decorator), so import order cannot
switch them to a kernel.
"""
import pytest
import torch

from kernels.conv import causal_conv1d
from kernels.ssd import ssd_scan
from ssd_testing import (TOL_FP32, TOL_FP32_GRAD, TOL_FP64, Case, as_float64, assert_close, make_inputs,
                         mamba_ssm_or_skip, run_with_grads)


@pytest.fixture
def mamba_ssm_minimal():
    """mamba_ssm's `ssd_minimal_discrete`, imported for this test only."""
    with mamba_ssm_or_skip():
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
        yield ssd_minimal_discrete


def test_ssd_minimal_discrete_matches(mamba_ssm_minimal):
    """ssd_minimal_discrete takes pre-discretized inputs (x dt, A dt), per-head B, C and l % chunk == 0."""
    case = Case("minimal", l=32, chunk=8, g=2, D=None, z=False, dt_bias=False, softplus=False)
    kw = make_inputs(case, torch.float64)
    r = case.h // case.g

    def minimal(x, dt, A, B, C, chunk_size, initial_states, **_):
        y, final = mamba_ssm_minimal(x * dt[..., None], A * dt, B.repeat_interleave(r, 2),
                                     C.repeat_interleave(r, 2), chunk_size, initial_states[:, None])
        return y, final

    y_ref, f_ref, g_ref = run_with_grads(minimal, kw)
    y, f, grads = run_with_grads(lambda **k: ssd_scan(**k, backend="torch"), kw)
    assert_close(y, y_ref, TOL_FP64, "y vs ssd_minimal_discrete")
    assert_close(f, f_ref, TOL_FP64, "final_states vs ssd_minimal_discrete")
    for name in g_ref:
        assert_close(grads[name], g_ref[name], TOL_FP64, f"d{name} vs ssd_minimal_discrete")


@pytest.fixture
def mamba_chunk_scan_combined():
    """mamba_ssm's Triton scan, the one our `ssd_scan` is a drop-in for, in the Triton interpreter (the gpu tier
    compares the compiled one)."""
    with mamba_ssm_or_skip(interpreted=True):
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        yield mamba_chunk_scan_combined


PEER_CASES = [
    # Every option at once: z, D (h, p), dt_bias, softplus, dt_limit, initial and final states, packed
    # sequences (seq_idx starts at 0, where mamba_ssm's initial state and ours mean the same), g < h,
    # l not a multiple of the chunk.
    Case("every_option", l=45, p=16, chunk=16, D="hp", dt_limit=(0.05, 2.0), seq_idx=True),
    Case("bare_one_group", b=1, l=40, h=2, p=16, g=1, chunk=32, D=None, z=False, dt_bias=False,
         softplus=False, init=False),
]


@pytest.mark.parametrize("case", PEER_CASES, ids=lambda c: c.name)
def test_mamba_chunk_scan_combined_matches(mamba_chunk_scan_combined, case):
    """The same keyword arguments go to both: ours is a drop-in, gradients of every input included.
    mamba_ssm runs in fp32 (exact fp32 products in the interpreter); our recurrence in fp64 on the same values."""
    kw = make_inputs(case, torch.float32)
    y_ref, f_ref, g_ref = run_with_grads(mamba_chunk_scan_combined, kw)
    y, f, grads = run_with_grads(lambda **k: ssd_scan(**k, backend="naive"), as_float64(kw))
    assert_close(y_ref, y, TOL_FP32, "mamba_chunk_scan_combined's y")
    assert_close(f_ref, f, TOL_FP32, "mamba_chunk_scan_combined's final_states")
    assert set(g_ref) == set(grads)
    for name in grads:
        assert_close(g_ref[name], grads[name], TOL_FP32_GRAD, f"mamba_chunk_scan_combined's d{name}")


@pytest.fixture
def hf_mamba2():
    from transformers.models.mamba2 import modeling_mamba2
    return modeling_mamba2


def test_transformers_torch_chunk_scan_matches(hf_mamba2):
    """transformers' pure-torch SSD (fp32 inside), with D (h,), dt_bias, softplus, dt_limit, states."""
    torch_scan = hf_mamba2.mamba2_chunk_scan.__wrapped__
    assert torch_scan.__module__ == hf_mamba2.__name__, "expected transformers' own torch reference"
    case = Case("hf", l=37, chunk=16, z=False, dt_limit=(0.01, 2.0))
    kw = make_inputs(case, torch.float32)

    def reference(x, z, **k):  # transformers names x `hidden_states` and gates with z outside the scan
        return torch_scan(x, **k)

    y_ref, f_ref, g_ref = run_with_grads(reference, kw)
    y, f, grads = run_with_grads(lambda **k: ssd_scan(**k, backend="torch"), kw)
    assert_close(y, y_ref, TOL_FP32, "y vs transformers")
    assert_close(f, f_ref, TOL_FP32, "final_states vs transformers")
    for name in g_ref:
        assert_close(grads[name], g_ref[name], TOL_FP32_GRAD, f"d{name} vs transformers")


def test_transformers_mamba2_mixer_matches(hf_mamba2, monkeypatch):
    """A whole Mamba2Mixer (in_proj -> conv -> SSD -> gated norm -> out_proj) rebuilt on kernels.*."""
    # Force transformers' torch paths whatever was importable when the module was first imported.
    monkeypatch.setattr(hf_mamba2, "mamba2_chunk_scan", hf_mamba2.mamba2_chunk_scan.__wrapped__)
    monkeypatch.setattr(hf_mamba2, "causal_conv1d_fn", hf_mamba2.causal_conv1d_fn.__wrapped__)
    config = hf_mamba2.Mamba2Config(hidden_size=16, num_heads=4, head_dim=8, expand=2, state_size=16,
                                    n_groups=2, chunk_size=8, conv_kernel=4, time_step_limit=(0.0, 1.5))
    torch.manual_seed(0)
    mixer = hf_mamba2.Mamba2Mixer(config, layer_idx=0).eval()  # eval: no fused training shortcut
    hidden = torch.randn(2, 21, 16, requires_grad=True)

    def ours(hidden):
        b, l, _ = hidden.shape
        gate, xBC, dt = mixer.in_proj(hidden).split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], -1)
        xBC = causal_conv1d(xBC.transpose(1, 2), mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias,
                            activation="silu").transpose(1, 2)
        gn = mixer.n_groups * mixer.ssm_state_size
        x, B, C = xBC.split([mixer.intermediate_size, gn, gn], -1)
        y = ssd_scan(x.reshape(b, l, mixer.num_heads, mixer.head_dim), dt, -torch.exp(mixer.A_log.float()),
                     B.reshape(b, l, mixer.n_groups, -1), C.reshape(b, l, mixer.n_groups, -1), mixer.chunk_size,
                     D=mixer.D, dt_bias=mixer.dt_bias, dt_softplus=True, dt_limit=config.time_step_limit,
                     backend="torch")
        return mixer.out_proj(mixer.norm(y.reshape(b, l, -1), gate))

    want, got = mixer(hidden), ours(hidden)
    assert_close(got, want, TOL_FP32, "Mamba2Mixer output")
    params = [hidden, mixer.A_log, mixer.dt_bias, mixer.D, mixer.conv1d.weight, mixer.in_proj.weight]
    for name, a, b in zip(["hidden", "A_log", "dt_bias", "D", "conv1d.weight", "in_proj.weight"],
                          torch.autograd.grad(got.square().sum(), params),
                          torch.autograd.grad(want.square().sum(), params)):
        assert_close(a, b, TOL_FP32_GRAD, f"Mamba2Mixer d{name}")
