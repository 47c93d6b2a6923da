"""The benchmark compares like with like: every implementation it times computes the same y."""
import pytest
import torch

from kernels.benchmarks.registry import SSD_CPU, SSD_GPU, SSD_GPU_TINY, SSDShape, parse_shape
from kernels.benchmarks.ssd import (PROFILED_VARIANTS, combined_launch, compiled_shapes, fastest_launch, implementation,
                                    kernel_table, kernel_times, make_inputs, outputs, runner, triton_launched,
                                    triton_tuned, worst_difference)
from kernels.ssd.tuning import Tuner, candidates


def test_registry_names_describe_their_shapes():
    assert "B2_L4096_H8_P64_N128_C256" in SSD_CPU
    for registry in (SSD_CPU, SSD_GPU, SSD_GPU_TINY):
        for name, shape in registry.items():
            assert name == shape.name and name.startswith(f"B{shape.b}_L{shape.l}_H{shape.h}_P{shape.p}")
    with pytest.raises(ValueError, match="multiple"):
        SSDShape(b=1, l=8, h=3, p=16, n=16, chunk=16, g=2)


def test_compiled_shapes_hold_every_specialisation_the_gpu_suite_runs():
    # Triton compiles a kernel per constexpr values and per integer argument that is 1 or divisible by 16.
    def specialisation(s):
        sizes = (s.l, s.h, s.g, s.p, s.n, -(-s.l // s.chunk))  # the last: chunks
        return (s.h, s.g, s.p, s.n, s.chunk) + tuple((v == 1, v % 16 == 0) for v in sizes)
    compiled = compiled_shapes()
    assert {specialisation(s) for s in compiled} == {specialisation(s) for s in SSD_GPU.values()}
    assert len(compiled) == 4 and all(s.b == 1 and s.l <= 4096 for s in compiled)


def test_parse_shape_names_the_field_at_fault():
    assert parse_shape("B1_L64_H2_P16_N16_C32_G2") == SSDShape(b=1, l=64, h=2, p=16, n=16, chunk=32, g=2)
    with pytest.raises(ValueError, match="'X3'"):
        parse_shape("B1_L64_X3_P16_N16_C32")
    with pytest.raises(ValueError, match="lacks C"):
        parse_shape("B1_L64_H2_P16_N16")


@pytest.mark.parametrize("impl, tol", [("torch", 2e-3), ("transformers_torch", 2e-3), ("triton", 2e-3)])
def test_benchmarked_implementations_agree_with_naive(impl, tol):
    shape = SSD_GPU_TINY["B1_L40_H2_P16_N16_C16"]
    inputs = make_inputs(shape, torch.float32, "cpu")
    want = implementation("naive", shape)(**inputs)
    torch.testing.assert_close(implementation(impl, shape)(**inputs), want, atol=tol / 10, rtol=tol)


def test_swept_launch_computes_the_same_y():
    # The GPU suite's --launch-from column: our scan under a changed launch (here fp16 operands).
    shape = SSD_GPU_TINY["B1_L40_H2_P16_N16_C16"]
    inputs = make_inputs(shape, torch.float32, "cpu")
    want = implementation("naive", shape)(**inputs)
    torch.testing.assert_close(triton_launched(shape, dict(prec="fp16"))(**inputs), want, atol=1e-3, rtol=1e-2)


def test_tuned_column_runs_and_lists_the_launch_its_tuner_chose():
    # The GPU suite's --tuned column, on two of the launches (the interpreter is slow), each timed as given.
    shape = SSD_GPU_TINY["B1_L40_H2_P16_N16_C16"]
    inputs = make_inputs(shape, torch.float32, "cpu")
    times = {"default": 2.0, "states in one pass": 1.0}
    names = (*times, "16-bit entering states")  # not for fp32 inputs
    tuner = Tuner(None, lambda hpg: {name: candidates(hpg)[name] for name in names}, reps=1,
                  timer=lambda name, run, device: times[name], progress=False)
    y = triton_tuned(shape, tuner)(**inputs)
    torch.testing.assert_close(y, implementation("naive", shape)(**inputs), atol=2e-4, rtol=2e-3)
    table = tuner.table().splitlines()
    assert len(table) == 3 and table[2].endswith(
        "chunk 16; fwd | states in one pass | 1000.000 / 2000.000 | default 2000.000; states in one pass 1000.000; "
        "16-bit entering states: not a launch for these inputs |")


def test_gpu_suite_diff_column_finds_a_wrong_gradient():
    # The column that caught tf32's wrong dt gradients on the H200: every floating input's gradient compared.
    shape = SSD_GPU_TINY["B1_L40_H2_P16_N16_C16"]
    inputs = make_inputs(shape, torch.float32, "cpu")
    naive, torch_scan = implementation("naive", shape), implementation("torch", shape)
    want = outputs(naive, inputs, "fwd+bwd")
    assert sorted(want) == ["dA", "dB", "dC", "dD", "ddt", "ddt_bias", "dx"]
    _, diff = worst_difference(outputs(torch_scan, inputs, "fwd+bwd"), want)
    assert diff < 1e-4
    _, y_diff = worst_difference(outputs(torch_scan, inputs, "fwd"), outputs(naive, inputs, "fwd"))
    assert y_diff < 1e-4

    def dt_twice(x, dt, A, B, C, D, dt_bias):  # y unchanged, d dt doubled
        return torch_scan(x, 2 * dt - dt.detach(), A, B, C, D, dt_bias)
    assert worst_difference(outputs(dt_twice, inputs, "fwd+bwd"), want) == ("ddt", pytest.approx(1.0, rel=1e-3))


def test_fastest_launch_skips_what_did_not_run_or_drifted():
    seconds = {"default": {"fwd+bwd": 3.0}, "a": {"fwd+bwd": 2.0}, "b": {}, "c": {"fwd+bwd": 1.0}}
    assert fastest_launch(seconds, {"default": 0.0, "a": 1e-3, "b": 0.0, "c": 0.5}) == "a"
    assert fastest_launch(seconds, {"default": 0.0, "a": 1e-3, "b": 0.0, "c": 1e-3}) == "c"
    assert fastest_launch({"default": {}}, {"default": 0.0}) is None


def test_combined_launch_joins_the_fastest_forward_and_the_fastest_step():
    variants = {"default": {}, "fwd tile": dict(Q=32), "grad tile": dict(grad_Q=32),
                "both tiles": dict(Q=32, grad_Q=32)}
    diffs = dict.fromkeys(variants, 0.0)
    seconds = {"default": {"fwd": 2.0, "fwd+bwd": 9.0}, "fwd tile": {"fwd": 1.0, "fwd+bwd": 9.5},
               "grad tile": {"fwd": 2.1, "fwd+bwd": 8.0}, "both tiles": {"fwd": 1.5, "fwd+bwd": 8.5}}
    assert combined_launch(variants, seconds, diffs) == ("fwd tile + grad tile", dict(Q=32, grad_Q=32))
    seconds["both tiles"]["fwd"] = 0.9  # the fastest forward now changes grad_Q too: nothing to combine
    assert combined_launch(variants, seconds, diffs) is None
    seconds["both tiles"]["fwd"] = 1.5
    seconds["grad tile"]["fwd+bwd"] = seconds["both tiles"]["fwd+bwd"] = 9.9  # no step beats the default
    assert combined_launch(variants, seconds, diffs) is None


def test_the_profiled_variants_are_swept():
    # A renamed variant would silently lose its kernel times in the sweep's log.
    assert set(PROFILED_VARIANTS) <= set(candidates(heads_per_group=80))


def test_kernel_times_name_every_interpreted_kernel_of_a_step():
    # The GPU suite's "where a step's time goes": on a CPU the interpreted launches, named as CUDA names kernels.
    from triton.runtime.interpreter import InterpretedFunction
    run_before = InterpretedFunction.run
    shape = SSD_GPU_TINY["B1_L40_H2_P16_N16_C16"]
    scan, inputs = implementation("triton", shape), make_inputs(shape, torch.float32, "cpu")
    forward = kernel_times(runner(scan, inputs, "fwd"), "cpu")
    assert {k: n for k, (n, _) in forward.items()} == dict.fromkeys(
        ["_token_weights_fwd", "_cb_products", "_chunk_state", "_state_scan", "_chunk_output"], 1)
    step = kernel_times(runner(scan, inputs, "fwd+bwd"), "cpu")
    assert step["_chunk_state"][0] == step["_state_scan"][0] == 2 and "_chunk_grad_cols" in step
    assert all(seconds > 0 for _, seconds in step.values())
    assert InterpretedFunction.run is run_before


def test_kernel_table_ranks_each_implementation_and_sums_it():
    header, rows = kernel_table({"ours": {"a": (1, 1e-6), "b": (2, 3e-6)}, "peer": {"c": (1, 2e-6)}})
    assert header[:4] == ["ours: kernel", "ours: launches", "ours: us", "ours: % of all"] and len(header) == 8
    assert rows == [["`b`", "2", "3.0", "75.0", "`c`", "1", "2.0", "100.0"],
                    ["`a`", "1", "1.0", "25.0", "", "", "", ""],
                    ["all kernels", "3", "4.0", "100.0", "all kernels", "1", "2.0", "100.0"]]


def test_gpu_suite_keeps_what_it_measured_when_cut_short(tmp_path, monkeypatch):
    # gpu_check.sh stops the suite at its time limit: the shapes measured by then must be in the results file.
    from kernels.benchmarks import ssd

    def suite_stopped_after_one_shape(tiny, reps, swept, tuner, on_shape):
        on_shape(["shape", "mode"], [["B1_L40", "fwd"]], "### B1_L40, fwd\n")
        raise TimeoutError("the limit")
    monkeypatch.setattr(ssd, "gpu_suite", suite_stopped_after_one_shape)
    with pytest.raises(TimeoutError):
        ssd.main(["--suite", "gpu", "--tiny", "--out-dir", str(tmp_path)])
    text = next(tmp_path.glob("ssd_interpreter-tiny_*.md")).read_text()
    assert "stopped before its last shape" in text and "| B1_L40 | fwd |" in text
    assert text.endswith("## Where a step's time goes (" + ssd.STEP_PROFILES + ")\n\n### B1_L40, fwd\n")


def test_gpu_suite_runs_the_largest_shape_first_and_reports_in_registry_order(monkeypatch):
    # A suite cut at gpu_check.sh's limit loses its last shapes: the largest, where session 9's ratios were worst,
    # must not be one of them. Measuring and profiling are stubbed: this is about the order only.
    from kernels.benchmarks import ssd

    ran, seen = [], []
    monkeypatch.setattr(ssd, "_gpu_rows",
                        lambda shape, *_: ran.append(shape.name) or [[shape.name, mode] for mode in ssd.MODES])
    monkeypatch.setattr(ssd, "step_profiles", lambda shape, *_: f"### {shape.name}\n")
    monkeypatch.setattr(ssd, "copy_bandwidth", lambda device: 1e9)
    header, rows, profiles = ssd.gpu_suite(tiny=True, reps=1,
                                           on_shape=lambda _, rows, __: seen.append([row[0] for row in rows]))
    small, large = SSD_GPU_TINY  # 2 heads at 40 tokens, 4 at 64
    assert ran == [large, small]
    assert seen == [[large, large], [small, small, large, large]]
    assert [row[0] for row in rows] == [small, small, large, large]
    assert profiles == f"### {large}\n"  # the largest is profiled (the sweep's shape is not a tiny one)
