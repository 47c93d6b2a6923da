"""kernels.ssd.tuning: the fastest launch per shape and mode, checked against the default launch's outputs,
kept in a file. The tuner's logic runs on the torch scan with given times (timings are not test material);
the last two tests tune the Triton scan for real, in the interpreter: through ssd_scan, against the naive
recurrence, and ahead of a run, from the command line."""
import json

import pytest
import torch
from triton.runtime.errors import OutOfResources
from ssd_testing import TOL_FP32, TOL_FP32_GRAD, Case, assert_close, make_inputs, needs_interpreter, run_with_grads

from kernels.ssd import ssd_scan, tuning
from kernels.ssd.naive import ssd_scan_naive
from kernels.ssd.torch_chunked import ssd_scan_torch

CASE = Case("tuned", b=1, l=40, h=2, p=16, g=1, n=16, chunk=16)
TIMES = {"default": 3.0, "states in one pass": 1.0, "gradient kernels 8 warps": 2.0,
         "states in one pass + gradient kernels 8 warps": 1.5}


def few(heads_per_group):
    """Three launches that run on fp32 inputs and one that does not (16-bit states need 16-bit products)."""
    return {"default": {}, "states in one pass": dict(one_pass_states=True),
            "gradient kernels 8 warps": dict(grad_warps=8), "16-bit entering states": dict(states_16bit=True)}


def given_times(name, run, device):
    run()
    return TIMES[name]


def never_timed(name, run, device):
    raise AssertionError(f"tuned again: {name}")


@pytest.fixture
def torch_scan(monkeypatch):
    """The tuner's scan replaced by the torch backend (same results, no interpreter); `drift` scales y for
    launches with the states in one pass, as a launch that computes wrongly on some device would."""
    ran, drift = [], {"one_pass_states": 1.0}

    def scan(launch, **kw):
        ran.append(launch)
        return ssd_scan_torch(**kw) * (drift["one_pass_states"] if launch.one_pass_states else 1.0)
    monkeypatch.setattr(tuning, "ssd_scan_triton", scan)
    return ran, drift


def scan_inputs(kw):
    return {k: kw[k] for k in ("x", "dt", "A", "B", "C", "chunk_size", "D", "dt_bias", "initial_states",
                               "dt_softplus", "dt_limit")}


def test_keeps_the_fastest_launch_and_reads_it_back(tmp_path, torch_scan):
    path = tmp_path / "launches.json"
    kw = scan_inputs(make_inputs(CASE, torch.float32))
    launch = tuning.Tuner(path, few, reps=2, timer=given_times, progress=False).launch(**kw)
    assert launch.one_pass_states and launch.grad_warps == 4
    # Each launch that runs, and the two fastest together: a checked warm-up, then timed twice.
    assert len(torch_scan[0]) == 4 + 4 * 2
    (key, kept), = json.loads(path.read_text())["choices"].items()
    assert key.endswith("; float32 b1 l<=64 h2 g1 p16 n16 chunk 16; fwd+bwd")
    assert kept["launch"] == "states in one pass" and kept["change"] == {"one_pass_states": True}
    assert kept["ms"]["default"] == 3e3 and kept["ms"]["16-bit entering states"].startswith("not a launch")
    assert kept["ms"]["states in one pass + gradient kernels 8 warps"] == 1.5e3
    # Another process reads the choice instead of tuning; another length up to 64 tokens shares it.
    again = tuning.Tuner(path, few, timer=never_timed, progress=False)
    assert again.launch(**{**kw, **scan_inputs(make_inputs(Case("longer", b=1, l=64, h=2, p=16, g=1, n=16),
                                                           torch.float32))}) == launch


def test_the_two_fastest_launches_together_are_kept_when_faster(tmp_path, torch_scan, monkeypatch):
    monkeypatch.setitem(TIMES, "states in one pass + gradient kernels 8 warps", 0.5)
    launch = tuning.Tuner(None, few, reps=1, timer=given_times, progress=False).launch(
        **scan_inputs(make_inputs(CASE, torch.float32)))
    assert launch.one_pass_states and launch.grad_warps == 8


def more(heads_per_group):
    """few's, and five more faster than the default, one of which overlaps the fastest's field."""
    return {**few(heads_per_group), "forward kernels 2 stages": dict(stages=2),
            "gradients 2 stages": dict(grad_stages=2),
            "states in one pass, n tile 8": dict(one_pass_states=True, BN_state=8),
            "state scan 2 stages": dict(scan_stages=2), "gradient kernels 128 registers": dict(grad_maxnreg=128)}


