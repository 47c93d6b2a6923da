"""SceneWalk: the training JSONL (scenes + similarity matrices) and the per-clip parquet release."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamodules.convert import AnnotationError, ConvertConfig, convert

from .helpers import read_split, second_shown, write_jsonl

CAPTIONS = ["A red room with a white box sliding right.", "A dark blue room, the white box keeps moving.",
            "The red room again, the box slides across."]


def _row(video, scenes, captions, **extra):
    """A row in the published layout: one human/gpt pair per clip."""
    conversations = []
    for k, caption in enumerate(captions):
        conversations += [{"from": "human", "value": f"<image>\nDescribe clip {k + 1} of the video."},
                          {"from": "gpt", "value": caption}]
    return {"id": video.split("/")[-1].split(".")[0], "video": video, "total_time": 15.0, "clip_num": len(scenes),
            "scenes": scenes, "conversations": conversations, **extra}


def _scenes(bounds, fps):
    return [{"start_frame": round(a * fps), "end_frame": round(b * fps), "start_fps": fps, "end_fps": fps}
            for a, b in bounds]


@pytest.fixture()
def jsonl(tmp_path):
    sen = [[1.0, 0.3, 0.9], [0.3, 1.0, 0.2], [0.9, 0.2, 1.0]]
    lb = [[0.25, 0.1, 0.1], [0.3, 0.25, 0.0], [0.1, 0.1, 0.25]]
    rows = [_row("scenewalk/walk1.mp4", _scenes([(0, 5), (5, 10), (10, 15)], 25.0), CAPTIONS, sen_sim=sen, lb_sim=lb),
            _row("scenewalk/not_downloaded.mp4", _scenes([(0, 4)], 30.0), ["gone"]),
            _row("scenewalk/walk2.mp4", _scenes([(0, 3), (3, 6), (6, 9)], 1.0), CAPTIONS)]
    return write_jsonl(tmp_path / "scenewalk_train.jsonl", rows)


def test_jsonl_rows_become_captioned_segments_with_related_ids(videos, jsonl, tmp_path, caplog):
    out = tmp_path / "out"
    report = convert(ConvertConfig("scenewalk", [jsonl], videos, out, shard_size=1, progress=False))
    assert report.written == 2 and len(report.shards) == 2
    assert report.missing == [("scenewalk/not_downloaded.mp4", f"{jsonl}:2")]
    assert "not_downloaded.mp4" in caplog.text and "not_downloaded.mp4" in report.summary()

    (walk1, frames1), (walk2, frames2) = read_split(out)
    assert walk1["source"] == "scenewalk" and walk1["meta"]["id"] == "walk1"
    assert walk1["duration"] == 15.0 and walk1["num_frames"] == 15 == frames1.shape[0]
    assert [second_shown(f) for f in frames1] == list(range(15))  # 25 FPS resampled to 1 FPS
    assert [(s["start"], s["end"], s["caption"]) for s in walk1["segments"]] == [
        (0.0, 5.0, CAPTIONS[0]), (5.0, 10.0, CAPTIONS[1]), (10.0, 15.0, CAPTIONS[2])]
    # related[i] = {i} + {j: sen_sim[i][j] > 0.83 or lb_sim[i][j] > 0.21}
    assert [s["related"] for s in walk1["segments"]] == [[0, 2], [0, 1], [0, 2]]
    # No similarity in the row and no --sen-sim: each caption relates to its own clip only.
    assert walk2["num_frames"] == 9 == frames2.shape[0] and walk2["meta"]["source_fps"] == 1.0
    assert [s["related"] for s in walk2["segments"]] == [[0], [1], [2]]


def test_thresholds_are_configurable(videos, jsonl, tmp_path):
    cfg = ConvertConfig("scenewalk", [jsonl], videos, tmp_path / "out", sen_threshold=0.95, lb_threshold=0.26,
                        progress=False)
    convert(cfg)
    walk1, _ = read_split(tmp_path / "out")[0]
    assert [s["related"] for s in walk1["segments"]] == [[0], [0, 1], [2]]


def test_malformed_row_names_file_row_and_key(videos, tmp_path):
    bad = _row("scenewalk/walk1.mp4", _scenes([(0, 5), (5, 10)], 25.0), CAPTIONS[:2])
    bad["clip_num"] = 3
    path = write_jsonl(tmp_path / "bad.jsonl", [_row("scenewalk/walk2.mp4", _scenes([(0, 9)], 1.0), ["x"]), bad])
    with pytest.raises(AnnotationError, match=r"bad\.jsonl: row 2: key 'scenes': 2 scenes but clip_num is 3"):
        convert(ConvertConfig("scenewalk", [path], videos, tmp_path / "out", progress=False))
    bad = _row("scenewalk/walk1.mp4", _scenes([(0, 5)], 25.0), CAPTIONS[:1])
    del bad["scenes"][0]["end_fps"]
    path = write_jsonl(tmp_path / "bad2.jsonl", [bad])
    with pytest.raises(AnnotationError, match=r"row 1: key 'scenes\[0\]\.end_fps': missing"):
        convert(ConvertConfig("scenewalk", [path], videos, tmp_path / "out2", progress=False))
    # on_error=skip records the row and converts the rest
    report = convert(ConvertConfig("scenewalk", [path], videos, tmp_path / "out3", on_error="skip", progress=False))
    assert report.written == 0 and report.failed[0][0] == f"{path}:1"


def test_parquet_rows_per_clip_grouped_by_video(videos, tmp_path):
    def clip(video_id, start, end, caption, v2t, t2t):
        return {"id": video_id, "url": f"https://www.youtube.com/watch?v={video_id}",
                "time_stamp": {"duration": end - start, "start_frame": start * 30, "end_frame": end * 30,
                               "start_fps": 30.0, "end_fps": 30.0,
                               "start_time": f"00:00:{start:06.3f}", "end_time": f"00:00:{end:06.3f}"},
                "v2t_score": v2t, "t2t_score": t2t,
                "conversations": [{"from": "human", "value": "<image>\nDescribe this clip."},
                                  {"from": "gpt", "value": caption}]}
    rows = [clip("walk2", 6, 9, CAPTIONS[2], 0.31, 0.2), clip("walk2", 0, 3, CAPTIONS[0], 0.28, 0.4),
            clip("absent_video", 0, 5, "nothing", 0.3, 0.3), clip("walk2", 3, 6, CAPTIONS[1], 0.25, 0.5)]
    path = tmp_path / "scenewalk.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = convert(ConvertConfig("scenewalk", [path], videos, tmp_path / "out", progress=False))
    assert report.written == 1 and [name for name, _ in report.missing] == ["absent_video"]
    (sample, frames), = read_split(tmp_path / "out")
    assert frames.shape[0] == sample["num_frames"] == 9
    assert [(s["start"], s["end"], s["caption"]) for s in sample["segments"]] == [
        (0.0, 3.0, CAPTIONS[0]), (3.0, 6.0, CAPTIONS[1]), (6.0, 9.0, CAPTIONS[2])]
    # Scalar scores are each clip's own caption score: kept, in time order, relating nothing.
    assert sample["meta"]["v2t_score"] == [0.28, 0.25, 0.31] and sample["meta"]["t2t_score"] == [0.4, 0.5, 0.2]
    assert [s["related"] for s in sample["segments"]] == [[0], [1], [2]]


def test_minilm_sentence_similarity_relates_paraphrases(videos, tmp_path):
    captions = ["A man slices onions on a wooden cutting board.",
                "A red sports car speeds along a coastal highway.",
                "A person chops onions on a cutting board."]
    row = _row("scenewalk/walk2.mp4", _scenes([(0, 3), (3, 6), (6, 9)], 1.0), captions)
    path = write_jsonl(tmp_path / "a.jsonl", [row])
    convert(ConvertConfig("scenewalk", [path], videos, tmp_path / "out", sen_sim="minilm", sen_threshold=0.6,
                          progress=False))
    (sample, _), = read_split(tmp_path / "out")
    assert sample["meta"]["sen_sim_from"] == "all-MiniLM-L6-v2"
    assert [s["related"] for s in sample["segments"]] == [[0, 2], [1], [0, 2]]


def test_scenes_past_the_video_end_are_dropped_and_ids_renumbered(videos, tmp_path):
    # walk2 lasts 9 s; the annotation claims a fourth clip at 9-12 s (e.g. a re-encoded, shorter copy).
    sen = [[1.0, 0.1, 0.1, 0.9], [0.1, 1.0, 0.9, 0.1], [0.1, 0.9, 1.0, 0.1], [0.9, 0.1, 0.1, 1.0]]
    row = _row("scenewalk/walk2.mp4", _scenes([(0, 3), (3, 6), (6, 9), (9, 12)], 1.0), CAPTIONS + ["gone"],
               sen_sim=sen)
    convert(ConvertConfig("scenewalk", [write_jsonl(tmp_path / "a.jsonl", [row])], videos, tmp_path / "out",
                          progress=False))
    (sample, frames), = read_split(tmp_path / "out")
    assert frames.shape[0] == 9 and sample["meta"]["dropped_segments"] == 1
    assert [s["caption"] for s in sample["segments"]] == CAPTIONS
    assert [s["related"] for s in sample["segments"]] == [[0], [1, 2], [1, 2]]  # the match with clip 3 is gone
