"""Typed configs of Video-Ma²mba: the model, its optimiser and which training stage runs.

The stage decides what trains (papers/FACTS.md, "Video-Ma²mba"):
- "stage1"   alignment: the projector only (vision tower and LM frozen), captions of single clips;
- "stage1_5" long-video knowledge: every parameter, interleaved clip/caption prediction over a whole video,
             the vision tower at its own (lower) learning rate when `vision.frozen` is false;
- "stage2"   supervised fine-tuning on multiple-choice QA, all questions of a video in one sequence.
Every stage builds the same modules with the same parameter names, so a stage starts from the last one's
weights with a strict `load_state_dict`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from lightning_modules.common.mamba2 import Mamba2Config
from lightning_modules.common.vision import VisionConfig

STAGES = ("stage1", "stage1_5", "stage2")
OPTION_SCORES = ("sum", "mean")


@dataclass
class OptimConfig:
    """AdamW + linear warmup + cosine decay, the paper's recipe; learning rates are per parameter group."""

    lr: float = 1e-3  # LM and projector (stage 1: the projector alone)
    vision_lr: float = 1e-4  # the vision tower, when it trains (paper, stage 1.5: 4e-6 against the LM's 4e-5)
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.05  # matrices only; norms, biases, A_log, D and dt_bias are not decayed
    warmup_ratio: float = 0.1  # fraction of the run's optimizer steps spent warming up linearly from 0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio

    def __post_init__(self):
        for name in ("lr", "vision_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.optim.{name}: {getattr(self, name)} must be > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"model.optim.{name}: {getattr(self, name)} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"model.optim.weight_decay: {self.weight_decay} must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"model.optim.warmup_ratio: {self.warmup_ratio} must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"model.optim.min_lr_ratio: {self.min_lr_ratio} must be in [0, 1]")


def _tiny_lm() -> Mamba2Config:
    # Small enough to train all three stages on two CPU cores in minutes (see README, "Tiny default").
    return Mamba2Config(d_model=128, n_layer=4, vocab_size=1024, d_state=32, headdim=32, chunk_size=64)


def _tiny_vision() -> VisionConfig:
    return VisionConfig(mode="tiny", image_size=32, patch_size=8, hidden_size=64, layers=2, heads=4,
                        pool=2, frozen=True, chunk_frames=64)


@dataclass
class Ma2mbaConfig:
    """Video-Ma²mba: vision encoder -> pooled tokens -> MLP projector -> Mamba-2 LM.

    `lm` describes a randomly initialised LM; with `lm_path` (a local transformers or mamba_ssm Mamba-2
    directory) the checkpoint's own config replaces it, keeping `lm.gradient_checkpointing`, `lm.ma_gc_l`,
    `lm.ma_gc_s` and `lm.ssd_backend` from here.
    """

    stage: str = "stage2"  # stage1 | stage1_5 | stage2
    lm: Mamba2Config = field(default_factory=_tiny_lm)
    lm_path: Optional[str] = None
    vision: VisionConfig = field(default_factory=_tiny_vision)
    projector_depth: int = 2  # 2-layer GELU MLP, as the paper (LLaVA's mlp2x_gelu)
    # vision mode "feats" only: read each frame's feature vector as a row-major (g, g, feats_channels) grid
    # (the synthetic world's pooled RGB) and cut it into feats_grid x feats_grid spatial tokens, as the paper
    # pools CLIP's patch grid into 144 tokens; 1 keeps one token per frame (any feature layout).
    feats_grid: int = 1
    feats_channels: int = 3
    option_score: str = "sum"  # an option's score: the sum (or mean) of its tokens' log-likelihoods
    eval_qa: bool = True  # score multiple-choice QA in validation and test (whole-video items only)
    report_examples: int = 4  # test questions shown in the report
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"model.stage: {self.stage!r} is not one of {STAGES}")
        if self.stage == "stage1" and not self.vision.frozen and self.vision.mode != "feats":
            raise ValueError("model.vision.frozen: false, but stage1 trains the projector only; set it true "
                             "(the tower trains from stage1_5 on)")
        if self.projector_depth < 1:
            raise ValueError(f"model.projector_depth: {self.projector_depth} must be >= 1")
        if self.feats_grid < 1 or self.feats_channels < 1:
            raise ValueError(f"model.feats_grid ({self.feats_grid}) and model.feats_channels "
                             f"({self.feats_channels}) must be >= 1")
        if self.feats_grid > 1:
            if self.vision.mode != "feats":
                raise ValueError(f"model.feats_grid: {self.feats_grid} cuts precomputed features into tokens; "
                                 f"it needs vision.mode 'feats', not {self.vision.mode!r}")
            side = math.isqrt(self.vision.feats_dim // self.feats_channels)
            if side * side * self.feats_channels != self.vision.feats_dim or side % self.feats_grid:
                raise ValueError(f"model.feats_grid: {self.feats_grid} does not divide vision.feats_dim "
                                 f"{self.vision.feats_dim} read as a square grid of {self.feats_channels} channels")
        if self.option_score not in OPTION_SCORES:
            raise ValueError(f"model.option_score: {self.option_score!r} is not one of {OPTION_SCORES}")
        if self.report_examples < 0:
            raise ValueError(f"model.report_examples: {self.report_examples} must be >= 0")

    @property
    def trains_lm(self) -> bool:
        return self.stage != "stage1"

    @property
    def trains_vision(self) -> bool:
        return self.stage != "stage1" and not self.vision.frozen and self.vision.mode != "feats"
