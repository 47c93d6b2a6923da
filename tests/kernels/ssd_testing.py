"""Shared inputs, cases and tolerances for the SSD tests: one place to read what is compared how."""
import contextlib
import dataclasses
import os

import pytest
import torch

from kernels.benchmarks.peers import MAMBA_SSM_INSTALL, mamba_ssm_imported, mamba_ssm_installed

# Triton's interpreter: tests/conftest.py turns it on where CUDA is absent, before this module is imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs the Triton interpreter (on where CUDA is absent)")
NO_MAMBA_SSM = f"mamba-ssm is not installed; install it with: {MAMBA_SSM_INSTALL}"
needs_mamba_ssm = pytest.mark.skipif(not mamba_ssm_installed(), reason=NO_MAMBA_SSM)


@contextlib.contextmanager
def mamba_ssm_or_skip(interpreted=False):
    """For a fixture: mamba_ssm imported for one test (its Triton kernels in the interpreter if `interpreted`),
    or the test skipped, saying how to install it."""
    if not mamba_ssm_installed():
        pytest.skip(NO_MAMBA_SSM)
    if interpreted and not INTERPRETED:
        pytest.skip("needs the Triton interpreter (on where CUDA is absent)")
    with mamba_ssm_imported(interpreted=interpreted):
        yield


@dataclasses.dataclass(frozen=True)
class Normwise:
    """A tolerance against the reference's scale rather than element by element: after 16-bit rounding
    an element near zero has no meaningful relative error (the first GPU run failed 1 element in 5,000
    that way, off by 0.032 where 0.03 was allowed)."""
    rms: float  # rms(actual - expected) / rms(expected)
    max: float  # max |actual - expected| / max |expected|


# Named tolerances, per compute dtype of the backend under test: (atol, rtol) element by element, or Normwise.
TOL_FP64 = (1e-9, 1e-7)          # same math, different association: rounding only
TOL_FP32 = (2e-4, 2e-3)          # fp32 chunked vs fp64 sequential on O(1) values
TOL_FP32_GRAD = (1e-3, 5e-3)     # gradients sum over l and heads: a bit looser
TOL_BF16 = Normwise(rms=1e-2, max=5e-2)  # GPU tier: bf16 products, outputs rounded to bf16 (2^-9)
TOL_FP16 = Normwise(rms=5e-3, max=2e-2)  # outputs rounded to fp16 (2^-12)
TOL_TF32 = Normwise(rms=2e-3, max=1e-2)  # fp32 against mamba_ssm, whose fp32 products are tf32


@dataclasses.dataclass(frozen=True)
class Case:
    """One SSD problem: sizes and which optional inputs are present."""
    name: str
    b: int = 2
    l: int = 37
    h: int = 4
    p: int = 8
    g: int = 2
    n: int = 16
    chunk: int = 16
    D: str | None = "h"            # None | "h" | "hp"
    z: bool = True
    dt_bias: bool = True
    softplus: bool = True
    dt_limit: tuple = (0.0, float("inf"))
    init: bool = True
    seq_idx: bool = False


CASES = [
    Case("ragged_l"),                                         # l not a multiple of the chunk
    Case("l_below_chunk", b=1, l=5, chunk=16),
    Case("l_one", b=1, l=1, chunk=16),
    Case("exact_chunks_g_eq_h", l=32, g=4, chunk=8, D="hp"),
    Case("single_group_D_hp", g=1, D="hp"),
    Case("bare", D=None, z=False, dt_bias=False, softplus=False, init=False),
    Case("dt_limit", dt_limit=(0.05, 0.4), init=False),
    Case("seq_idx", l=45, chunk=8, seq_idx=True),
    Case("seq_idx_no_init", l=29, chunk=16, seq_idx=True, init=False, z=False),
    # A requested chunk above the torch backend's MAX_CHUNK (64) runs as several of 64: 3 of them here.
    Case("chunk_above_cap", b=1, l=150, h=2, p=4, g=1, n=8, chunk=256, seq_idx=True),
]


