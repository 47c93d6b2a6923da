"""The bytes model behind kernels.benchmarks.predict: its premise (footprint linear in b l, affine in h)
checked on counted scans, and its arithmetic and table reading checked by hand."""

import pytest

from kernels.benchmarks import predict
from kernels.benchmarks.registry import SSD_GPU, SSDShape
from ssd_testing import needs_interpreter, needs_mamba_ssm

H100_TABLE = predict.DEFAULT_GPU_TABLE
TINY_TABLE = predict.RESULTS / "ssd_interpreter-tiny_2026-11-27.md"  # with step profiles (kernel times)


@needs_interpreter
# Ours above 8 heads a group, where the GPU suite's shapes are (below, it needs no partial sums of dC and dB);
# mamba_ssm's per-head partials have no such step.
@pytest.mark.parametrize("impl, heads", [("ours", (16, 24, 32)),
                                         pytest.param("mamba_ssm", (2, 4, 6), marks=needs_mamba_ssm)],
                         ids=predict.IMPLS)
def test_footprint_is_linear_in_tokens_and_affine_in_heads(impl, heads):
    h0, h1, h2 = heads
    shape = lambda b=1, l=64, h=h0: SSDShape(b=b, l=l, h=h, p=16, n=16, chunk=16)
    counted = {(b, l, h): predict.footprints(impl, shape(b, l, h))
               for b, l, h in ((1, 64, h0), (1, 64, h1), (1, 64, h2), (2, 64, h0), (1, 128, h0))}
    for mode in predict.MODES:
        base = counted[1, 64, h0][mode]
        assert counted[2, 64, h0][mode] == pytest.approx(2 * base, rel=0.02), mode
        # Twice the chunks: per-sequence buffers (final states, A, D) do not double.
        assert counted[1, 128, h0][mode] == pytest.approx(2 * base, rel=0.05), mode
        line = predict.fit_heads([h0, h1], [counted[1, 64, h][mode] for h in (h0, h1)])
        assert line[0] > 0
        assert line[0] * h2 + line[1] == pytest.approx(counted[1, 64, h2][mode], rel=0.02), mode


def test_fit_and_scale_by_hand():
    assert predict.fit_heads([8, 16], [10.0, 18.0]) == pytest.approx((1.0, 2.0))
    assert predict.fit_heads([8, 16, 32], [10.0, 18.0, 34.0]) == pytest.approx((1.0, 2.0))
    with pytest.raises(ValueError, match="two different head numbers"):
        predict.fit_heads([8, 8], [1.0, 1.0])
    # 1 byte per head and 2 shared per 1024 tokens, at b 2, l 4096, h 32: 8 * (32 + 2)
    assert predict.scale((1.0, 2.0), SSDShape(b=2, l=4096, h=32, p=64, n=128, chunk=256)) == pytest.approx(272.0)


def test_reads_the_kept_h100_table():
    bandwidth, measured = predict.read_gpu_table(H100_TABLE)
    assert bandwidth == 2923e9
    assert measured["B4_L2048_H32_P64_N128_C256", "fwd+bwd"] == pytest.approx(
        {"triton": 10.87e-3, "mamba_chunk_scan_combined": 5.23e-3})
    assert set(measured) == {(name, mode) for name in SSD_GPU for mode in predict.MODES}


def test_a_file_without_a_gpu_table_is_named(tmp_path):
    bad = tmp_path / "ssd_cpu.md"
    bad.write_text("| shape | mode | torch: ms |\n|---|---|---|\n| B1 | fwd | 1.0 |\n")
    with pytest.raises(ValueError, match="ssd_cpu.md: no GPU-suite table"):
        predict.read_gpu_table(bad)


