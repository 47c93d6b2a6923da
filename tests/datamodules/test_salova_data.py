"""SALOVA data: segments -> sampled frames, queries -> multi-hot labels and prompts, padded multi-video batches."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from datamodules.salova import (
    CAPTION_PROMPT, SalovaDataConfig, SalovaDataModule, collate_items, detect_scenes, make_item, segment_frames,
)
from tests.lightning_modules.salova.helpers import make_doc, make_tokens


def test_segment_frames_sample_evenly_inside_each_segment():
    segments = [{"start": 0.0, "end": 3.0}, {"start": 3.0, "end": 40.0}, {"start": 40.0, "end": 41.5}]
    frames = segment_frames(segments, num_frames=41, per_segment=4)
    assert frames[0] == [0, 1, 2]  # shorter than the cap: every frame
    assert len(frames[1]) == 4 and all(3 <= f < 40 for f in frames[1]) and frames[1] == sorted(frames[1])
    assert frames[1] == [3 + int((i + 0.5) * 37 / 4) for i in range(4)]
    assert frames[2] == [40]  # the last partial second is clipped to the video's frames


def test_items_carry_labels_prompts_and_only_the_sampled_frames(tmp_path):
    tokens = make_tokens(tmp_path)
    doc = {"key": "v0", "segments": [
        {"start": 0.0, "end": 10.0, "caption": "a red circle", "related": [0, 2]},
        {"start": 10.0, "end": 20.0, "caption": "a blue square", "related": [1]},
        {"start": 20.0, "end": 30.0, "caption": "a red circle", "related": [0, 2]}],
        "qa": [{"question": "what colour is the square", "options": ["red", "blue", "green"], "answer": 1,
                "answer_text": "blue", "segments": [1]}]}
    video = torch.arange(30, dtype=torch.uint8)[:, None, None, None].expand(30, 4, 4, 3).clone()
    cfg = SalovaDataConfig(root=str(tmp_path), queries="both", max_frames_per_segment=2)
    item = make_item(doc, video, tokens, cfg, train=False, where="t:v0")
    assert [q["kind"] for q in item["queries"]] == ["qa", "caption", "caption", "caption"]
    qa, first_caption = item["queries"][0], item["queries"][1]
    assert qa["labels"] == [0.0, 1.0, 0.0] and first_caption["labels"] == [1.0, 0.0, 1.0]
    special = tokens.special
    assert qa["prompt_ids"][0] == special["user"] and qa["prompt_ids"][-1] == special["assistant"]
    assert qa["answer_ids"][-1] == special["endoftext"] and qa["answer_ids"] == qa["options_ids"][1]
    assert tokens.llm.decode(qa["answer_ids"][:-1]).strip() == "blue"
    assert CAPTION_PROMPT.rstrip(".") in tokens.llm.decode(first_caption["prompt_ids"])
    assert tokens.llm.decode(first_caption["answer_ids"][:-1]).strip() == "a red circle"
    assert qa["query_ids"][-1] == special["endoftext"]
    # 2 frames per segment, each the frame of its own second.
    assert item["video"][:, 0, 0, 0].tolist() == [2, 7, 12, 17, 22, 27]
    assert item["segment_frames"] == [[0, 1], [2, 3], [4, 5]]
    # Training keeps a random subset of the queries; evaluation keeps them all.
    cfg_train = SalovaDataConfig(root=str(tmp_path), queries="both", max_queries_per_video=2)
    assert len(make_item(doc, video, tokens, cfg_train, train=True, where="t", rng=random.Random(0))["queries"]) == 2
    assert make_item({**doc, "qa": []}, video, tokens, SalovaDataConfig(root=str(tmp_path), queries="qa"),
                     train=False, where="t") is None


def test_collate_pads_and_indexes_several_videos(tmp_path):
    tokens = make_tokens(tmp_path)
    rng = random.Random(0)
    cfg = SalovaDataConfig(root=str(tmp_path), queries="both", max_frames_per_segment=3)
    items, videos = [], []
    for v in range(3):
        frames = rng.randint(10, 30)
        video = torch.randint(0, 256, (frames, 8, 8, 3), dtype=torch.uint8)
        videos.append(video)
        items.append(make_item(make_doc(f"v{v}", rng, rng.randint(2, 5), frames), video, tokens, cfg, False, "t"))
    batch = collate_items(items)
    n_segments = [len(item["segment_frames"]) for item in items]
    assert batch["video_segments"].shape == (3, max(n_segments))
    assert batch["video_segment_mask"].sum(1).tolist() == n_segments
    assert batch["frames"].dtype == torch.float32 and batch["frames"].shape[1] == 3
    assert 0.0 <= batch["frames"].min() and batch["frames"].max() <= 1.0
    for b, item in enumerate(items):
        for s, frame_ids in enumerate(item["segment_frames"]):
            n = int(batch["video_segments"][b, s])
            mask = batch["seg_frame_mask"][n]
            assert int(mask.sum()) == len(frame_ids)
            got = batch["frames"][batch["seg_frame_index"][n][mask]]
            want = item["video"][frame_ids].permute(0, 3, 1, 2).float() / 255
            torch.testing.assert_close(got, want)
    q = 0
    for b, item in enumerate(items):
        for query in item["queries"]:
            assert int(batch["query_video"][q]) == b
            s = len(query["labels"])
            assert batch["labels"][q, :s].tolist() == query["labels"] and not batch["labels"][q, s:].any()
            assert batch["answer_ids"][q][batch["answer_mask"][q]].tolist() == query["answer_ids"]
            assert int(batch["answer_index"][q]) == query["answer_index"]
            assert int(batch["options_mask"][q].any(-1).sum()) == len(query["options_ids"])
            q += 1
    assert q == batch["labels"].shape[0] == len(batch["meta"]["queries"])


def test_videos_without_segments_are_cut_by_pyscenedetect():
    frames = np.zeros((30, 32, 32, 3), dtype=np.uint8)
    frames[12:] = (200, 30, 30)
    frames[22:] = (20, 40, 220)
    segments = detect_scenes(frames, threshold=27.0, min_scene_frames=4)
    assert [(s["start"], s["end"]) for s in segments] == [(0.0, 12.0), (12.0, 22.0), (22.0, 30.0)]
    assert [s["related"] for s in segments] == [[0], [1], [2]]


def test_features_without_segments_is_a_clear_error(tmp_path):
    tokens = make_tokens(tmp_path)
    doc = {"key": "v0", "segments": [], "qa": []}
    with pytest.raises(ValueError, match="t:v0: no segments"):
        make_item(doc, torch.zeros(10, 16), tokens, SalovaDataConfig(root=str(tmp_path)), False, "t:v0")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="data.queries"):
        SalovaDataConfig(queries="captionz")
    with pytest.raises(ValueError, match="max_frames_per_segment"):
        SalovaDataConfig(max_frames_per_segment=0)


def test_datamodule_reads_a_generated_world(tmp_path):
    from datamodules.synthetic.generate import GenerateConfig, generate
    from datamodules.synthetic.world import WorldConfig

    root = tmp_path / "world"
    generate(GenerateConfig(out=str(root), videos=4, eval_videos=2, shard_size=4, workers=1),
             WorldConfig(minutes=(1.0, 1.0), scenes=(3, 4)), progress=False)
    data = SalovaDataModule(SalovaDataConfig(root=str(root), batch_size=2, queries="qa"))
    batch = next(iter(data.loader("test", rank=0, world_size=1)))
    assert len(batch["meta"]["keys"]) == 2
    for q, meta in enumerate(batch["meta"]["queries"]):
        assert meta["kind"] == "qa"
        assert [j for j, v in enumerate(batch["labels"][q].tolist()) if v] == meta["segments"]
        assert meta["options"][meta["answer_index"]] == meta["answer"]
    assert data.vocab_size == data.tokens.llm.get_vocab_size()
    world = json.loads((root / "world.json").read_text())
    assert data.world_chance("test") == world["splits"]["test"]["chance"]
    assert 0.0 <= data.world_chance("test")["prior.qa_accuracy"] <= 1.0
    (root / "world.json").unlink()  # converted real data has no world: no recorded chance levels
    assert data.world_chance("test") == {}


def test_world_chance_names_a_missing_split(tmp_path):
    (tmp_path / "world.json").write_text(json.dumps({"splits": {"train": {"chance": {"qa_accuracy": 0.25}}}}))
    data = SalovaDataModule.__new__(SalovaDataModule)  # world_chance reads only config.root
    data.config = SalovaDataConfig(root=str(tmp_path))
    with pytest.raises(ValueError, match="world.json: no splits.test.chance"):
        data.world_chance("test")


def test_test_split_chooses_what_the_test_stage_reads(tmp_path):
    from datamodules.synthetic.generate import GenerateConfig, generate
    from datamodules.synthetic.world import WorldConfig

    with pytest.raises(ValueError, match="data.test_split"):
        SalovaDataConfig(test_split="train")
    root = tmp_path / "world"
    generate(GenerateConfig(out=str(root), videos=2, eval_videos=2, shard_size=4, workers=1),
             WorldConfig(minutes=(1.0, 1.0), scenes=(3, 4)), progress=False)
    for split in ("val", "test"):
        data = SalovaDataModule(SalovaDataConfig(root=str(root), batch_size=2, queries="qa", test_split=split))
        keys = [key for batch in data.test_dataloader() for key in batch["meta"]["keys"]]
        assert keys and all(key.startswith(f"{split}-") for key in keys), keys
