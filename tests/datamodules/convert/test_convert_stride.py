"""STRIDE JSONL: clips cut from the source, value == 1 entries -> active spans relative to the clip."""
from __future__ import annotations

import pytest

from datamodules.convert import AnnotationError, ConvertConfig, convert

from .helpers import read_split, second_shown, write_jsonl


def _row(path, start, end, query, entries, output="The scene just turned yellow."):
    """A line of the STRIDE training JSONL; entry times are relative to the clip start."""
    return [{"type": "text", "content": query, "output": output},
            {"type": "video", "path": path, "fps": 1.0, "start_seconds": start, "end_seconds": end},
            {"type": "activation_output",
             "entries": [{"start_seconds": s, "end_seconds": e, "mask": m, "value": v} for s, e, m, v in entries]}]


YELLOW = "Tell me when the scene turns yellow."
ROWS = [
    # the yellow scene starts 14 s into the source = 10 s into this clip, and runs past its end
    _row("stride/str1.mp4", 4.0, 16.5, YELLOW, [(0, 10, 1, 0), (10, 11, 1, 1), (11, 12.5, 0, 1)]),
    _row("stride/str1.mp4", 4.0, 16.5, "Tell me when a dog barks.", [(0, 12.5, 1, 0)], output=""),
    _row("stride/str1.mp4", 0.0, 9.0, YELLOW, [(0, 9, 1, 0)]),  # the clip ends before the event
    _row("stride/lost.mp4", 0.0, 5.0, YELLOW, [(0, 5, 1, 0)]),
]


def test_clips_cut_from_source_with_spans_relative_to_clip(videos, tmp_path):
    annotations = write_jsonl(tmp_path / "stride_train.jsonl", ROWS)
    report = convert(ConvertConfig("stride", [annotations], videos, tmp_path / "out", progress=False))
    assert report.written == 2 and report.missing == [("stride/lost.mp4", f"{annotations}:4")]
    (late, late_frames), (early, early_frames) = read_split(tmp_path / "out")

    assert late["duration"] == 12.5 and late["num_frames"] == 12 == late_frames.shape[0]
    # frame i of the clip is second 4 + i of the 29.97 FPS source
    assert [second_shown(f) for f in late_frames] == list(range(4, 16))
    assert late["meta"]["clip_offsets"] == [4.0, 16.5] and late["meta"]["clip"] == [4.0, 16.5]
    assert late["streaming"] == [{"query": YELLOW, "spans": [[10.0, 12.5]]},
                                 {"query": "Tell me when a dog barks.", "spans": []}]
    first = late["meta"]["stride"][0]
    assert [e["mask"] for e in first["entries"]] == [1, 1, 0] and first["output"] == "The scene just turned yellow."
    assert first["row"] == 1 and first["entry"] == "streaming[0]"

    assert early["num_frames"] == 9 == early_frames.shape[0]
    assert [second_shown(f) for f in early_frames] == list(range(9))
    assert early["streaming"] == [{"query": YELLOW, "spans": []}]


@pytest.mark.parametrize("row,key,message", [
    (ROWS[0][:2], "type", "no item of type 'activation_output'"),
    (_row("stride/str1.mp4", 0.0, 5.0, YELLOW, [(0, 5, 1, 2)]), r"\[2\]\.entries\[0\]\.value", "expected 0 or 1"),
    (_row("stride/str1.mp4", 6.0, 5.0, YELLOW, [(0, 5, 1, 0)]), r"\[1\]\.end_seconds", "start_seconds < end_seconds"),
    ({"text": YELLOW}, "<row>", "expected a list of typed items"),
])
def test_malformed_row_names_file_row_and_key(videos, tmp_path, row, key, message):
    annotations = write_jsonl(tmp_path / "stride.jsonl", [ROWS[2], row])
    with pytest.raises(AnnotationError, match=rf"stride\.jsonl: row 2: key '{key}': .*{message}"):
        convert(ConvertConfig("stride", [annotations], videos, tmp_path / "out", progress=False))
