"""Video-Ma²mba's data: prompt format, one placeholder per frame, labels on captions/answers only."""
from __future__ import annotations

import pytest
import torch

from datamodules.ma2mba import IGNORE, Ma2mbaDataConfig, Ma2mbaDataModule


def _module(root, stage, **cfg):
    return Ma2mbaDataModule(Ma2mbaDataConfig(root=str(root), batch_size=2, **cfg), stage=stage)


def _first_sample(dm, split):
    """The decoded sample map_sample receives (read straight from the first shard)."""
    from datamodules.common.wds import decode_sample, read_shard

    return decode_sample(next(iter(read_shard(dm.shards(split)[0]))), dm.cfg)


def _labelled_text(dm, item):
    return dm.decode(item["input_ids"][item["labels"] != IGNORE].tolist())


def test_stage1_one_item_per_clip_with_its_caption(tiny_world):
    dm = _module(tiny_world, "stage1")
    sample = _first_sample(dm, "train")
    items = dm.map_sample(sample, "train")
    segments = sample["json"]["segments"]
    assert len(items) == len(segments)
    for item, seg in zip(items, segments):
        frames = int(seg["end"]) - int(seg["start"])
        assert item["video"].shape[0] == frames
        assert torch.equal(item["video"], sample["frames"][int(seg["start"]):int(seg["end"])])
        assert int((item["input_ids"] == dm.frame).sum()) == frames
        assert _labelled_text(dm, item) == seg["caption"] + "<|endoftext|>"
        # The prompt is the paper's: <|system|>...<|user|><frames>question<|endoftext|><|assistant|>caption
        text = dm.decode(item["input_ids"].tolist())
        assert text.startswith("<|system|>" + dm.cfg.system_prompt + "<|user|><|frame|>")
        assert text.endswith(dm.cfg.caption_prompt + "<|endoftext|><|assistant|>" + seg["caption"] + "<|endoftext|>")


def test_stage1_5_interleaves_every_clip_with_its_caption(tiny_world):
    dm = _module(tiny_world, "stage1_5")
    sample = _first_sample(dm, "train")
    item = dm.map_sample(sample, "train")
    segments = sample["json"]["segments"]
    assert item["video"].shape[0] == sample["frames"].shape[0] == int((item["input_ids"] == dm.frame).sum())
    assert _labelled_text(dm, item) == "".join(s["caption"] + "<|endoftext|>" for s in segments)
    # Each caption follows exactly its clip's frames.
    ids = item["input_ids"].tolist()
    frame_runs, run = [], 0
    for tok in ids:
        if tok == dm.frame:
            run += 1
        elif run:
            frame_runs.append(run)
            run = 0
    assert frame_runs == [int(s["end"]) - int(s["start"]) for s in segments]
    assert item["video_ids"] is None and item["questions"] == []  # train items carry no eval extras


def test_stage2_groups_all_questions_of_a_video_and_labels_answers_only(tiny_world):
    dm = _module(tiny_world, "stage2")
    sample = _first_sample(dm, "val")
    item = dm.map_sample(sample, "val")
    qa = sample["json"]["qa"]
    assert qa, "the tiny world should ask questions"
    assert _labelled_text(dm, item) == "".join(q["answer_text"] + "<|endoftext|>" for q in qa)
    text = dm.decode(item["input_ids"].tolist())
    assert text.count("<|assistant|>") == len(qa) and text.count("<|user|>") == len(qa)
    assert text.startswith("<|system|>" + dm.cfg.system_prompt + "<|user|>" + "<|frame|>" * item["video"].shape[0]
                           + qa[0]["question"] + "<|endoftext|><|assistant|>" + qa[0]["answer_text"])
    # Eval extras: the video prefix alone, and per question the prompt and options as separate pieces whose
    # concatenation is exactly what training saw.
    assert torch.equal(item["video_ids"], item["input_ids"][: len(item["video_ids"])])
    assert len(item["questions"]) == len(qa)
    for q, truth in zip(item["questions"], qa):
        assert q["answer"] == truth["answer"] and q["option_texts"] == truth["options"]
        assert dm.decode(q["prompt"].tolist()) == truth["question"] + "<|endoftext|><|assistant|>"
        assert [dm.decode(o.tolist()) for o in q["options"]] == [o + "<|endoftext|>" for o in truth["options"]]
    first = torch.cat([item["video_ids"], item["questions"][0]["prompt"],
                       item["questions"][0]["options"][qa[0]["answer"]]])
    assert torch.equal(item["input_ids"][: len(first)], first)


