"""LLaVA-Video-178K style QA JSON -> one sample per video, a QA entry per human/gpt pair.

Rows: `[{id, video, conversations: [{from: human, value: "<image>\\n..."}, {from: gpt, value}, ...],
data_source?}]`; the caption, open-ended and multiple-choice files share this layout, and rows
naming the same video are merged. A question is multiple choice when its text holds at least two
option lines "A. ...", "B. ..." (also "(A) ...", "A) ..."), lettered from A in order: the options are
those lines' texts, the question the text before them (an "Options:" header and the instruction
after the options, e.g. "Answer with the option's letter ...", are dropped), and the answer the
letter the gpt turn starts with ("B", "B.", "(B) ...", "Answer: B") or the option it repeats.
Anything else is open-ended: options [], answer -1, answer_text = the gpt turn.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .core import QA, AnnotationError, ConvertConfig, VideoItem, need, parse_rows

_MEDIA_TOKEN = re.compile(r"<(image|video)>")
_OPTION = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.*?)\s*$")
_OPTIONS_HEADER = re.compile(r"^\s*(options|choices)\s*:?\s*$", re.IGNORECASE)
_ANSWER_LETTER = re.compile(
    r"^\s*(?:(?:the\s+)?(?:best\s+)?(?:answer|option)\s*(?:is)?\s*:?\s*)?\(?([A-Z])(?:[.):,]|\s|$)", re.IGNORECASE)


def read(cfg: ConvertConfig, failed: list) -> list[VideoItem]:
    videos: dict[str, VideoItem] = {}
    for path in cfg.annotations:
        for i, (video, pairs, row_id) in parse_rows(cfg, path, lambda row, i: _row(row, path, i), failed):
            item = videos.get(video)
            if item is None:
                item = videos[video] = VideoItem(video=video, where=f"{path}:{i}", meta={"llava_video": []})
            for turn, qa in pairs:
                item.meta["llava_video"].append({"id": row_id, "turn": turn, "entry": f"qa[{len(item.qa)}]"})
                item.qa.append(qa)
    return list(videos.values())


def _row(row: Any, path: Path, i: int | str) -> tuple[str, list[tuple[int, QA]], Any]:
    video = need(row, "video", str, path, i)
    conversations = need(row, "conversations", list, path, i)
    if not conversations or len(conversations) % 2:
        raise AnnotationError(path, i, "conversations", f"expected human/gpt pairs, got {len(conversations)} turns")
    pairs = []
    for k in range(0, len(conversations), 2):
        human, gpt = conversations[k], conversations[k + 1]
        for j, (turn, role) in enumerate(((human, "human"), (gpt, "gpt"))):
            if need(turn, "from", str, path, i, f"conversations[{k + j}].") != role:
                raise AnnotationError(path, i, f"conversations[{k + j}].from",
                                      f"expected {role!r}, got {turn['from']!r}")
        question = need(human, "value", str, path, i, f"conversations[{k}].")
        answer = need(gpt, "value", str, path, i, f"conversations[{k + 1}].").strip()
        if not answer:
            raise AnnotationError(path, i, f"conversations[{k + 1}].value", "empty answer")
        pairs.append((k // 2, parse_qa(question, answer, path, i, k)))
    return video, pairs, row.get("id")


def parse_qa(question: str, answer: str, path: Path, i: int | str, turn: int) -> QA:
    """Split human turn `turn` into question and options, and find which option turn + 1 answers."""
    question_key, answer_key = f"conversations[{turn}].value", f"conversations[{turn + 1}].value"
    lines = _MEDIA_TOKEN.sub("", question).strip().splitlines()
    first, options = _option_block(lines)
    if not options:
        text = "\n".join(lines).strip()
        if not text:
            raise AnnotationError(path, i, question_key, "empty question")
        return QA(text, [], -1, answer)
    stem = lines[:first]
    while stem and (not stem[-1].strip() or _OPTIONS_HEADER.match(stem[-1])):
        stem.pop()
    text = "\n".join(stem).strip()
    if not text:
        raise AnnotationError(path, i, question_key, "options without a question before them")
    if len(set(options)) != len(options):
        raise AnnotationError(path, i, question_key, f"repeated options {options!r:.120}")
    # The option's own text first: "A man cooks." must not read as letter A.
    folded = [o.casefold() for o in options]
    said = answer.strip().rstrip(".").casefold()
    match = _ANSWER_LETTER.match(answer)
    if said in folded:
        index = folded.index(said)
    elif match and ord(match.group(1).upper()) - ord("A") < len(options):
        index = ord(match.group(1).upper()) - ord("A")
    else:
        raise AnnotationError(path, i, answer_key, f"answer {answer!r:.60} names none of the "
                                                   f"{len(options)} options A-{chr(ord('A') + len(options) - 1)}")
    return QA(text, options, index, options[index])


def _option_block(lines: list[str]) -> tuple[int, list[str]]:
    """(index of the first option line, option texts) of the first run of lines lettered A, B, C...;
    (0, []) when there are fewer than two such lines."""
    for first, line in enumerate(lines):
        match = _OPTION.match(line)
        if not match or match.group(1) != "A":
            continue
        options = []
        for follow in lines[first:]:
            match = _OPTION.match(follow)
            if not match or match.group(1) != chr(ord("A") + len(options)) or not match.group(2):
                break
            options.append(match.group(2))
        if len(options) >= 2:
            return first, options
    return 0, []
