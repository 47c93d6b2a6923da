"""LLaVA-Video-178K QA: options parsed from "A. ..." lines, answer letters -> indices, rows merged per video."""
from __future__ import annotations

import pytest

from datamodules.convert import AnnotationError, ConvertConfig, convert
from datamodules.convert.llava_video import parse_qa

from .helpers import read_split, write_json

MC = {"id": "ytb_llv1_mc", "data_source": "0_30_s_youtube_v0_1", "video": "llava/ytb_llv1.mp4", "conversations": [
    {"from": "human", "value": "<image>\nWhat colour is the room at the start?\nA. Red\nB. Blue\nC. Yellow\nD. Green\n"
                               "Answer with the option's letter from the given choices directly."},
    {"from": "gpt", "value": "A."},
    {"from": "human", "value": "What moves across the frame?\nOptions:\n(A) A dog\n(B) A white square\n(C) A car"},
    {"from": "gpt", "value": "(B) A white square"},
    {"from": "human", "value": "Which colour never appears?\nA) Red\nB) Green"},
    {"from": "gpt", "value": "Green"},
]}
OPEN = {"id": "ytb_llv1_oe", "data_source": "0_30_s_youtube_v0_1", "video": "llava/ytb_llv1.mp4", "conversations": [
    {"from": "human", "value": "<image>\nDescribe what happens in the video."},
    {"from": "gpt", "value": "A white square slides across a red room."},
]}
LOST = {"id": "lost", "video": "llava/ytb_never_fetched.mp4", "conversations": OPEN["conversations"]}


def test_rows_become_qa_entries_merged_per_video(videos, tmp_path):
    mc = write_json(tmp_path / "0_30_s_youtube_mc_qa.json", [MC, LOST])
    oe = write_json(tmp_path / "0_30_s_youtube_oe_qa.json", [OPEN])
    report = convert(ConvertConfig("llava-video", [mc, oe], videos, tmp_path / "out", progress=False))
    assert report.written == 1 and report.missing == [("llava/ytb_never_fetched.mp4", f"{mc}:1")]
    (sample, frames), = read_split(tmp_path / "out")
    assert sample["num_frames"] == 8 == frames.shape[0] and sample["source"] == "llava-video"
    assert sample["qa"] == [
        {"question": "What colour is the room at the start?", "options": ["Red", "Blue", "Yellow", "Green"],
         "answer": 0, "answer_text": "Red", "segments": []},
        {"question": "What moves across the frame?", "options": ["A dog", "A white square", "A car"],
         "answer": 1, "answer_text": "A white square", "segments": []},
        {"question": "Which colour never appears?", "options": ["Red", "Green"], "answer": 1,
         "answer_text": "Green", "segments": []},
        {"question": "Describe what happens in the video.", "options": [], "answer": -1,
         "answer_text": "A white square slides across a red room.", "segments": []}]
    assert [(e["id"], e["turn"]) for e in sample["meta"]["llava_video"]] == [
        ("ytb_llv1_mc", 0), ("ytb_llv1_mc", 1), ("ytb_llv1_mc", 2), ("ytb_llv1_oe", 0)]


@pytest.mark.parametrize("answer,index", [("C", 2), ("C.", 2), ("(C)", 2), ("C. Yellow", 2), ("Answer: C", 2),
                                          ("The answer is C.", 2), ("yellow", 2), ("A", 0)])
def test_answer_forms(answer, index):
    qa = parse_qa("<image>\nWhich?\nA. Red\nB. Blue\nC. Yellow", answer, "f.json", 0, 0)
    options = ["Red", "Blue", "Yellow"]
    assert (qa.options, qa.answer, qa.answer_text) == (options, index, options[index])


def test_lettered_prose_is_not_mistaken_for_options():
    qa = parse_qa("<image>\nA. Lincoln said what in the video?", "Four score.", "f.json", 0, 0)
    assert (qa.question, qa.options, qa.answer) == ("A. Lincoln said what in the video?", [], -1)


@pytest.mark.parametrize("conversations,key,message", [
    ([{"from": "human", "value": "Which?\nA. x\nB. y"}, {"from": "gpt", "value": "E"}],
     r"conversations\[1\]\.value", "names none of the 2 options A-B"),
    ([{"from": "gpt", "value": "Which?"}, {"from": "gpt", "value": "x"}],
     r"conversations\[0\]\.from", "expected 'human'"),
    ([{"from": "human", "value": "Which?"}], "conversations", "expected human/gpt pairs"),
])
def test_malformed_row_names_file_row_and_key(videos, tmp_path, conversations, key, message):
    annotations = write_json(tmp_path / "qa.json", [OPEN, {"id": "x", "video": "llava/ytb_llv1.mp4",
                                                           "conversations": conversations}])
    with pytest.raises(AnnotationError, match=rf"qa\.json: row 1: key '{key}': .*{message}"):
        convert(ConvertConfig("llava-video", [annotations], videos, tmp_path / "out", progress=False))
