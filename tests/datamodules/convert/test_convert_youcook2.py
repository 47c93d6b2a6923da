"""YouCook2: steps -> captioned segments, gaps -> uncaptioned ones, one dense-captioning query."""
from __future__ import annotations

import pytest

from datamodules.convert import AnnotationError, ConvertConfig, convert
from datamodules.convert.core import UNCAPTIONED
from datamodules.convert.youcook2 import DENSE_CAPTION_QUERY

from .helpers import read_split, second_shown, write_json

STEPS = ["crack the eggs into a bowl", "whisk the eggs with salt", "pour the eggs into the hot pan"]


def _database():
    """youcookii_annotations_trainval.json layout."""
    def video(vid, subset, annotations, duration=12.01):
        return {"duration": duration, "subset": subset, "recipe_type": "101",
                "video_url": f"https://www.youtube.com/watch?v={vid}", "annotations": annotations}
    steps = [{"id": 0, "segment": [2, 5], "sentence": STEPS[0]}, {"id": 1, "segment": [5, 7], "sentence": STEPS[1]},
             {"id": 2, "segment": [7.5, 10], "sentence": STEPS[2]}]
    return {"database": {"cookA": video("cookA", "training", steps),
                         "cookB": video("cookB", "validation", steps[:1]),
                         "cookC": video("cookC", "training", steps[1:])}}


def test_steps_become_contiguous_segments_and_a_dense_caption_query(videos, tmp_path):
    annotations = write_json(tmp_path / "youcookii_annotations_trainval.json", _database())
    report = convert(ConvertConfig("youcook2", [annotations], videos, tmp_path / "out", progress=False))
    assert report.written == 1
    assert [name for name, _ in report.missing] == ["cookB", "cookC"]  # by name, never silently
    (sample, frames), = read_split(tmp_path / "out")
    # 360 frames at 30000/1001 FPS = 12.012 s -> 12 frames at 1 FPS, each from its own second
    assert sample["duration"] == pytest.approx(12.012) and sample["num_frames"] == 12 == frames.shape[0]
    assert [second_shown(f) for f in frames] == list(range(12))
    assert sample["meta"]["video_file"] == "youcook2/training/101/cookA.mp4"
    # 0-2 s (intro) filled, the 0.5 s pause at 7-7.5 absorbed by the step before, 10 s-end filled
    assert [(s["start"], s["end"], s["caption"]) for s in sample["segments"]] == [
        (0.0, 2.0, UNCAPTIONED), (2.0, 5.0, STEPS[0]), (5.0, 7.5, STEPS[1]), (7.5, 10.0, STEPS[2]),
        (10.0, 12.012, UNCAPTIONED)]
    assert sample["meta"]["uncaptioned"] == [0, 4]
    assert [s["related"] for s in sample["segments"]] == [[0], [1], [2], [3], [4]]
    # the query keeps the annotated step times (touching steps stay apart)
    assert sample["streaming"] == [{"query": DENSE_CAPTION_QUERY, "spans": [[2.0, 5.0], [5.0, 7.0], [7.5, 10.0]]}]
    assert sample["meta"]["subset"] == "training" and sample["meta"]["annotation_duration"] == 12.01


def test_subset_filter(videos, tmp_path):
    annotations = write_json(tmp_path / "yc2.json", _database())
    report = convert(ConvertConfig("youcook2", [annotations], videos, tmp_path / "out", subset="validation",
                                   split="val", progress=False))
    assert report.written == 0 and [name for name, _ in report.missing] == ["cookB"]


def test_malformed_row_names_file_row_and_key(videos, tmp_path):
    database = _database()
    database["database"]["cookA"]["annotations"][1]["segment"] = [5, "seven"]
    annotations = write_json(tmp_path / "yc2.json", database)
    with pytest.raises(AnnotationError, match=r"yc2\.json: row database\.cookA: key 'annotations\[1\]\.segment'"):
        convert(ConvertConfig("youcook2", [annotations], videos, tmp_path / "out", progress=False))
    with pytest.raises(AnnotationError, match=r"key 'database': missing"):
        convert(ConvertConfig("youcook2", [write_json(tmp_path / "flat.json", {"cookA": {}})], videos,
                              tmp_path / "out", progress=False))


def test_subset_filter_skips_unannotated_test_videos(videos, tmp_path):
    database = _database()
    database["database"]["cookT"] = {"duration": 30.0, "subset": "testing", "recipe_type": "101"}  # no annotations
    annotations = write_json(tmp_path / "yc2.json", database)
    report = convert(ConvertConfig("youcook2", [annotations], videos, tmp_path / "out", subset="training",
                                   progress=False))
    assert report.written == 1 and [name for name, _ in report.missing] == ["cookC"]
    with pytest.raises(AnnotationError, match=r"row database\.cookT: key 'annotations': missing"):
        convert(ConvertConfig("youcook2", [annotations], videos, tmp_path / "out2", progress=False))