def test_question_first_asks_each_question_before_and_after_the_video(tiny_world):
    dm = _module(tiny_world, "stage2", question_first=True)
    head = "<|system|>" + dm.cfg.system_prompt + "<|user|>"
    for split in ("train", "val"):
        sample = _first_sample(dm, split)
        qa, frames = sample["json"]["qa"], "<|frame|>" * sample["frames"].shape[0]
        items = dm.map_sample(sample, split)
        assert len(items) == len(qa)  # one question per item, each reading the whole video
        for item, q in zip(items, qa):
            text = dm.decode(item["input_ids"].tolist())
            assert text == (head + q["question"] + frames + q["question"] + "<|endoftext|><|assistant|>"
                            + q["answer_text"] + "<|endoftext|>")
            assert _labelled_text(dm, item) == q["answer_text"] + "<|endoftext|>"  # the answer only
            assert torch.equal(item["video"], sample["frames"])
        if split == "train":
            assert all(item["video_ids"] is None and item["questions"] == [] for item in items)
            continue
        for item, q in zip(items, qa):
            # Eval: the question's own video prefix, then its prompt and options continue it exactly as in training.
            (question,) = item["questions"]
            assert dm.decode(question["preamble"].tolist()) == head + q["question"]
            assert dm.decode(item["video_ids"].tolist()) == head + q["question"] + frames
            right = torch.cat([item["video_ids"], question["prompt"], question["options"][q["answer"]]])
            assert torch.equal(item["input_ids"], right)
    dense = _module(tiny_world, "stage2", question_first=True, dense_train_qa=3)
    items = dense.map_sample(_first_sample(dense, "train"), "train")
    assert len(items) == 3 and all(dense.decode(it["input_ids"].tolist()).count("<|assistant|>") == 1 for it in items)


def test_max_frames_drops_questions_about_unseen_segments(tiny_world):
    full = _module(tiny_world, "stage2")
    cut = _module(tiny_world, "stage2", max_frames=20)
    doc = _first_sample(full, "val")["json"]
    item = cut.map_sample(_first_sample(cut, "val"), "val")
    assert item["video"].shape[0] == 20
    kept = [q for q in doc["qa"] if all(doc["segments"][s]["end"] <= 20 for s in q["segments"])]
    assert [q["question"] for q in item["questions"]] == [q["question"] for q in kept]


def test_dense_train_qa_draws_from_every_question_of_the_true_state(tiny_world):
    dense = _module(tiny_world, "stage2", dense_train_qa=50)
    for split in ("train", "val"):
        sample = _first_sample(dense, split)
        item = dense.map_sample(sample, split)
        text = dense.decode(item["input_ids"].tolist())
        asked = text.split("<|frame|>")[-1].split("<|user|>")
        pairs = {tuple(turn.split("<|endoftext|><|assistant|>")) for turn in asked}
        own = {(q["question"], q["answer_text"] + "<|endoftext|>") for q in sample["json"]["qa"]}
        if split == "train":
            # The world asked its own questions out of the same candidates: every one is among them, same answer.
            assert own <= pairs and len(pairs) > len(own)
            assert _labelled_text(dense, item) == "".join(answer for _, answer in
                                                          (turn.split("<|endoftext|><|assistant|>") for turn in asked))
        else:
            assert pairs == own  # eval splits keep their own questions
    few = _module(tiny_world, "stage2", dense_train_qa=2)
    item = few.map_sample(_first_sample(few, "train"), "train")
    assert few.decode(item["input_ids"].tolist()).count("<|assistant|>") == 2
    sample = _first_sample(few, "train")
    del sample["json"]["meta"]["scenes"]
    with pytest.raises(ValueError, match="meta.scenes"):
        few.map_sample(sample, "train")
    with pytest.raises(ValueError, match="dense_train_qa"):
        Ma2mbaDataConfig(root=str(tiny_world), dense_train_qa=-1)


def test_dense_train_qa_draws_type_then_answer_uniformly_as_the_world_does(tiny_world):
    from collections import Counter

    from datamodules.ma2mba import world

    dm = _module(tiny_world, "stage2", dense_train_qa=1)
    sample = _first_sample(dm, "train")
    # Every candidate question of this video (a draw larger than the pool takes them all), and each one's type.
    everything = _module(tiny_world, "stage2", dense_train_qa=10_000)._dense_qa(sample)[1]
    assert len({q["question"] for q in everything}) == len(everything)  # distinct questions
    template_of = {}
    for template, pool in world.qa_candidates(world.video_from_state(sample["json"]["meta"]["scenes"]), 4).items():
        template_of.update({c["question"]: template for c in pool})
    draws = 1200
    picked = [dm._dense_qa(sample)[1][0] for _ in range(draws)]
    by_type = Counter(template_of[q["question"]] for q in picked)
    types = {template_of[q["question"]] for q in everything}
    assert set(by_type) == types
    for count in by_type.values():  # each question type about equally often, however many questions it has
        assert abs(count / draws - 1 / len(types)) < 0.35 / len(types)
    # Within a type, each answer about equally often (a uniform draw over questions would favour common answers).
    busiest = max(types, key=lambda t: len({q["answer_text"] for q in everything if template_of[q["question"]] == t}))
    answers = Counter(q["answer_text"] for q in picked if template_of[q["question"]] == busiest)
    assert len(answers) >= 2
    share = [c / sum(answers.values()) for c in answers.values()]
    assert max(share) - min(share) < 0.7 / len(answers)