def make_inputs(case: Case, dtype=torch.float64, device="cpu", seed=0):
    """Random inputs for `case` as a dict of ssd_scan keyword arguments (tensors require grad).

    dt before softplus ~ N(-1, 1) so decays span (0.3, 1): states neither vanish nor explode.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift
        return t.to(device=device, dtype=dtype).requires_grad_()

    c = case
    dt_raw = randn(c.b, c.l, c.h, shift=-1.0)
    if not c.softplus:  # dt must be positive without softplus
        dt_raw = (torch.rand(c.b, c.l, c.h, generator=gen, dtype=torch.float64) * 0.5 + 0.05).to(
            device=device, dtype=dtype).requires_grad_()
    # A stays fp32 for low-precision runs, as in mamba_ssm (A = -exp(A_log.float())).
    A_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    A = (-torch.rand(c.h, generator=gen, dtype=torch.float64) * 1.5 - 0.1).to(device=device, dtype=A_dtype)
    kw = dict(
        x=randn(c.b, c.l, c.h, c.p), dt=dt_raw, A=A.requires_grad_(),
        B=randn(c.b, c.l, c.g, c.n, scale=0.5), C=randn(c.b, c.l, c.g, c.n, scale=0.5),
        chunk_size=c.chunk, dt_softplus=c.softplus, dt_limit=c.dt_limit,
        D={"h": randn(c.h), "hp": randn(c.h, c.p), None: None}[c.D],
        z=randn(c.b, c.l, c.h, c.p) if c.z else None,
        dt_bias=randn(c.h, scale=0.5) if c.dt_bias else None,
        initial_states=randn(c.b, c.h, c.p, c.n) if c.init else None,
    )
    if c.seq_idx:
        # Row 0: three packed sequences with boundaries off the chunk grid; row 1: one sequence.
        cuts = torch.zeros(c.b, c.l, dtype=torch.int32)
        cuts[0, c.l // 3:] += 1
        cuts[0, (2 * c.l) // 3 + 1:] += 1
        kw["seq_idx"] = cuts.to(device)
    return kw


def as_float64(kw):
    """The same inputs in fp64 (new leaves): the exact reference for a run on 16-bit inputs, so that a
    comparison measures the kernel's rounding and not the inputs'."""
    return {k: v.detach().double().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor)
            and v.is_floating_point() else v for k, v in kw.items()}


def differentiable(kw):
    """Names of the tensor inputs that require grad, in a fixed order."""
    return [k for k, v in kw.items() if isinstance(v, torch.Tensor) and v.requires_grad]


def run_with_grads(fn, kw, seed=1):
    """Run fn(**kw, return_final_states=True); backprop random cotangents on y and final_states.

    Returns (y, final_states, {input name: grad}). The cotangent on final_states checks that
    a gradient arriving there flows back into every input.
    """
    y, final = fn(**kw, return_final_states=True)
    gen = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y)
    dfinal = torch.randn(final.shape, generator=gen, dtype=torch.float64).to(final)
    names = differentiable(kw)
    grads = torch.autograd.grad((y, final), [kw[k] for k in names], (dy, dfinal), allow_unused=True)
    return y.detach(), final.detach(), dict(zip(names, grads))


def assert_close(actual, expected, tol, what):
    assert actual is not None, f"{what}: no gradient"
    if isinstance(tol, Normwise):
        diff, ref = (actual.double() - expected.double()), expected.double()
        rms = (diff.square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-30)).item()
        worst = (diff.abs().max() / ref.abs().max().clamp_min(1e-30)).item()
        assert rms <= tol.rms and worst <= tol.max, (
            f"{what}: rms error {rms:.2e} of the reference's rms (allowed {tol.rms:.0e}), max error {worst:.2e} "
            f"of its max (allowed {tol.max:.0e})")
        return
    atol, rtol = tol
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
