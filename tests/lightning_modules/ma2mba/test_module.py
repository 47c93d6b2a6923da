"""Ma2mbaModule: which parameters each stage trains, their learning rates, the schedule, the report."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.ma2mba.model import Question
from lightning_modules.ma2mba.module import Ma2mbaModule, Perplexity, mcnemar_p

from .test_model import TOKENS, VOCAB, _score_from_scratch, tiny_config, video


def _optimizer(module, steps=100):
    return module.build_optimizer(steps)


def _trainable_names(module, optimizer):
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return {n for n, p in module.named_parameters() if id(p) in ids}


def test_stage1_trains_the_projector_only():
    module = Ma2mbaModule(tiny_config(stage="stage1"), TOKENS)
    out = _optimizer(module)
    names = _trainable_names(module, out["optimizer"])
    assert names and all(n.startswith("model.projector.") for n in names)
    assert names == {n for n, _ in module.model.projector.named_parameters(prefix="model.projector")}


def test_stage1_5_trains_everything_with_a_separate_vision_lr():
    cfg = tiny_config(stage="stage1_5", frozen=False)
    cfg.optim.lr, cfg.optim.vision_lr = 1e-3, 1e-4
    module = Ma2mbaModule(cfg, TOKENS)
    opt = _optimizer(module)["optimizer"]
    assert _trainable_names(module, opt) == {n for n, _ in module.named_parameters()}
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx((1e-4 if g["name"].startswith("vision") else 1e-3) / 11)  # warmup step 0
        assert g["weight_decay"] == (0.0 if g["name"].endswith("no_decay") else cfg.optim.weight_decay)
        if g["name"].endswith("no_decay"):
            assert all(p.dim() < 2 for p in g["params"])


def test_warmup_then_cosine():
    module = Ma2mbaModule(tiny_config(), TOKENS)
    out = _optimizer(module, steps=100)
    sched = out["lr_scheduler"]["scheduler"]
    factors = []
    for _ in range(100):
        factors.append(sched.get_last_lr()[0] / module.config.optim.lr)
        out["optimizer"].step()
        sched.step()
    assert factors[0] == pytest.approx(1 / 11) and factors[9] == pytest.approx(10 / 11)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert factors[-1] < 0.001


def test_perplexity_weights_batches_by_token_count():
    ppl = Perplexity()
    ppl.update(torch.tensor(1.0), torch.tensor(3))
    ppl.update(torch.tensor(2.0), torch.tensor(1))
    assert float(ppl.compute()) == pytest.approx(math.exp(5 / 4))
    with pytest.raises(ValueError, match="no labelled tokens"):
        Perplexity().compute()


def test_report_puts_accuracy_beside_chance_and_the_paper(tmp_path):
    module = Ma2mbaModule(tiny_config(), TOKENS, baselines={"prior.qa_accuracy": 0.3})
    module.test_records = [
        {"key": "v", "question": f"q{i}", "options": ["a", "b", "c", "d"], "answer": i % 4, "pred": 0,
         "scores": [0.0, -1.0, -2.0, -3.0], "template": ["colour", "count"][i % 2], "pred_other_video": 1}
        for i in range(8)
    ]
    metrics, section = module.report(tmp_path)
    assert metrics["qa_accuracy"] == pytest.approx(2 / 8)
    assert metrics["chance.qa_accuracy"] == pytest.approx(0.25)
    assert metrics["other_video.qa_accuracy"] == pytest.approx(2 / 8)
    # Own video right on answers 0 (i = 0, 4), the other video on answers 1 (i = 1, 5): no gain, p = 1.
    assert metrics["video_gain.qa_accuracy"] == 0 and metrics["video_gain.p_value"] == 1.0
    assert "2 questions right only with their own video, 2 only with the other" in section
    assert "| colour | 4 | 0.500 | 0.000 | 2 / 0 (0.5) |" in section and "| count | 4 | 0.000 | 0.500 | 0 / 2 (0.5) |" in section
    assert metrics["prior.qa_accuracy"] == 0.3
    assert "| chance | 0.250 |" in section and "Video-MME" in section and "45.2" in section
    assert (tmp_path / "ma2mba_qa_by_type.png").exists()


def test_mcnemar_p_matches_the_binomial_tail():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)                  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert mcnemar_p(10, 2) == pytest.approx(2 * 79 / 4096)          # 1 + 12 + 66 of 2^12
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)


def test_wrong_video_control_asks_a_question_first_question_before_the_previous_video(monkeypatch):
    """data.question_first: one item per question, the question also read before the frames. The control must
    ask this same question (preamble included) before the previous *video*, not reuse another question's state."""
    torch.manual_seed(0)
    module = Ma2mbaModule(tiny_config(), TOKENS).eval()
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    g = torch.Generator().manual_seed(1)
    frames = {"a": video(4, seed=1), "b": video(6, seed=2)}

    def question_item(key):
        preamble = torch.randint(6, VOCAB, (5,), generator=g)
        prompt = torch.randint(6, VOCAB, (3,), generator=g)
        options = [torch.randint(6, VOCAB, (k,), generator=g) for k in (1, 2, 3, 2)]
        video_ids = torch.cat([preamble, torch.full((frames[key].shape[0],), TOKENS.frame)])
        q = {"prompt": prompt, "options": options, "answer": 2, "question": "?", "option_texts": list("wxyz"),
             "template": None, "preamble": preamble}
        ids = torch.cat([video_ids, prompt, options[2]])
        return {"input_ids": ids[None], "labels": ids[None], "lengths": torch.tensor([len(ids)]),
                "videos": [frames[key]], "keys": [key], "video_ids": [video_ids], "questions": [[q]]}

    batches = [question_item(k) for k in ("a", "a", "b", "b")]
    module.on_test_epoch_start()
    with torch.no_grad():
        for i, batch in enumerate(batches):
            module.test_step(batch, i)
    records = module.test_records
    assert ["pred_other_video" in r for r in records] == [False, False, True, True]  # a's 2nd question: same video
    for record, batch in zip(records[2:], batches[2:]):
        q = batch["questions"][0][0]
        other_ids = torch.cat([q["preamble"], torch.full((frames["a"].shape[0],), TOKENS.frame)])
        expected = _score_from_scratch(module.model, other_ids, frames["a"], Question(q["prompt"], q["options"], 2))
        assert record["pred_other_video"] == int(expected.argmax())
        assert record["pred"] == int(_score_from_scratch(module.model, batch["video_ids"][0], frames["b"],
                                                         Question(q["prompt"], q["options"], 2)).argmax())
