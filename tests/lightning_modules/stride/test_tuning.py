"""Val tuning: replaying recorded causal outputs equals running the baselines' models again; the sweep scores
every setting of every grid with the module's test metrics; the selection takes the highest utility."""
import dataclasses

import pytest
import torch

from lightning_modules.stride import tuning
from lightning_modules.stride.config import StreamingConfig, StrideConfig
from lightning_modules.stride.module import StrideModule
from lightning_modules.stride.streaming import LiveTokenRunner, ThresholdHeadRunner


@pytest.fixture(scope="module")
def module_and_streams():
    torch.manual_seed(0)
    cfg = StrideConfig(features="feats", feat_dim=6, window=8, d_model=16, n_heads=2, n_layers=1, vocab_size=32,
                       streaming=StreamingConfig(window=8, steps=2, threshold=0.55))
    module = StrideModule(cfg).eval()
    streams = []
    for n, spans in ((23, [(3.0, 9.0)]), (17, [(2.0, 4.0), (10.0, 15.0)]), (12, [])):
        labels = torch.zeros(n, dtype=torch.long)
        for a, b in spans:
            labels[int(a):int(b)] = 1
        feats = torch.randn(n, 6) + 2.0 * labels[:, None]  # the features carry the truth, weakly
        streams.append(tuning.Stream(feats, "q", torch.tensor([3, 4, 5]), spans, labels))
    return module, streams


@pytest.mark.parametrize("runner_cls, model_name, threshold", [(ThresholdHeadRunner, "threshold_head", 0.45),
                                                                (LiveTokenRunner, "live_token", 0.9)])
def test_replay_of_recorded_outputs_equals_running_the_model(module_and_streams, runner_cls, model_name, threshold):
    module, streams = module_and_streams
    model = getattr(module, model_name)
    cfg = dataclasses.replace(module.cfg.streaming, close_run=2)
    recorded = tuning.causal_outputs(runner_cls, model, module.cfg.streaming, streams)
    replayed = tuning.replay(runner_cls, cfg, threshold, streams, recorded)
    for stream, fast in zip(streams, replayed):
        slow = runner_cls(model, cfg, threshold, stream.query, stream.query_ids, 6)
        with torch.inference_mode():
            slow.run(stream.feats)
        assert [(t.start, t.end, t.time) for t in fast.triggers] == [(t.start, t.end, t.time) for t in slow.triggers]
        assert torch.allclose(torch.tensor(fast.p_active), torch.tensor(slow.p_active), atol=1e-6)


def test_sweep_scores_every_setting_and_best_takes_the_highest_utility(module_and_streams):
    module, streams = module_and_streams
    grids = {"stride": {"active_threshold": [0.3, 0.5], "close_run": [1, 2]},
             "threshold_head": {"head_threshold": [0.3, 0.5], "close_run": [1, 2]},
             "live_token": {"live_threshold": [0.7, 0.9]}}
    rows = tuning.sweep(module, streams, grids, log=lambda line: None)
    assert [(r["method"], r["setting"]) for r in rows] == [
        (m, s) for m, grid in grids.items() for s in tuning.settings(grid)]
    for r in rows:
        m = r["metrics"]
        assert 0.0 <= m["tvg_f1"] <= 1.0 and 0.0 <= m["time_diff"] <= 10.0
        assert m["utility"] == pytest.approx(m["tvg_f1"] + 1.0 - m["time_diff"] / 10.0)
    chosen = tuning.best(rows)
    for method in grids:
        top = max(r["metrics"]["utility"] for r in rows if r["method"] == method)
        assert chosen[method]["metrics"]["utility"] == top
    assert "(chosen)" in tuning.markdown(rows, "val")
    with pytest.raises(ValueError, match="unknown knobs"):
        tuning.sweep(module, streams, {"stride": {"stable": [1]}}, log=lambda line: None)


def test_utility_puts_both_targets_on_one_scale():
    assert tuning.utility({"tvg_f1": 0.3, "time_diff": 6.0}) == pytest.approx(0.7)
    assert tuning.utility({"tvg_f1": 0.0, "time_diff": 10.0}) == 0.0
