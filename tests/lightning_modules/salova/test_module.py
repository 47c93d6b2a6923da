"""SALOVA end to end: every committed config validates, and the tiny pipeline fits, tests and reports on a tiny world."""
from __future__ import annotations

import json

import pytest
import torch

from experiments import config as config_lib

SMALL = [  # shrink the tiny model further: the smoke test checks wiring, not learning
    "trainer.max_steps=2", "trainer.enable_progress_bar=false", "data.batch_size=2",
    "model.llm.hidden_size=32", "model.llm.intermediate_size=64", "model.llm.layers=1", "model.llm.heads=2",
    "model.llm.kv_heads=2", "model.connector.width=32", "model.connector.heads=2", "model.router.width=32",
    "model.router.heads=2", "model.text.hidden_size=32", "model.text.heads=2", "model.text.layers=1",
    "model.eval_k=[1,2]", "model.report_examples=2",
]


@pytest.mark.parametrize("exp", [e for e in config_lib.list_experiments() if e.startswith("salova/")])
def test_every_salova_config_validates(exp):
    cfg = config_lib.load(exp)
    for stage in cfg.stages:
        config_lib.load(stage)


def test_config_errors_name_the_key():
    from lightning_modules.salova.config import ConnectorConfig, SalovaConfig

    with pytest.raises(ValueError, match="model.trainable"):
        SalovaConfig(trainable=["conector"])
    with pytest.raises(ValueError, match="token_drop"):
        ConnectorConfig(token_drop=1.0)
    with pytest.raises(ValueError, match="vision.frozen"):
        SalovaConfig(trainable=["vision", "router"])
    with pytest.raises(ValueError, match="feats_grid"):
        SalovaConfig(connector=ConnectorConfig(feats_grid=4))  # the default vision tower reads frames, not feats
    with pytest.raises(ValueError, match="feats_grid"):
        ConnectorConfig(feats_grid=-1)


def test_tiny_pipeline_fits_tests_and_reports(tmp_path):
    from datamodules.synthetic.generate import GenerateConfig, generate
    from datamodules.synthetic.world import WorldConfig
    from experiments import run

    root = tmp_path / "world"
    generate(GenerateConfig(out=str(root), videos=4, eval_videos=2, shard_size=4, workers=1, feats=True),
             WorldConfig(minutes=(1.0, 1.0), scenes=(3, 4), qa_per_video=2), progress=False)
    out = tmp_path / "run"
    assert run.main(["fit", "--exp", "salova/tiny", "--out", str(out), f"data.root={root}", *SMALL]) == 0

    metrics = json.loads((out / "report" / "metrics.json").read_text())
    for name in ("recall@1", "recall@5", "recall@k", "map", "qa_accuracy", "random_retrieval.recall@1",
                 "random_retrieval.recall@5", "random_retrieval.map", "chance.qa_accuracy",
                 "ablation.k1.qa_accuracy", "ablation.no_focusfast.qa_accuracy", "sweep.recall@2"):
        assert name in metrics, f"{name} missing from metrics.json: {sorted(metrics)}"
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["chance.qa_accuracy"] == pytest.approx(0.25)
    world = json.loads((root / "world.json").read_text())
    assert metrics["text_prior.qa_accuracy"] == world["splits"]["test"]["chance"]["prior.qa_accuracy"]
    report = (out / "report" / "report.md").read_text()
    assert "SALOVA" in report and "random" in report and "chance" in report and "text-only prior" in report
    assert (out / "report" / "salova_example_0.png").is_file()
    # Every stage ran from the previous one's weights.
    states = [torch.load(out / "stages" / name / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
              for name in ("1-tiny_stage1", "2-tiny_stage1_5", "3-tiny_stage2")]
    final = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(state.keys() == final.keys() for state in states)
    llm = [name for name in final if name.startswith("model.llm.")]
    router = [name for name in final if name.startswith("model.router.")]
    assert any(not torch.equal(states[0][n], states[1][n]) for n in llm)  # stage 1.5 trains the LLM
    assert any(not torch.equal(states[0][n], final[n]) for n in router)


def test_router_only_module_trains_without_the_llm_and_evaluates_with_it(tmp_path):
    from lightning_modules.salova.module import SalovaModule

    from .helpers import make_batch, make_tokens, tiny_config

    tokens = make_tokens(tmp_path)
    torch.manual_seed(0)
    module = SalovaModule(tiny_config(router_only=True, trainable=["connector", "router", "text"]),
                          tokens.vocab_size)
    batch = make_batch(tokens, videos=2, seed=6)
    calls = []
    module.model.llm.base_model.register_forward_hook(lambda *args: calls.append(1))
    parts, _ = module.losses(batch, "train")
    assert not calls and parts["lm_loss"].item() == 0.0
    expected = module.cfg.router_weight * (parts["router_bce"] + module.cfg.margin_weight * parts["router_margin"])
    assert parts["loss"].item() == pytest.approx(expected.item())
    parts["loss"].backward()
    assert all(p.grad is None for p in module.model.llm.parameters())  # frozen and never run
    parts, _ = module.losses(batch, "val")  # evaluation reads the router's top-k with the LLM
    assert calls and parts["lm_loss"].item() > 0
