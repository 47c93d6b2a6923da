import json
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds

from datamodules.common.schema import validate_sample
from datamodules.common.shards import shard_paths
from datamodules.common.text import SPECIAL_TOKENS, load_tokenizer
from datamodules.common.video import read_video
from datamodules.synthetic import WorldConfig, make_sample
from datamodules.synthetic.generate import random_retrieval_recall
from datamodules.synthetic.render import frame_features
from datamodules.synthetic.world import COLOURS, DEFAULT_QA_TEMPLATES, MOTIONS, NUMBERS, TINTS

from .conftest import write_tiny_world


def samples(root, split):
    return list(wds.WebDataset([str(p) for p in shard_paths(root / split)], shardshuffle=False))


def test_layout_and_stock_webdataset_keys(tiny_world):
    assert (tiny_world / "tokenizer.json").is_file() and (tiny_world / "world.json").is_file()
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        items = samples(tiny_world, split)
        assert [s["__key__"] for s in items] == [f"{split}-{i:06d}" for i in range(count)]
        for s in items:
            assert {"json", "mp4", "feats.npy"} <= set(s)
            document = validate_sample(json.loads(s["json"]), s["__key__"], key=s["__key__"])
            frames = read_video(s["mp4"])
            assert len(frames) == document["num_frames"] == int(document["duration"])
            assert frames.shape[1:] == (64, 64, 3)
            assert np.load(__import__("io").BytesIO(s["feats.npy"])).shape == (document["num_frames"], 768)


def test_readable_by_tar(tiny_world):
    shard = shard_paths(tiny_world / "train")[0]
    names = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
    assert names == ["train-000000.json", "train-000000.mp4", "train-000000.feats.npy",
                     "train-000001.json", "train-000001.mp4", "train-000001.feats.npy"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_world):
    write_tiny_world(tmp_path / "again")
    for split in ("train", "val", "test"):
        for a, b in zip(shard_paths(tiny_world / split), shard_paths(tmp_path / "again" / split), strict=True):
            assert a.read_bytes() == b.read_bytes(), a
    assert (tiny_world / "tokenizer.json").read_bytes() == (tmp_path / "again" / "tokenizer.json").read_bytes()
    assert (tiny_world / "world.json").read_bytes() == (tmp_path / "again" / "world.json").read_bytes()
    world = WorldConfig(minutes=(1.0, 1.5))
    assert make_sample(world, 0, "train", 0)[1]["json"] != make_sample(world, 1, "train", 0)[1]["json"]


def _npy_sample(seed=3, **knobs):
    world = WorldConfig(minutes=(2.0, 3.0), **knobs)
    key, members = make_sample(world, seed, "train", 0, feats=True, video_format="npy")
    return members["json"], members["frames.npy"], members["feats.npy"]


def _colour_pixels(frames, colour, tolerance=30):
    distance = np.abs(frames.astype(int) - np.array(COLOURS[colour])).max(axis=-1)
    return (distance <= tolerance).sum(axis=(1, 2))


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_annotations_match_the_rendered_frames(seed):
    document, frames, feats = _npy_sample(seed)
    scenes = document["meta"]["scenes"]
    # A shape is on screen exactly while the state says so: its colour fills >= ~25 pixels inside, none outside
    # (colours are unique within a scene, and no other thing is drawn in an object colour).
    for scene in scenes:
        for shape in scene["shapes"]:
            counts = _colour_pixels(frames[scene["start"]:scene["end"]], shape["colour"])
            inside = np.arange(scene["start"], scene["end"])
            visible = (inside >= shape["appear"]) & (inside < shape["vanish"])
            assert (counts[visible] >= 25).all() and (counts[~visible] == 0).all(), (seed, scene, shape)
    # Streaming spans: the queried shape is visible in every second of every span.
    for item in document["streaming"]:
        name = item["query"].removeprefix("tell me when a ").removeprefix("tell me while a ")
        name = name.removesuffix(" appears").removesuffix(" is on screen")
        colour, shape = name.split()
        for start, end in item["spans"]:
            for second in range(int(start), int(end)):
                scene = next(s for s in scenes if s["start"] <= second < s["end"])
                assert any(o["colour"] == colour and o["shape"] == shape and o["appear"] <= second < o["vanish"]
                           for o in scene["shapes"]), (item, second)
                assert _colour_pixels(frames[second:second + 1], colour)[0] >= 25
    # Scene cuts are real: the background tint changes across every cut.
    for before, after in zip(scenes, scenes[1:]):
        assert before["tint"] != after["tint"]
        corner_before, corner_after = frames[after["start"] - 1], frames[after["start"]]
        assert np.abs(corner_before.astype(int) - corner_after.astype(int)).mean() > 5
    # Features are the frames pooled 4x4 on a 16x16 grid.
    assert np.allclose(feats.astype(np.float32), frame_features(frames).astype(np.float32))
    assert feats.dtype == np.float16