def test_main_writes_a_row_per_shape_and_mode(tmp_path, monkeypatch):
    """The plumbing, with counts replaced by an affine function of the heads (mamba_ssm's twice ours), and ours
    counted under another launch."""
    changes = set()

    def fake(impl, shape, launch_change):
        changes.add((impl, str(launch_change)))
        return {mode: {"a kernel": (2 if impl == "mamba_ssm" else 1) * (1e6 * shape.h + 3e6) * len(phases)}
                for mode, phases in predict.MODES.items()}
    monkeypatch.setattr(predict, "kernel_footprints", fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    predict.main(["--gpu-table", str(H100_TABLE), "--out-dir", str(tmp_path), "--change", "one_pass_states=true"])
    assert changes == {("ours", "{'one_pass_states': True}"), ("mamba_ssm", "None")}
    path, = tmp_path.glob("ssd_predicted_NVIDIA-H100-80GB-HBM3_one_pass_statesTrue_*.md")
    text = path.read_text()
    assert "ours under default_launch with {'one_pass_states': True}" in text
    rows = [line for line in text.splitlines() if line.startswith("| B")]
    assert len(rows) == 2 * len(SSD_GPU)
    assert text.count("| +0.0% |") == 2 * len(predict.IMPLS)  # the line meets the check at H 32 exactly
    # B1_L65536_H80 fwd: ours 64 * (80 + 3) MB = 5.31 GB, 1.82 ms at 2923 GB/s; mamba_ssm measured 4.01 ms
    # against its own bound of 3.63 ms: 91% of copy bandwidth; ours needs 1.82 / 4.01 = 45%.
    assert "| B1_L65536_H80_P64_N128_C256 | fwd | 5.31 / 10.62 | 1.82 / 3.63 | 4.01 (91%) | 45% |" in rows


def test_reads_the_step_profiles_of_a_kept_suite_file():
    times = predict.read_kernel_times(TINY_TABLE)
    assert set(times) == {("B1_L64_H4_P16_N32_C16_G2", mode) for mode in predict.MODES}
    step = times["B1_L64_H4_P16_N32_C16_G2", "fwd+bwd"]
    assert set(step) == {"triton (tuned per shape)", "triton", predict.PEER}
    assert step["triton"]["_chunk_state"][0] == step[predict.PEER]["_chunk_state_fwd_kernel"][0] == 2
    assert "all kernels" not in step["triton"] and all(s > 0 for _, s in step["triton"].values())
    assert predict.read_kernel_times(H100_TABLE) == {}


def test_main_reads_each_profiled_kernel_against_copy_bandwidth(tmp_path, monkeypatch):
    """A GPU table with step profiles: each kernel's fitted footprint over its measured time. Counted per 1024
    tokens: ours' _chunk_output 1 MB a head, mamba_ssm's _chunk_scan_fwd_kernel 2 MB; a kernel of torch's that the
    interpreter does not count has no footprint."""
    columns = [f"{impl}: {c}" for impl in ("triton", "mamba_chunk_scan_combined")
               for c in ("kernel", "launches", "us", "% of all")]
    table = tmp_path / "ssd_GPU_2026-11-27.md"
    table.write_text(H100_TABLE.read_text() + "\n".join([
        "", "### B1_L65536_H80_P64_N128_C256, fwd", "", "| " + " | ".join(columns) + " |", "|---" * 8 + "|",
        "| `_chunk_output` | 1 | 2923.0 | 99.7 | `_chunk_scan_fwd_kernel` | 1 | 4000.0 | 100.0 |",
        "| `void at::native::reduce_kernel<...>` | 3 | 10.0 | 0.3 |  |  |  |  |",
        "| all kernels | 4 | 2933.0 | 100.0 | all kernels | 1 | 4000.0 | 100.0 |", ""]))
    per_head = {"ours": {"_chunk_output": 1e6}, "mamba_ssm": {"_chunk_scan_fwd_kernel": 2e6}}
    monkeypatch.setattr(predict, "kernel_footprints", lambda impl, shape, launch_change: {
        mode: {k: v * shape.h for k, v in per_head[impl].items()} for mode in predict.MODES})
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    predict.main(["--gpu-table", str(table), "--out-dir", str(tmp_path)])
    text, = [path.read_text() for path in tmp_path.glob("ssd_predicted_GPU_*.md")]
    # 64 x 80 MB = 5.12 GB in 2.923 ms: 1752 GB/s, 60% of the table's copy bandwidth (2923 GB/s); mamba_ssm's
    # 10.24 GB in 4 ms, 88%.
    # Beside each, its resident programs per SM from the kept compile tables (ours default, mamba_ssm untuned).
    assert "| B1_L65536_H80_P64_N128_C256 | fwd | ours | `_chunk_output` | 1 | 2923.0 | 5120.0 | 60% | 2 |" in text
    assert "| fwd | mamba_ssm | `_chunk_scan_fwd_kernel` | 1 | 4000.0 | 10240.0 | 88% | 4 |" in text
    assert "| ours | `void at::native::reduce_kernel<...>` | 3 | 10.0 | n/a | n/a | n/a |" in text


def test_reads_resident_programs_from_a_compile_table(tmp_path):
    def row(launch, phase, kernel, resident):
        return f"| {launch} | {phase} | {kernel} | 4 | - | 0.0 | yes | 40 | 0 | {resident} | - |"
    table = tmp_path / "ssd_compile_sm90_2026-11-30.md"
    table.write_text("\n".join([
        "| launch | pass | kernel | warps | products | shared KB | fits | registers | spill | resident | waits |",
        "|---" * 11 + "|", row("T 128, bf16", "forward", "_k", "64 (16; warps)"),
        row("default, bf16", "forward", "_k", "48 (12; registers)"),
        row("default, bf16", "backward", "_k", "40 (10; registers)"),
        row("default, bf16", "backward", "_j", "16 (2; registers)")]))
    # A table of several dtypes labels the launch "default, bf16"; forward / backward where they differ.
    assert predict.read_programs(table, ("default", "default, bf16")) == {"_k": "12 / 10", "_j": "2"}
    assert predict.read_programs(tmp_path / "none.md", ("default",)) == {}
    kept = predict.compile_tables(predict.RESULTS)
    assert kept["ours"]["_chunk_output"] == "2" and kept["mamba_ssm"]["_chunk_scan_fwd_kernel"] == "4"