def test_faster_launches_are_stacked_onto_the_fastest_while_they_gain(torch_scan, monkeypatch):
    # Stacked fastest first: 8 warps gains (kept), 2 forward stages does not (dropped), 2 gradient stages gains;
    # the overlapping n tile is skipped untimed, and after STACKED tries the last two are not tried.
    for name, ms in {"forward kernels 2 stages": 2.1, "gradients 2 stages": 2.2, "states in one pass, n tile 8": 1.2,
                     "state scan 2 stages": 2.3, "gradient kernels 128 registers": 2.4,
                     "states in one pass + gradient kernels 8 warps": 0.9,
                     "states in one pass + gradient kernels 8 warps + forward kernels 2 stages": 0.95,
                     "states in one pass + gradient kernels 8 warps + gradients 2 stages": 0.8}.items():
        monkeypatch.setitem(TIMES, name, ms)
    tuner = tuning.Tuner(None, more, reps=1, timer=given_times, progress=False)
    launch = tuner.launch(**scan_inputs(make_inputs(CASE, torch.float32)))
    assert launch.one_pass_states and launch.grad_warps == 8 and launch.grad_stages == 2 and launch.stages == 0
    (kept,) = tuner.choices.values()
    assert kept["launch"] == "states in one pass + gradient kernels 8 warps + gradients 2 stages"
    stacks = [name for name in kept["ms"] if " + " in name]
    assert len(stacks) == tuning.STACKED == 3 and not any("n tile 8" in name or "state scan" in name for name in stacks)


def test_refuses_a_launch_whose_outputs_drift_from_the_default(tmp_path, torch_scan):
    torch_scan[1]["one_pass_states"] = 1.05
    tuner = tuning.Tuner(tmp_path / "launches.json", few, reps=1, timer=given_times, progress=False)
    assert tuner.launch(**scan_inputs(make_inputs(CASE, torch.float32))).grad_warps == 8
    (kept,) = tuner.choices.values()
    assert kept["launch"] == "gradient kernels 8 warps"
    assert kept["ms"]["states in one pass"].startswith("refused: ") and "5.0e-02" in kept["ms"]["states in one pass"]


def test_a_launch_the_device_cannot_run_is_skipped(monkeypatch):
    def scan(launch, **kw):
        if launch.grad_warps == 8:
            raise OutOfResources(required=262400, limit=232448, name="shared memory")
        return ssd_scan_torch(**kw)
    monkeypatch.setattr(tuning, "ssd_scan_triton", scan)
    tuner = tuning.Tuner(None, few, reps=1, timer=given_times, progress=False)
    assert tuner.launch(**scan_inputs(make_inputs(CASE, torch.float32))).one_pass_states
    (kept,) = tuner.choices.values()
    assert kept["ms"]["gradient kernels 8 warps"].startswith("OutOfResources: out of resource: shared memory")


def test_a_forward_without_graph_is_tuned_apart(tmp_path, torch_scan):
    tuner = tuning.Tuner(None, few, reps=1, timer=given_times, progress=False)
    kw = scan_inputs(make_inputs(CASE, torch.float32))
    with torch.no_grad():
        tuner.launch(**kw)
    tuner.launch(**kw)
    assert [key.rsplit("; ", 1)[1] for key in tuner.choices] == ["fwd", "fwd+bwd"]
    assert not (tmp_path / "launches.json").exists()  # a Tuner without a path keeps its choices in memory


def test_a_corrupt_file_is_moved_aside_and_tuned_anew(tmp_path, torch_scan):
    path = tmp_path / "launches.json"
    path.write_text('{"format": 1, "choices": {"half a fi')
    with pytest.warns(UserWarning, match=f"{path} is not a launch cache .* moved it to {path}.corrupt"):
        tuner = tuning.Tuner(path, few, reps=1, timer=given_times, progress=False)
    assert (tmp_path / "launches.json.corrupt").read_text() == '{"format": 1, "choices": {"half a fi'
    tuner.launch(**scan_inputs(make_inputs(CASE, torch.float32)))
    assert len(json.loads(path.read_text())["choices"]) == 1