@pytest.mark.parametrize("seed", range(6))
def test_qa_answers_follow_from_the_state(seed):
    document, _, _ = _npy_sample(seed)
    segments, scenes = document["segments"], document["meta"]["scenes"]
    assert segments[0]["start"] == 0 and segments[-1]["end"] == document["duration"]
    assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:]))
    for seg, scene in zip(segments, scenes):
        assert f"{scene['texture']} {scene['tint']} background" in seg["caption"]
        for shape in scene["shapes"]:
            assert f"{shape['size']} {shape['colour']} {shape['shape']} {shape['motion']}" in seg["caption"]
    for item, template in zip(document["qa"], document["meta"]["qa_templates"]):
        assert len(item["options"]) == 4 and item["options"][item["answer"]] == item["answer_text"]
        held = [scenes[i] for i in item["segments"]]
        assert held, item
        question, answer = item["question"], item["answer_text"]
        if template == "colour_on_background":
            shape = question.split("the ")[1].split(" on")[0]
            assert all(any(o["shape"] == shape and o["colour"] == answer for o in s["shapes"]) for s in held)
        elif template == "count_on_background":
            assert all(NUMBERS[len(s["shapes"]) - 1] == answer for s in held)
        elif template == "scenes_with_object":
            name = question.split("does a ")[1].removesuffix(" appear?")
            having = [s for s in scenes if any(f"{o['colour']} {o['shape']}" == name for o in s["shapes"])]
            assert NUMBERS[len(having) - 1] == answer and len(having) == len(held)
        elif template == "motion_of_object":
            assert answer in MOTIONS
        elif template == "background_of_object":
            assert all(f"the {s['texture']} {s['tint']} background" == answer for s in held)
        elif template == "appears_after_leaves":
            (scene,) = held
            name = question.removeprefix("What appears after the ").removesuffix(" leaves?")
            leaver = next(o for o in scene["shapes"] if f"{o['colour']} {o['shape']}" == name)
            entering = [o for o in scene["shapes"] if o["appear"] >= leaver["vanish"]]
            first = min(entering, key=lambda o: o["appear"])
            assert answer == f"a {first['colour']} {first['shape']}"


@pytest.mark.parametrize("seed", range(4))
def test_questions_that_need_no_binding(seed):
    """background_in_video: the answer is shown, every other option never is; background_at_end: the last scene's,
    against the video's other backgrounds first. The default world asks neither."""
    document, _, _ = _npy_sample(seed, qa_templates=("background_in_video", "background_at_end"), qa_per_video=2)
    shown = [f"the {s['texture']} {s['tint']} background" for s in document["meta"]["scenes"]]
    assert sorted(document["meta"]["qa_templates"]) == ["background_at_end", "background_in_video"]
    for item, template in zip(document["qa"], document["meta"]["qa_templates"]):
        wrong = [o for i, o in enumerate(item["options"]) if i != item["answer"]]
        if template == "background_in_video":
            assert item["answer_text"] in shown and not set(wrong) & set(shown)
        else:
            assert item["answer_text"] == shown[-1] and item["segments"] == [len(shown) - 1]
            assert set(wrong) & set(shown) or len(set(shown)) == 1  # the video's own backgrounds come first
    default, _, _ = _npy_sample(seed)
    assert set(default["meta"]["qa_templates"]) <= set(DEFAULT_QA_TEMPLATES)