def test_dense_train_qa_asks_only_the_question_types_of_the_world(tmp_path):
    from .conftest import write_tiny_world

    write_tiny_world(tmp_path, videos=2, eval_videos=1, qa_templates=("background_in_video", "background_at_end"))
    dm = _module(tmp_path, "stage2", dense_train_qa=50)
    assert dm._dense_templates == ("background_in_video", "background_at_end")
    asked = {q["question"] for q in dm._dense_qa(_first_sample(dm, "train"))[1]}
    assert asked == {"Which of these backgrounds appears in the video?", "On which background does the video end?"}
    (tmp_path / "world.json").rename(tmp_path / "moved.json")
    with pytest.raises(ValueError, match="world.json"):
        _module(tmp_path, "stage2", dense_train_qa=1)
    (tmp_path / "world.json").write_text('{"config": {"qa_templates": ["background_of_sky"]}}')
    with pytest.raises(ValueError, match="background_of_sky"):
        _module(tmp_path, "stage2", dense_train_qa=1)


def test_clip_scenes_trains_on_a_window_of_scenes_and_its_own_questions(tiny_world):
    from datamodules.ma2mba import world

    dm = _module(tiny_world, "stage2", question_first=True, dense_train_qa=4, clip_scenes=[1, 2])
    sample = _first_sample(dm, "train")
    scenes = sample["json"]["meta"]["scenes"]
    assert len(scenes) >= 3  # so that a window of 1-2 scenes is a real cut
    # A window's frames are one run of whole scenes: the scene starts give its first frame, its length a scene sum.
    starts = {int(s["start"]): i for i, s in enumerate(scenes)}
    lengths = set()
    for _ in range(40):
        frames, qas = dm._dense_qa(sample)
        matches = [start for start in starts if torch.equal(frames, sample["frames"][start:start + frames.shape[0]])]
        assert matches, "the window's frames are not a run of the video's frames from a scene start"
        first = starts[matches[0]]
        size = next(k for k in (1, 2) if int(scenes[min(first + k, len(scenes)) - 1]["end"]) - int(scenes[first]["start"])
                    == frames.shape[0])
        lengths.add(size)
        # Every question is one the world asks of that window alone, with its answer there.
        window = scenes[first:first + size]
        video = world.video_from_state(window, start=window[0]["start"])
        truth = {(c["question"], c["answer"]) for pool in world.qa_candidates(video, 4).values() for c in pool}
        assert qas and {(q["question"], q["answer_text"]) for q in qas} <= truth
    assert lengths == {1, 2}
    items = dm.map_sample(sample, "train")
    assert all(int((it["input_ids"] == dm.frame).sum()) == it["video"].shape[0] < sample["frames"].shape[0]
               for it in items)
    # Eval splits always see the whole video.
    val = _first_sample(dm, "val")
    assert all(it["video"].shape[0] == val["frames"].shape[0] for it in dm.map_sample(val, "val"))
    for bad in ([0, 2], [3, 2], [2]):
        with pytest.raises(ValueError, match="clip_scenes"):
            Ma2mbaDataConfig(root=str(tiny_world), dense_train_qa=2, clip_scenes=bad)
    with pytest.raises(ValueError, match="dense_train_qa"):
        Ma2mbaDataConfig(root=str(tiny_world), clip_scenes=[1, 2])


def test_collate_pads_tokens_and_keeps_videos_apart(tiny_world):
    dm = _module(tiny_world, "stage2")
    batch = next(iter(dm.loader("val", rank=0, world_size=1)))
    b = len(batch["keys"])
    assert b == 2 and batch["input_ids"].shape == batch["labels"].shape
    for i in range(b):
        n = int(batch["lengths"][i])
        assert (batch["input_ids"][i, n:] == dm.pad).all() and (batch["labels"][i, n:] == IGNORE).all()
        assert int((batch["input_ids"][i] == dm.frame).sum()) == batch["videos"][i].shape[0]


def test_feats_replace_frames(tiny_world):
    dm = _module(tiny_world, "stage2", use_feats=True)
    item = dm.map_sample(_first_sample(dm, "train"), "train")
    assert item["video"].dtype == torch.float32 and item["video"].dim() == 2
    assert int((item["input_ids"] == dm.frame).sum()) == item["video"].shape[0]


def test_bad_stage_and_missing_tokenizer_are_clear(tiny_world, tmp_path):
    with pytest.raises(ValueError, match="stage 'stage3'"):
        _module(tiny_world, "stage3")
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        _module(tmp_path, "stage2")
    with pytest.raises(ValueError, match="max_questions"):
        Ma2mbaDataConfig(root=str(tiny_world), max_questions=0)
