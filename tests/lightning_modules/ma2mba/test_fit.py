"""Smoke test: the real `ma2mba/tiny` pipeline (three stages, test, report), shrunk, on a generated world."""
from __future__ import annotations

import json

import pytest

from experiments import config as config_lib
from experiments import run



def test_every_committed_ma2mba_yaml_validates():
    names = [e for e in config_lib.list_experiments() if e.startswith("ma2mba/")]
    assert {"ma2mba/tiny", "ma2mba/tiny_stage1", "ma2mba/tiny_stage1_5", "ma2mba/tiny_stage2_clips",
            "ma2mba/tiny_stage2"} <= set(names)
    for name in names:
        cfg = config_lib.load(name)
        for stage in cfg.stages:
            assert config_lib.load(stage).model.stage in stage  # e.g. tiny_stage1_5 runs model.stage stage1_5


def test_tiny_pipeline_fits_tests_and_reports(ma2mba_world, shrink, tmp_path):
    out = tmp_path / "run"
    code = run.main(["fit", "--exp", "ma2mba/tiny", "--out", str(out), f"data.root={ma2mba_world}", *shrink])
    assert code == 0
    for stage in ("1-tiny_stage1", "2-tiny_stage1_5", "3-tiny_stage2_clips", "4-tiny_stage2"):
        assert (out / "stages" / stage / "DONE").exists()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["qa_accuracy"] <= 1.0
    assert metrics["chance.qa_accuracy"] == pytest.approx(0.25)
    assert metrics["perplexity"] > 1.0
    section = (out / "eval" / "section.md").read_text()
    assert "## Video-Ma²mba" in section and "Video-MME" in section and "chance" in section
    assert (out / "report" / "report.md").exists()
