"""The runner end to end on the toy paper: fit -> test -> report, seeds, pipelines, failures."""
import json

import pytest
import torch

from experiments import run


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_fit_writes_checkpoint_config_and_report(toy_configs, tmp_path):
    out = tmp_path / "run"
    assert run.main(["fit", "--exp", "toy/tiny", "--out", str(out)]) == 0
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert "width: 4" in (out / "config.yaml").read_text()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics) == {"mse", "zero_predictor.mse"}
    report = (out / "report" / "report.md").read_text()
    assert "| mse |" in report and "zero_predictor" in report and "Toy section" in report
    assert (out / "report" / "loss_curves.png").stat().st_size > 1000
    # `report` alone rebuilds the same report from the run directory
    (out / "report" / "report.md").unlink()
    assert run.main(["report", "--out", str(out)]) == 0
    assert (out / "report" / "report.md").read_text() == report


@pytest.mark.parametrize("exp", ["toy/tiny", "toy/pipeline"])
def test_fit_no_test_never_reads_the_test_split(toy_configs, tmp_path, monkeypatch, exp):
    # Tuning runs choose settings on val: with --no-test, fit must not touch test at all.
    monkeypatch.setattr(run, "_test_and_report", lambda *a, **k: pytest.fail("fit --no-test ran the test"))
    monkeypatch.setattr(run, "evaluate", lambda *a, **k: pytest.fail("fit --no-test ran the test"))
    out = tmp_path / "run"
    assert run.main(["fit", "--no-test", "--exp", exp, "--out", str(out)]) == 0
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert not (out / "report").exists() and not (out / "eval").exists()


def test_last_checkpoint_holds_the_final_step(toy_configs, tmp_path):
    out = tmp_path / "run"  # 10 steps: not a multiple of checkpoint_every_n_steps (4), mid-epoch (8 batches)
    run.main(["fit", "--exp", "toy/tiny", "--out", str(out), "trainer.max_steps=10"])
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 10


def test_same_seed_same_weights_other_seed_differs(toy_configs, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run.main(["fit", "--exp", "toy/tiny", "--out", str(tmp_path / name), f"seed={seed}"])
    a, b, c = (_weights(tmp_path / n / "checkpoints" / "last.ckpt") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_pipeline_runs_stages_in_order_and_skips_done(toy_configs, tmp_path, caplog, monkeypatch):
    out = tmp_path / "pipe"
    assert run.main(["fit", "--exp", "toy/pipeline", "--out", str(out)]) == 0
    stage_a = out / "stages" / "1-stage_a"
    stage_b = out / "stages" / "2-stage_b"
    assert (stage_a / "DONE").exists() and (stage_b / "DONE").exists()
    # the pipeline's own keys reach every stage; the second stage starts from the first's weights
    assert "batch_size: 4" in (stage_b / "config.yaml").read_text()
    assert f"init_from: {stage_a / 'checkpoints' / 'last.ckpt'}" in (stage_b / "config.yaml").read_text()
    assert torch.load(stage_b / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert (out / "report" / "metrics.json").exists()
    caplog.clear()
    with caplog.at_level("INFO", logger="longwatch"):
        run.main(["fit", "--exp", "toy/pipeline", "--out", str(out)])
    assert "stage 1 (toy/stage_a) already done" in caplog.text
    # `test` on a pipeline evaluates its last stage's config with the pipeline's keys
    built = []
    real_build = run._build
    monkeypatch.setattr(run, "_build", lambda cfg, *a, **k: built.append(cfg) or real_build(cfg, *a, **k))
    assert run.main(["test", "--exp", "toy/pipeline", "--out", str(out)]) == 0
    assert [(c.exp, c.model.lr, c.data.batch_size) for c in built] == [("toy/stage_b", 0.01, 4)]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy_configs, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match="non-finite loss nan at global step 9"):
        run.main(["fit", "--exp", "toy/tiny", "--out", str(out), "model.nan_at_step=9"])
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8  # written at step 8 (every 4), never after the NaN
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_config_error_exits_2_before_any_work(toy_configs, tmp_path, capsys):
    out = tmp_path / "never"
    assert run.main(["fit", "--exp", "toy/tiny", "--out", str(out), "trainer.max_stpes=3"]) == 2
    assert "trainer.max_steps" in capsys.readouterr().err
    assert not out.exists()


def test_test_without_checkpoint_is_a_clear_error(toy_configs, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        run.main(["test", "--exp", "toy/tiny", "--out", str(tmp_path / "none")])


class _SignalAtStep(__import__("lightning").Callback):
    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            import os

            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signame,step", [("SIGTERM", 6), ("SIGUSR1", 6), ("SIGTERM", 10)])  # 8 batches an epoch
def test_signal_saves_and_resume_is_bit_exact(toy_configs, tmp_path, monkeypatch, signame, step):
    import signal

    full = tmp_path / "full"
    run.main(["fit", "--exp", "toy/tiny", "--out", str(full)])

    part = tmp_path / "part"
    real_trainer = run._trainer

    def trainer_with_signal(cfg, out, log_as):
        trainer = real_trainer(cfg, out, log_as)
        if log_as == "fit":
            trainer.callbacks.insert(0, _SignalAtStep(step, getattr(signal, signame)))
        return trainer

    monkeypatch.setattr(run, "_trainer", trainer_with_signal)
    with pytest.raises(SystemExit) as exited:
        run.main(["fit", "--exp", "toy/tiny", "--out", str(part)])
    assert not exited.value.code  # a clean exit, as a scheduler expects
    last = part / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == step
    monkeypatch.setattr(run, "_trainer", real_trainer)
    assert run.main(["fit", "--exp", "toy/tiny", "--out", str(part), "--ckpt", str(last)]) == 0
    a, b = _weights(full / "checkpoints" / "last.ckpt"), _weights(last)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (part / "logs" / "fit-2" / "metrics.csv").exists()
