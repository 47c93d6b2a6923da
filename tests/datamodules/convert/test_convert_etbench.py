"""E.T. Bench: grounding tasks -> streaming spans, the rest -> QA; plus --scene-detect on hard cuts."""
from __future__ import annotations

import pytest

from datamodules.convert import AnnotationError, ConvertConfig, convert
from datamodules.convert.core import UNCAPTIONED

from .helpers import read_split, write_json


def _row(idx, task, video, q, **fields):
    """A row as in etbench_txt_v1.0.json."""
    return {"version": 1.0, "idx": idx, "task": task, "source": "qvhighlights", "video": video,
            "duration": 10.0, "q": q, **fields}


ROWS = [
    _row(0, "tvg", "qvhighlights/eta.mp4", "Localize the moment when the square crosses the room.", tgt=[[2.0, 4.5]]),
    _row(1, "dvc", "qvhighlights/eta.mp4", "Localize every event and describe it.",
         tgt=[[0.0, 3.0], [2.0, 5.0], [7.0, 12.0]], g=["a square appears", "it slides", "it leaves"]),
    _row(2, "rar", "qvhighlights/eta.mp4", "Which action happens at <vid>? Options: (A) ... (D) ...",
         src=[3.0, 4.0], o=["(A) jumping", "(B) sitting", "(C) sliding", "(D) falling"], p=2),
    _row(3, "evs", "qvhighlights/eta.mp4", "Summarise the video by its key moments.", tgt=[[1.0, 2.0], [6.0, 7.5]]),
    _row(4, "tvg", "qvhighlights/never_downloaded.mp4", "Localize the dog.", tgt=[[1.0, 2.0]]),
]


def test_grounding_tasks_become_streaming_queries_and_others_qa(videos, tmp_path):
    annotations = write_json(tmp_path / "etbench_txt_v1.0.json", ROWS)
    report = convert(ConvertConfig("etbench", [annotations], videos / "etbench", tmp_path / "out", progress=False))
    assert report.written == 1
    assert report.missing == [("qvhighlights/never_downloaded.mp4", f"{annotations}:4")]
    (sample, frames), = read_split(tmp_path / "out")
    assert sample["num_frames"] == frames.shape[0] == 10 and sample["duration"] == 10.0
    assert sample["segments"] == []
    assert sample["streaming"] == [
        {"query": ROWS[0]["q"], "spans": [[2.0, 4.5]]},
        # overlapping events merge (the schema wants disjoint spans); the last is clipped to the video
        {"query": ROWS[1]["q"], "spans": [[0.0, 5.0], [7.0, 10.0]]}]
    assert sample["qa"] == [
        {"question": ROWS[2]["q"], "options": ROWS[2]["o"], "answer": 2, "answer_text": "(C) sliding", "segments": []},
        {"question": ROWS[3]["q"], "options": [], "answer": -1,
         "answer_text": "1 - 2 seconds, 6 - 7.5 seconds", "segments": []}]
    entries = sample["meta"]["etbench"]
    assert [(e["idx"], e["task"], e["entry"]) for e in entries] == [
        (0, "tvg", "streaming[0]"), (1, "dvc", "streaming[1]"), (2, "rar", "qa[0]"), (3, "evs", "qa[1]")]
    assert entries[1]["tgt"] == ROWS[1]["tgt"] and entries[1]["g"] == ROWS[1]["g"] and entries[2]["src"] == [3.0, 4.0]


@pytest.mark.parametrize("row,key,message", [
    (_row(7, "tvg", "qvhighlights/eta.mp4", "Where?"), "tgt", "grounding task but has no target spans"),
    (_row(7, "rar", "qvhighlights/eta.mp4", "Which?", o=["a", "b"], p=5), "p", "out of range"),
    (_row(7, "tal", "qvhighlights/eta.mp4", "When?", tgt=[[5.0, 2.0]]), r"tgt\[0\]", "start 5.0 > end 2.0"),
    ({"idx": 7, "task": "tvg", "video": "qvhighlights/eta.mp4", "q": "Where?", "tgt": [[1, 2]]}, "duration", "missing"),
])
def test_malformed_row_names_file_row_and_key(videos, tmp_path, row, key, message):
    annotations = write_json(tmp_path / "etbench.json", [ROWS[0], row])
    with pytest.raises(AnnotationError, match=rf"etbench\.json: row 1: key '{key}': .*{message}"):
        convert(ConvertConfig("etbench", [annotations], videos / "etbench", tmp_path / "out", progress=False))


def test_scene_detect_cuts_videos_without_boundaries(videos, tmp_path):
    row = _row(0, "tvg", "cuts/hard_cuts.mp4", "Tell me when the scene turns yellow.", tgt=[[8.0, 12.0]])
    annotations = write_json(tmp_path / "etbench.json", [row])
    convert(ConvertConfig("etbench", [annotations], videos, tmp_path / "out", scene_detect=True, progress=False))
    (sample, frames), = read_split(tmp_path / "out")
    assert frames.shape[0] == 12
    bounds = [(s["start"], s["end"]) for s in sample["segments"]]
    assert bounds == [(0.0, pytest.approx(4.0, abs=0.04)), (pytest.approx(4.0, abs=0.04), pytest.approx(8.0, abs=0.04)),
                      (pytest.approx(8.0, abs=0.04), 12.0)]
    assert all(s["caption"] == UNCAPTIONED for s in sample["segments"])
    assert sample["meta"]["uncaptioned"] == [0, 1, 2] and sample["meta"]["scenes_from"] == "pyscenedetect"