@pytest.mark.parametrize("seed", range(4))
def test_video_from_state_inverts_the_saved_state_and_asks_the_same_questions(seed):
    from datamodules.synthetic.generate import _scene_state
    from datamodules.synthetic.world import qa_candidates, video_from_state

    document, _, _ = _npy_sample(seed)
    scenes = document["meta"]["scenes"]
    video = video_from_state(scenes)
    assert video.duration == document["duration"] and [_scene_state(s) for s in video.scenes] == scenes
    # The world drew its own questions out of these candidates: every one is among them, with its answer
    # (appears_after_leaves included, which reads shapes' times relative to their scene).
    asked = {(c["question"], c["answer"]) for pool in qa_candidates(video, 4).values() for c in pool}
    assert {(q["question"], q["answer_text"]) for q in document["qa"]} <= asked
    # A window of scenes from the middle: times relative to its first scene, shapes' included.
    window = video_from_state(scenes[1:3], start=scenes[1]["start"])
    assert window.scenes[0].start == 0 and window.duration == scenes[2]["end"] - scenes[1]["start"]
    assert [(o.appear, o.vanish) for o in window.scenes[0].shapes] == [
        (o["appear"] - scenes[1]["start"], o["vanish"] - scenes[1]["start"]) for o in scenes[1]["shapes"]]


def test_answer_positions_are_balanced(tiny_world):
    answers = [item["answer"] for split in ("train", "val", "test") for s in samples(tiny_world, split)
               for item in json.loads(s["json"])["qa"]]
    assert len(answers) >= 60
    assert min(np.bincount(answers, minlength=4)) >= len(answers) / 10


def test_world_json_chance_levels(tiny_world):
    info = json.loads((tiny_world / "world.json").read_text())
    assert info["config"]["size"] == 64 and info["seed"] == 0
    val = info["splits"]["val"]
    assert val["videos"] == 3 and val["chance"]["qa_accuracy"] == 0.25
    keys = [f"random_retrieval.recall@{k}" for k in (1, 3, 5)]
    assert 0 < val["chance"][keys[0]] < val["chance"][keys[1]] < val["chance"][keys[2]] <= 1
    # With one positive among n segments a random ranking hits with probability k / n.
    assert random_retrieval_recall(8, 1, 3) == pytest.approx(3 / 8)
    assert random_retrieval_recall(4, 2, 1) == pytest.approx(0.5)


def test_tokenizer_has_the_special_tokens_and_round_trips(tiny_world):
    tokenizer = load_tokenizer(tiny_world)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = "<|user|>What colour is the triangle on the striped teal background?<|assistant|>red"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert len(ids) < 20  # the world's words are single merges
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tiny_world / "train")


def test_world_config_checks():
    with pytest.raises(ValueError, match="objects"):
        WorldConfig(objects=(1, 9))
    with pytest.raises(ValueError, match="size"):
        WorldConfig(size=63)
    with pytest.raises(ValueError, match="minutes"):
        WorldConfig(minutes=(3.0, 1.0))
    with pytest.raises(ValueError, match="qa_templates.*background_of_sky"):
        WorldConfig(qa_templates=("background_in_video", "background_of_sky"))


def test_cli_writes_a_world_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "datamodules.synthetic", "--out", str(out), "--videos", "2", "--eval-videos", "1",
               "--minutes", "1", "1", "--seed", "7", "--workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert [s["__key__"] for s in samples(out, "val")] == ["val-000000"]
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_long_video_state_and_frames():
    world = WorldConfig(minutes=(65.0, 65.0), scenes=(20, 40))
    _, members = make_sample(world, 0, "test", 0, video_format="npy")
    document = validate_sample(members["json"], "long")
    assert document["duration"] == 3900 and members["frames.npy"].shape == (3900, 64, 64, 3)
    assert 20 <= len(document["segments"]) <= 40 and document["qa"] and document["streaming"]


@pytest.mark.slow
def test_cli_over_two_hours(tmp_path):
    out = tmp_path / "long"
    result = subprocess.run([sys.executable, "-m", "datamodules.synthetic", "--out", str(out), "--videos", "1",
                             "--splits", "train", "--minutes", "125", "125", "--scenes", "40", "60", "--workers", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (sample,) = samples(out, "train")
    document = json.loads(sample["json"])
    assert document["duration"] == 7500 and 40 <= len(document["segments"]) <= 60
    assert len(read_video(sample["mp4"])) == 7500