def test_a_launch_this_version_does_not_know_is_tuned_anew(tmp_path, torch_scan):
    path = tmp_path / "launches.json"
    kw = scan_inputs(make_inputs(CASE, torch.float32))
    tuning.Tuner(path, few, reps=1, timer=given_times, progress=False).launch(**kw)
    data = json.loads(path.read_text())
    (key,) = data["choices"]
    data["choices"][key]["change"] = {"warps_per_tile": 2}
    path.write_text(json.dumps(data))
    tuner = tuning.Tuner(path, few, reps=1, timer=given_times, progress=False)
    with pytest.warns(UserWarning, match="warps_per_tile.*is not a Launch here .*tuning it anew"):
        assert tuner.launch(**kw).one_pass_states
    assert json.loads(path.read_text())["choices"][key]["change"] == {"one_pass_states": True}


def test_a_default_that_cannot_run_while_tuning_runs_untuned_and_is_not_kept(tmp_path, monkeypatch):
    def out_of_memory(launch, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(tuning, "ssd_scan_triton", out_of_memory)
    path = tmp_path / "launches.json"
    with pytest.warns(UserWarning, match="default launch failed while tuning .*OutOfMemoryError"):
        launch = tuning.Tuner(path, few, timer=given_times, progress=False).launch(
            **scan_inputs(make_inputs(CASE, torch.float32)))
    assert not launch.one_pass_states and not path.exists()


def test_no_tuning_while_a_cuda_graph_is_captured(monkeypatch, torch_scan):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    tuner = tuning.Tuner(None, few, timer=never_timed, progress=False)
    with pytest.warns(UserWarning, match="CUDA graph is being captured; running the default launch untuned"):
        launch = tuner.launch(**scan_inputs(make_inputs(CASE, torch.float32)))
    assert not launch.one_pass_states and not tuner.choices and not torch_scan[0]


def test_bad_settings_name_themselves(monkeypatch, torch_scan):
    monkeypatch.setenv("LONGWATCH_SSD_TUNE", "yes")
    with pytest.raises(ValueError, match="LONGWATCH_SSD_TUNE = 'yes', expected '0' or '1'"):
        tuning.enabled()
    with pytest.raises(ValueError, match="candidates must start with 'default'"):
        tuning.Tuner(None, lambda hpg: {"T 128": dict(T=128)}, progress=False).launch(
            **scan_inputs(make_inputs(CASE, torch.float32)))


@needs_interpreter
def test_tuned_triton_scan_matches_the_recurrence(tmp_path, monkeypatch):
    # Tuned for real (the Triton scan in the interpreter, timed), through ssd_scan with LONGWATCH_SSD_TUNE=1.
    monkeypatch.setenv("LONGWATCH_SSD_TUNE", "1")
    monkeypatch.setattr(tuning, "_tuner", tuning.Tuner(tmp_path / "launches.json", few, reps=1, progress=False))
    kw = make_inputs(CASE, torch.float32)
    y, final, grads = run_with_grads(lambda **k: ssd_scan(**k, backend="triton"), kw)
    y64, final64, grads64 = run_with_grads(ssd_scan_naive, {k: v.detach().double().requires_grad_() if isinstance(
        v, torch.Tensor) and v.is_floating_point() else v for k, v in kw.items()})
    assert_close(y, y64, TOL_FP32, "y")
    assert_close(final, final64, TOL_FP32, "final_states")
    for name in grads64:
        assert_close(grads[name], grads64[name], TOL_FP32_GRAD, f"d{name}")
    (kept,) = json.loads((tmp_path / "launches.json").read_text())["choices"].values()
    assert all(isinstance(kept["ms"][name], float) for name in ("default", "states in one pass"))


@needs_interpreter
def test_shapes_tuned_ahead_of_a_run_are_kept_for_it(tmp_path, capsys):
    cache = tmp_path / "launches.json"
    tuning.main(["B1_L40_H2_P16_N16_C16", "--dtype", "fp32", "--only", "states in one pass", "--cache", str(cache)])
    table = capsys.readouterr().out.splitlines()
    assert table[2].startswith("| cpu (Triton interpreter); triton ") and "chunk 16; fwd+bwd | " in table[2]
    assert table[-1] == f"kept in {cache}"
    (kept,) = json.loads(cache.read_text())["choices"].values()
    assert list(kept["ms"]) == ["default", "states in one pass"]
    with pytest.raises(SystemExit, match="--only \\['states in two passes'\\]: not candidates"):
        tuning.main(["B1_L40_H2_P16_N16_C16", "--only", "states in two passes"])
