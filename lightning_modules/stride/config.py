"""Typed configs of STRIDE: the activation module, its online runner, the two baselines, the optimizer.

YAML files hold overrides only (experiments/configs/stride/*.yaml); every default here is the tiny,
CPU-in-minutes setting. `StreamingConfig` mirrors the released inference settings of the paper where
they fit a tiny model (FACTS.md: W=128, stride 32, K=8, threshold 0.75; our tiny run uses W=32, K=4).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

FEATURE_MODES = ("pixels", "feats")
FRAME_ENCODERS = ("none", "conv")


@dataclass
class StreamingConfig:
    """Online inference: how the window moves, how it is denoised, when a span becomes a trigger."""

    window: int = 32  # W: slots (1 s each) the denoiser sees, ending at the newest frame
    stride: int = 1  # frames between two denoiser runs (1 = every frame; see README on the released 32)
    steps: int = 4  # K: unmasking steps per run; each unmasks about n/K of the n masked slots
    threshold: float = 0.75  # a slot is unmasked before the last step only with confidence >= this
    active_threshold: float = 0.5  # a slot is decided active iff p(active) >= this (as model.head_threshold)
    stable_runs: int = 3  # a label kept unmasked once it came out the same in this many consecutive runs
    close_gap_s: float = 1.0  # a span triggers once its end lies >= this many seconds before the stream clock
    close_run: int = 1  # a span closes only at a stretch of this many inactive slots; a shorter inactive gap
    # between two active runs is bridged (one span). Shared by STRIDE and the threshold head (a span rule)
    min_span: int = 1  # closed spans shorter than this many slots are not triggered (shared span rule)
    close_confident: bool = False  # STRIDE: a span closes only at an inactive slot committed with confidence
    # >= threshold; an unsure "inactive" at the newest edge waits for the next frame (and is re-predicted)
    confirm_stable: bool = False  # STRIDE: a closed span triggers only once all its window slots and the
    # stretch that closes it are stable (kept labels), so a blip that later frames revise never triggers
    max_triggers: int = 50  # multi-event cap (released setting)
    multi_event: bool = True  # False: stop after the first trigger (single-event tasks, e.g. TVG)

    def __post_init__(self):
        if self.window < 2:
            raise ValueError(f"streaming.window must be >= 2 slots, got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"streaming.stride must lie in [1, window={self.window}], got {self.stride}")
        if self.steps < 1:
            raise ValueError(f"streaming.steps (K) must be >= 1, got {self.steps}")
        if not 0.5 <= self.threshold <= 1.0:
            raise ValueError(f"streaming.threshold must lie in [0.5, 1] (binary confidences), got {self.threshold}")
        if not 0.0 < self.active_threshold < 1.0:
            raise ValueError(f"streaming.active_threshold must lie in (0, 1), got {self.active_threshold}")
        if self.stable_runs < 1:
            raise ValueError(f"streaming.stable_runs must be >= 1, got {self.stable_runs}")
        if self.close_gap_s < 1.0:
            raise ValueError(f"streaming.close_gap_s must be >= 1 s (a span is closed only once an inactive "
                             f"frame follows it), got {self.close_gap_s}")
        if self.close_run < 1 or self.close_run > self.window:
            raise ValueError(f"streaming.close_run must lie in [1, window={self.window}] slots, got {self.close_run}")
        if not 1 <= self.min_span <= self.window:
            raise ValueError(f"streaming.min_span must lie in [1, window={self.window}] slots, got {self.min_span}")
        if self.max_triggers < 1:
            raise ValueError(f"streaming.max_triggers must be >= 1, got {self.max_triggers}")


@dataclass
class StrideConfig:
    """The `model:` section of a STRIDE run: activation transformer, baselines, streaming, optimizer."""

    # frame features (frozen: the activation module sits at the interface of a frozen downstream)
    features: str = "pixels"  # pixels: mean colour per cell of a grid; feats: the sample's precomputed feats
    pixel_grid: int = 8  # pixels mode: grid x grid cells x 3 colours (+ a 4x4x4-bin colour histogram)
    feat_dim: int = 0  # feats mode: width of the precomputed features (0 = pixels mode)
    # learned frame encoder shared by all three methods (trained by the sum of their losses, so every
    # method reads the very same per-frame vector): none = the frozen features go straight to each
    # method's projector; conv = a small CNN over feats read as a feat_grid x feat_grid RGB image
    frame_encoder: str = "none"
    feat_grid: int = 16  # conv: feats are (feat_grid, feat_grid, 3) images flattened row-major (synthetic --feats)
    encoder_channels: int = 32  # conv: channels of the first layer (doubled after the pooling)
    encoder_dim: int = 64  # conv: width of the encoded frame vector
    # activation transformer (shared sizes with the baselines so the comparison is like for like)
    window: int = 32  # W, must equal data.window and streaming.window
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.0
    vocab_size: int = 4096  # >= the data tokenizer's vocabulary (checked when the run is built)
    # baselines trained on the same features and batches
    head_threshold: float = 0.5  # threshold head: frame active iff sigmoid score >= this (MMDuet/Dispider)
    live_threshold: float = 0.725  # LIVE: respond iff p(silent frame token) < this (VideoLLM-online)
    head_close_run: Optional[int] = None  # the threshold head's span rules (None: streaming.close_run / min_span),
    head_min_span: Optional[int] = None  # so that each method gets its own values tuned on val
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    # optimizer
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    # report
    timeline_videos: int = 4  # videos drawn as timelines in the report

    def __post_init__(self):
        if isinstance(self.streaming, dict):
            self.streaming = StreamingConfig(**self.streaming)
        if self.features not in FEATURE_MODES:
            raise ValueError(f"model.features must be one of {FEATURE_MODES}, got {self.features!r}")
        if self.features == "feats" and self.feat_dim <= 0:
            raise ValueError("model.feat_dim must be > 0 with model.features='feats' (the width of <key>.feats.npy)")
        if self.features == "pixels" and self.pixel_grid < 1:
            raise ValueError(f"model.pixel_grid must be >= 1, got {self.pixel_grid}")
        if self.frame_encoder not in FRAME_ENCODERS:
            raise ValueError(f"model.frame_encoder must be one of {FRAME_ENCODERS}, got {self.frame_encoder!r}")
        if self.frame_encoder == "conv":
            if self.features != "feats" or self.feat_dim != 3 * self.feat_grid**2:
                raise ValueError(f"model.frame_encoder='conv' reads feats as feat_grid x feat_grid RGB images: needs "
                                 f"model.features='feats' and model.feat_dim == 3 * feat_grid**2 = "
                                 f"{3 * self.feat_grid**2}, got features={self.features!r}, feat_dim={self.feat_dim}")
            if self.feat_grid < 4 or self.encoder_channels < 1 or self.encoder_dim < 1:
                raise ValueError(f"model.feat_grid must be >= 4 and model.encoder_channels, model.encoder_dim >= 1, "
                                 f"got {self.feat_grid}, {self.encoder_channels}, {self.encoder_dim}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        for name in ("d_model", "n_layers", "n_heads", "ffn_mult", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.streaming.window != self.window:
            raise ValueError(f"model.streaming.window={self.streaming.window} must equal model.window={self.window} "
                             "(the position table has one row per window slot)")
        if not 0.0 < self.head_threshold < 1.0 or not 0.0 < self.live_threshold < 1.0:
            raise ValueError(f"model.head_threshold and model.live_threshold must lie in (0, 1), got "
                             f"{self.head_threshold}, {self.live_threshold}")
        for name in ("head_close_run", "head_min_span"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= self.window:
                raise ValueError(f"model.{name} must be null or lie in [1, window={self.window}], got {value}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError(f"model.lr must be > 0 and model.warmup_steps >= 0, got {self.lr}, {self.warmup_steps}")

    @property
    def head_streaming(self) -> StreamingConfig:
        """The streaming settings of the threshold head's runner: STRIDE's, with the head's own span rules."""
        return replace(self.streaming,
                       close_run=self.streaming.close_run if self.head_close_run is None else self.head_close_run,
                       min_span=self.streaming.min_span if self.head_min_span is None else self.head_min_span)

    @property
    def frame_dim(self) -> int:
        """Width of one frame's frozen feature vector (pixel features or <key>.feats.npy)."""
        return 3 * self.pixel_grid**2 + 4**3 if self.features == "pixels" else self.feat_dim

    @property
    def slot_dim(self) -> int:
        """Width of one frame's vector as the three methods' slot projectors receive it (after the encoder)."""
        return self.encoder_dim if self.frame_encoder == "conv" else self.frame_dim
