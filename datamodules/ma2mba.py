"""Video-Ma²mba's data: `longwatch/v1` samples -> token sequences with one `<|frame|>` per frame.

Every sequence follows the paper's prompt format (papers/FACTS.md):

    <|system|>S<|user|><|frame|>...<|frame|>Q<|endoftext|><|assistant|>A<|endoftext|>

and carries labels that are -100 everywhere except on the tokens to learn. Per stage:

- stage1   (alignment): one item per segment: that clip's frames, the caption prompt, the caption.
- stage1_5 (long-video knowledge): one item per video, clips and their captions interleaved over the
           whole video: S<|user|>[clip 1]caption 1<|endoftext|>[clip 2]caption 2<|endoftext|>...
- stage2   (QA SFT): one item per video holding all its questions (QA grouped per video):
           S<|user|>[video]Q1<|endoftext|><|assistant|>A1<|endoftext|><|user|>Q2<|endoftext|><|assistant|>A2...
           or, with `question_first`, one item per question, asked before and after the video:
           S<|user|>Q[video]Q<|endoftext|><|assistant|>A<|endoftext|>

Whole-video items of the eval splits also carry, for likelihood scoring of multiple-choice QA, the video
prefix alone (`video_ids`) and each question's prompt and options as separate token sequences.
This module knows tokenizers and file formats, never a model: the frame placeholder is expanded into
visual tokens by the model.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tokenizers import Tokenizer

from datamodules.common.collate import pad_sequences
from datamodules.common.text import load_tokenizer, missing_special_tokens
from datamodules.common.wds import ShardDataConfig, ShardDataModule
from datamodules.synthetic import world

IGNORE = -100
STAGES = ("stage1", "stage1_5", "stage2")


@dataclass
class Ma2mbaDataConfig(ShardDataConfig):
    """The shard pipeline's keys (see `ShardDataConfig`) plus how Video-Ma²mba words its prompts."""

    tokenizer: Optional[str] = None  # tokenizer.json or HF dir; default: <root>/tokenizer.json
    system_prompt: str = "You watch a long video and answer questions about it."
    caption_prompt: str = "Describe this clip."  # stage1's question for each clip
    max_questions: Optional[int] = None  # stage2: keep at most this many questions per video (train and eval)
    # stage2, synthetic worlds only: 0 trains on each train video's own QA (6 per video in the default world);
    # N > 0 trains on up to N questions per train video, drawn afresh each time from every question the world's
    # generator can ask of that video's true state (json meta.scenes). Eval splits keep their own QA.
    dense_train_qa: int = 0
    # stage2: False keeps the paper's prompt (the question only after the video, all of a video's questions in
    # one sequence). True asks each question before the frames as well as after, one question per item:
    #     S<|user|>Q<|frame|>...<|frame|>Q<|endoftext|><|assistant|>A<|endoftext|>
    # so a recurrent LM reads the video knowing what it will be asked (our deviation for the tiny LM trained
    # from scratch, see lightning_modules/ma2mba/README.md). Eval items then carry one question each, the
    # question's own video prefix in `video_ids`, and its `preamble` (S<|user|>Q) in the question dict.
    question_first: bool = False
    # stage2 with dense_train_qa, train split only: null trains on whole videos. [lo, hi] cuts each train visit to
    # a window of lo..hi consecutive scenes (drawn uniformly) and asks questions about that window alone, computed
    # from its true state: a curriculum stage in which the question's scene cannot be missed (our deviation for
    # the tiny LM, lightning_modules/ma2mba/README.md). Eval splits always see whole videos and their own QA.
    clip_scenes: Optional[list[int]] = None

    def __post_init__(self):
        super().__post_init__()
        if self.max_questions is not None and self.max_questions < 1:
            raise ValueError(f"data.max_questions must be >= 1 or null, got {self.max_questions}")
        if self.dense_train_qa < 0:
            raise ValueError(f"data.dense_train_qa must be >= 0, got {self.dense_train_qa}")
        if self.clip_scenes is not None:
            if len(self.clip_scenes) != 2 or not 1 <= self.clip_scenes[0] <= self.clip_scenes[1]:
                raise ValueError(f"data.clip_scenes must be null or [lo, hi] with 1 <= lo <= hi, got {self.clip_scenes}")
            if self.dense_train_qa < 1:
                raise ValueError("data.clip_scenes needs data.dense_train_qa >= 1: a window's questions come from "
                                 f"the world's true state, got dense_train_qa = {self.dense_train_qa}")
        if not self.system_prompt.strip() or not self.caption_prompt.strip():
            raise ValueError("data.system_prompt and data.caption_prompt must not be empty")


