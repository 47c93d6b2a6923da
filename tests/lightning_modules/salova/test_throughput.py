"""experiments/salova_throughput.py: measures each stage of a pipeline as the runner builds it, on real batches."""
from __future__ import annotations

from .test_module import SMALL


def test_pipeline_stages_get_the_shared_keys():
    from experiments.salova_throughput import stage_configs

    stages = stage_configs("salova/tiny", [])
    assert [name for name, _ in stages] == ["salova/tiny_stage1", "salova/tiny_stage1_5", "salova/tiny_stage2"]
    for _, cfg in stages:  # tiny.yaml's shared keys: without them a stage would decode frames
        assert cfg.data.use_feats and cfg.model.vision.mode == "feats" and cfg.model.connector.feats_grid == 2
    assert [cfg.model.router_only for _, cfg in stages] == [True, False, False]


def test_throughput_measures_every_stage_of_the_pipeline(tmp_path):
    from datamodules.synthetic.generate import GenerateConfig, generate
    from datamodules.synthetic.world import WorldConfig
    from experiments import salova_throughput

    root = tmp_path / "world"
    generate(GenerateConfig(out=str(root), videos=4, eval_videos=2, shard_size=4, workers=1, feats=True),
             WorldConfig(minutes=(1.0, 1.0), scenes=(3, 4), qa_per_video=2), progress=False)
    overrides = [f"data.root={root}", "data.num_workers=0", *SMALL]
    path = salova_throughput.main(["--exp", "salova/tiny", "--batches", "2", "--steps", "1",
                                   "--out", str(tmp_path / "out"), *overrides])
    text = path.read_text()
    assert f"--exp salova/tiny --batches 2 --steps 1 data.root={root}" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| salova/")]
    assert [row[0] for row in rows] == ["| salova/tiny_stage1", "| salova/tiny_stage1_5", "| salova/tiny_stage2"]
    assert [row[1] for row in rows] == ["router only (no LLM)", "LLM on ground-truth segments (teacher forcing)",
                                        "LLM on the router's top-k"]
    for row in rows:
        assert row[2] == "2" and float(row[4]) > 0 and float(row[6]) > 0
        assert float(row[8]) == 4.0  # queries per step: 2 videos x 2 questions, all kept (max 6 a visit)


def test_speed_up_is_per_stage_against_its_first_batch_size():
    from experiments.salova_throughput import markdown

    def row(stage, batch, videos_per_cpu_s):
        return {"stage": stage, "step": "x", "batch": batch, "s_per_step": 1.0, "videos_per_s": 1.0,
                "cpu_s_per_step": 1.0, "videos_per_cpu_s": videos_per_cpu_s, "queries_per_step": 1.0,
                "segments_per_step": 1.0, "frames_per_step": 1.0}

    text = markdown("cmd", 1, [row("a", 1, 10.0), row("a", 8, 25.0), row("b", 1, 4.0), row("b", 8, 6.0)])
    speed_ups = [line.split(" | ")[7] for line in text.splitlines() if line.startswith("| a") or line.startswith("| b")]
    assert speed_ups == ["1.00x", "2.50x", "1.00x", "1.50x"]