class Ma2mbaDataModule(ShardDataModule):
    """Batches: {"input_ids" (B, L) long right-padded with <|pad|>, "labels" (B, L) (-100 = no loss),
    "lengths" (B,), "videos": B x uint8 (T, H, W, 3) frames or float (T, D) feats, "keys": B x str,
    "video_ids": B x (Lv,) long or None, "questions": B x list of question dicts}.

    A question dict: {"prompt" (Lq,) long: Q<|endoftext|><|assistant|>, "options": K x (Lo,) long: each
    option<|endoftext|>, "answer": int, "question": str, "option_texts": K x str, "template": str or None}.
    """

    def __init__(self, cfg: Ma2mbaDataConfig, stage: str = "stage2"):
        super().__init__(cfg)
        if stage not in STAGES:
            raise ValueError(f"Ma2mbaDataModule: stage {stage!r} is not one of {STAGES}")
        self.stage = stage
        self.tokenizer: Tokenizer = load_tokenizer(cfg.tokenizer or cfg.root)
        missing = missing_special_tokens(self.tokenizer)
        if missing:
            raise ValueError(f"tokenizer {cfg.tokenizer or cfg.root}: lacks the special tokens {missing} "
                             "(add them to an HF tokenizer before training)")
        tid = self.tokenizer.token_to_id
        self.pad, self.eot, self.system, self.user, self.assistant, self.frame = (
            tid(t) for t in ("<|pad|>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|frame|>"))
        self._system = [self.system, *self.text(cfg.system_prompt), self.user]
        self._rng = random.Random(cfg.seed)  # which dense questions a train item draws
        self._dense_templates = self._world_templates() if cfg.dense_train_qa > 0 else ()

    def _world_templates(self) -> tuple[str, ...]:
        """The question types the synthetic world at data.root asks (world.json), so dense QA asks the same."""
        path = Path(self.cfg.root) / "world.json"
        if not path.is_file():
            raise ValueError(f"data.dense_train_qa draws the synthetic world's questions, but {path} does not exist")
        templates = json.loads(path.read_text()).get("config", {}).get("qa_templates", world.DEFAULT_QA_TEMPLATES)
        try:
            return world.WorldConfig(qa_templates=templates).qa_templates  # the world's own check of the names
        except ValueError as error:
            raise ValueError(f"{path}: config.{error}") from error

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def text(self, s: str) -> list[int]:
        """Plain text -> ids, no special tokens added (every piece of a prompt is tokenised on its own, so
        an option scored at evaluation has exactly the tokens its answer had in training)."""
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ------------------------------------------------------------------------------------------ mapping
    def map_sample(self, sample: dict, split: str) -> dict | list[dict]:
        doc, key = sample["json"], sample["key"]
        video = sample["feats"] if "feats" in sample else sample["frames"]
        clips = self._clips(doc, video.shape[0])
        if self.stage == "stage1":
            return [self._caption_item(f"{key}#{i}", video[a:b], caption) for i, (a, b, caption) in enumerate(clips)]
        if self.stage == "stage1_5":
            item = self._interleaved_item(key, video, clips)
        elif self.cfg.question_first:
            return self._question_first_items(sample, split)
        elif split == "train" and self.cfg.dense_train_qa > 0:
            video, qas = self._dense_qa(sample)
            item = self._qa_item(key, doc, video, qas)
        else:
            item = self._qa_item(key, doc, video)
        if split != "train":
            item["video_ids"] = torch.tensor(self._system + [self.frame] * video.shape[0])
            item["questions"] = self._questions(doc, video.shape[0])
        return item

    def _clips(self, doc: dict, num_frames: int) -> list[tuple[int, int, str]]:
        """(first frame, end frame, caption) of each segment that has frames (frame i covers [i/fps, (i+1)/fps))."""
        fps, out = self.cfg.fps, []
        for seg in doc["segments"]:
            a = min(num_frames, math.floor(seg["start"] * fps + 1e-6))
            b = min(num_frames, max(a + 1, math.ceil(seg["end"] * fps - 1e-6)))
            if b > a:
                out.append((a, b, seg["caption"]))
        return out

    def _caption_item(self, key: str, clip: torch.Tensor, caption: str) -> dict:
        prompt = self._system + [self.frame] * clip.shape[0] + self.text(self.cfg.caption_prompt) + [self.eot, self.assistant]
        return self._item(key, clip, [(prompt, False), (self.text(caption) + [self.eot], True)])

    def _interleaved_item(self, key: str, video: torch.Tensor, clips) -> dict:
        pieces, cursor = [(self._system, False)], 0
        for a, b, caption in clips:  # segments are in time order and do not overlap (schema)
            pieces.append(([self.frame] * (b - cursor), False))  # frames of a gap before the clip, then the clip
            pieces.append((self.text(caption) + [self.eot], True))
            cursor = b
        if cursor < video.shape[0]:  # frames after the last segment are still watched
            pieces.append(([self.frame] * (video.shape[0] - cursor), False))
        return self._item(key, video, pieces)

    def _qa_item(self, key: str, doc: dict, video: torch.Tensor, qas: Optional[list[dict]] = None) -> dict:
        """`qas`: the questions to train on (default: the sample's own, `_kept_qa`)."""
        pieces = [(self._system + [self.frame] * video.shape[0], False)]
        qas = [qa for _, qa in self._kept_qa(doc, video.shape[0])] if qas is None else qas
        for i, qa in enumerate(qas):
            turn = ([] if i == 0 else [self.user]) + self.text(qa["question"]) + [self.eot, self.assistant]
            pieces += [(turn, False), (self.text(qa["answer_text"]) + [self.eot], True)]
        return self._item(key, video, pieces)

    def _question_first_items(self, sample: dict, split: str) -> list[dict]:
        """One item per question: S<|user|>Q[video]Q<|endoftext|><|assistant|>A<|endoftext|> (answer labelled).
        Eval items also carry their video prefix S<|user|>Q[video] (`video_ids`) and the question to score, whose
        `preamble` S<|user|>Q lets the question be asked before another video (the wrong-video control)."""
        doc, key = sample["json"], sample["key"]
        video = sample["feats"] if "feats" in sample else sample["frames"]
        frames = [self.frame] * video.shape[0]
        if split != "train":
            items = []
            for q in self._questions(doc, video.shape[0]):
                preamble = self._system + self.text(q["question"])
                q["preamble"] = torch.tensor(preamble)
                item = self._item(key, video, [(preamble + frames + q["prompt"].tolist(), False),
                                               (self.text(q["answer_text"]) + [self.eot], True)])
                item["video_ids"], item["questions"] = torch.tensor(preamble + frames), [q]
                items.append(item)
            return items
        if self.cfg.dense_train_qa > 0:
            video, qas = self._dense_qa(sample)
            frames = [self.frame] * video.shape[0]
        else:
            qas = [qa for _, qa in self._kept_qa(doc, video.shape[0])]
        return [self._item(key, video, [(self._system + self.text(qa["question"]) + frames, False),
                                        (self.text(qa["question"]) + [self.eot, self.assistant], False),
                                        (self.text(qa["answer_text"]) + [self.eot], True)]) for qa in qas]

    def _kept_qa(self, doc: dict, num_frames: int) -> list[tuple[int, dict]]:
        """(index, qa) of the questions answerable from the frames kept (data.max_frames may cut the video)."""
        seen = num_frames / self.cfg.fps + 1e-6
        kept = [(i, qa) for i, qa in enumerate(doc["qa"])
                if all(doc["segments"][s]["end"] <= seen for s in qa["segments"] if s < len(doc["segments"]))]
        return kept if self.cfg.max_questions is None else kept[: self.cfg.max_questions]

    def _dense_qa(self, sample: dict) -> tuple[torch.Tensor, list[dict]]:
        """(frames, questions): up to `dense_train_qa` distinct questions out of every one the synthetic world can
        ask of this video's true state (`meta.scenes`), keeping those answerable from the frames kept (as
        `_kept_qa`). With `clip_scenes`, frames and questions are those of a window of consecutive scenes."""
        doc = sample["json"]
        scenes = doc.get("meta", {}).get("scenes")
        if not isinstance(scenes, list):
            raise ValueError(f"{sample.get('shard')}:{sample['key']}: data.dense_train_qa needs the synthetic "
                             "world's true state in json meta.scenes, which this sample lacks")
        frames = sample["frames" if "frames" in sample else "feats"]
        seen = frames.shape[0] / self.cfg.fps + 1e-6
        scenes = [s for s in scenes if s["end"] <= seen]  # scenes cut by data.max_frames are never asked about
        start = 0.0
        if self.cfg.clip_scenes is not None and scenes:
            lo, hi = self.cfg.clip_scenes
            size = self._rng.randint(min(lo, len(scenes)), min(hi, len(scenes)))
            first = self._rng.randrange(len(scenes) - size + 1)
            scenes = scenes[first:first + size]
            start = scenes[0]["start"]
            frames = frames[math.floor(start * self.cfg.fps + 1e-6):math.ceil(scenes[-1]["end"] * self.cfg.fps - 1e-6)]
        # max_objects only widens the count questions' option list, which training never reads.
        pools = world.qa_candidates(world.video_from_state(scenes, start), max_objects=4)
        # Drawn as the world draws its own questions: a question type uniformly, then an answer uniformly among
        # that type's answers, then a question with it, so the answer priors stay as flat as in val and test
        # (a uniform draw over candidates would favour e.g. "one" for every count question).
        drawn = []
        while len(drawn) < self.cfg.dense_train_qa:
            available = sorted(t for t in self._dense_templates if pools[t])
            if not available:
                break
            template = self._rng.choice(available)
            answer = self._rng.choice(sorted({c["answer"] for c in pools[template]}))
            chosen = self._rng.choice([c for c in pools[template] if c["answer"] == answer])
            pools[template] = [c for c in pools[template] if c["question"] != chosen["question"]]
            drawn.append({"question": chosen["question"], "answer_text": chosen["answer"]})
        return frames, drawn

    def _questions(self, doc: dict, num_frames: int) -> list[dict]:
        templates = doc.get("meta", {}).get("qa_templates")
        out = []
        for i, qa in self._kept_qa(doc, num_frames):
            if qa["answer"] < 0:  # open-ended: no options to score
                continue
            out.append({
                "prompt": torch.tensor(self.text(qa["question"]) + [self.eot, self.assistant]),
                "options": [torch.tensor(self.text(o) + [self.eot]) for o in qa["options"]],
                "answer": int(qa["answer"]), "question": qa["question"], "option_texts": list(qa["options"]),
                "answer_text": qa["answer_text"],
                "template": templates[i] if isinstance(templates, list) and i < len(templates) else None,
            })
        return out

    def _item(self, key: str, video: torch.Tensor, pieces: list[tuple[list[int], bool]]) -> dict:
        ids, labels = [], []
        for tokens, learn in pieces:
            ids += tokens
            labels += tokens if learn else [IGNORE] * len(tokens)
        return {"key": key, "video": video, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "video_ids": None, "questions": []}

    # ------------------------------------------------------------------------------------------ batching
    def collate(self, items: list[dict]) -> dict:
        input_ids, mask = pad_sequences([it["input_ids"] for it in items], pad_value=self.pad)
        labels, _ = pad_sequences([it["labels"] for it in items], pad_value=IGNORE)
        return {"input_ids": input_ids, "labels": labels, "lengths": mask.sum(1),
                "videos": [it["video"] for it in items], "keys": [it["key"] for it in items],
                "video_ids": [it["video_ids"] for it in items], "questions": [it["questions"] for it in items]}

    # ------------------------------------------------------------------------------------------ reporting
    def baselines(self, split: str = "test") -> dict[str, float]:
        """Reference accuracies the data knows: chance, and the text-only prior of the synthetic world."""
        path = Path(self.cfg.root) / "world.json"
        if not path.is_file():
            return {}
        chance = json.loads(path.read_text()).get("splits", {}).get(split, {}).get("chance", {})
        return {k: float(v) for k, v in chance.items() if k.endswith("qa_accuracy")}
