"""Frame encoder shared by the three papers: a CLIP or SigLIP vision tower -> pooled patch tokens per frame.

Video-Ma²mba (FACTS.md) takes CLIP ViT-L/14-336's penultimate layer and 2x2 bilinear pooling (24x24 -> 12x12 = 144
tokens per frame); SALOVA uses SigLIP or CLIP with the same 2x2 pooling and also needs each frame's global token.
Three modes, chosen by `VisionConfig.mode`:

- "tiny": a randomly initialised tower built from the config's small dims (seeded), the CPU default;
- "pretrained": `from_pretrained` on a local HF directory (never a download: `local_files_only=True`);
- "feats": no tower at all; the data already holds one precomputed feature vector per frame, which becomes a
  single token per frame: (T, D) -> (T, 1, D).

Long videos are encoded `chunk_frames` frames at a time, so a whole video's ViT activations are never held at once:
under `no_grad` when the tower is frozen, under activation checkpointing when it trains.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
from transformers.utils.constants import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

MODES = ("tiny", "pretrained", "feats")
FAMILIES = ("clip", "siglip")
POOL_MODES = ("bilinear", "avg")

# Per family: HF classes, the pixel statistics the tower was trained with, and whether a CLS token leads the sequence.
_FAMILY = {
    "clip": dict(config=CLIPVisionConfig, model=CLIPVisionModel, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, cls=True,
                 model_types=("clip", "clip_vision_model")),
    "siglip": dict(config=SiglipVisionConfig, model=SiglipVisionModel, mean=IMAGENET_STANDARD_MEAN,
                   std=IMAGENET_STANDARD_STD, cls=False, model_types=("siglip", "siglip_vision_model")),
}


@dataclass
class VisionConfig:
    """How frames become tokens. Tiny dims apply to mode "tiny" only; a pretrained tower brings its own."""

    mode: str = "tiny"  # tiny | pretrained | feats
    family: str = "clip"  # clip | siglip (tiny and pretrained)
    path: Optional[str] = None  # local HF dir (pretrained); a CLIPModel/SiglipModel dir works too
    image_size: int = 64  # tiny: frames are resized to this square size
    patch_size: int = 8
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    select_layer: int = -2  # index into the tower's hidden_states (embeddings + one per layer); -2 = penultimate
    pool: int = 2  # pool x pool patches -> one token; 1 = no pooling
    pool_mode: str = "bilinear"  # bilinear (Ma²mba, LLaVA-Video) | avg; identical on even grids
    frozen: bool = True
    chunk_frames: int = 64  # frames per tower call
    feats_dim: Optional[int] = None  # feats: the width D of the precomputed per-frame features
    seed: int = 0  # tiny: the weights are a function of this seed alone

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"vision.mode: {self.mode!r} is not one of {MODES}")
        if self.family not in FAMILIES:
            raise ValueError(f"vision.family: {self.family!r} is not one of {FAMILIES}")
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"vision.pool_mode: {self.pool_mode!r} is not one of {POOL_MODES}")
        for key in ("pool", "chunk_frames"):
            if getattr(self, key) < 1:
                raise ValueError(f"vision.{key}: {getattr(self, key)} must be >= 1")
        if self.mode == "pretrained" and not self.path:
            raise ValueError("vision.path: mode 'pretrained' needs a local directory holding the HF checkpoint")
        if self.mode == "feats" and (self.feats_dim is None or self.feats_dim < 1):
            raise ValueError(f"vision.feats_dim: {self.feats_dim} must be a positive width in mode 'feats'")
        if self.mode == "tiny":
            for key in ("image_size", "patch_size", "hidden_size", "layers", "heads"):
                if getattr(self, key) < 1:
                    raise ValueError(f"vision.{key}: {getattr(self, key)} must be >= 1")
            if self.image_size % self.patch_size:
                raise ValueError(f"vision.image_size: {self.image_size} is not a multiple of "
                                 f"vision.patch_size {self.patch_size}")
            if self.hidden_size % self.heads:
                raise ValueError(f"vision.hidden_size: {self.hidden_size} is not divisible by "
                                 f"vision.heads {self.heads}")
            _check_select_layer(self.select_layer, self.layers)


def _check_select_layer(select_layer: int, layers: int) -> None:
    # hidden_states holds the embeddings then one entry per layer: layers + 1 entries.
    if not -(layers + 1) <= select_layer <= layers:
        raise ValueError(f"vision.select_layer: {select_layer} is out of range for a tower of {layers} layers "
                         f"(valid: {-(layers + 1)}..{layers})")


class VisionEncoder(nn.Module):
    """frames (T, 3, H, W) or (B, T, 3, H, W), float in [0, 1] -> tokens (T, n, d) or (B, T, n, d).

    n = `tokens_per_frame` = ceil(g / pool)^2 for a g x g patch grid, d = `out_dim` (the tower's width).
    Tokens come from hidden_states[select_layer], CLS dropped, pooled over the patch grid.
    `encode(frames, return_global=True)` also returns one global token per frame, (T, d) or (B, T, d): the tower's
    pooled output (CLIP: the final layer's CLS after post-layernorm; SigLIP: its attention-pooling head).
    In mode "feats", `frames` are precomputed features (T, D) or (B, T, D): tokens (T, 1, D), global (T, D).
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.tower: Optional[nn.Module] = None
        if config.mode == "feats":
            return
        family = _FAMILY[config.family]
        mean, std = family["mean"], family["std"]
        if config.mode == "tiny":
            hf_config = family["config"](
                image_size=config.image_size, patch_size=config.patch_size, hidden_size=config.hidden_size,
                intermediate_size=4 * config.hidden_size, num_hidden_layers=config.layers,
                num_attention_heads=config.heads,
            )
            with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's RNG
                torch.manual_seed(config.seed)
                self.tower = family["model"](hf_config)
        else:
            path = checked_pretrained_dir(config.path, family["model_types"], config.family)
            self.tower = family["model"].from_pretrained(str(path), local_files_only=True)
            mean, std = _pixel_stats(path, mean, std)
            _check_select_layer(config.select_layer, self.tower.config.num_hidden_layers)
        self._has_cls = family["cls"]
        self.register_buffer("pixel_mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(3, 1, 1), persistent=False)
        if config.frozen:
            self.tower.requires_grad_(False)
            self.tower.eval()

    # ------------------------------------------------------------------ properties
    @property
    def out_dim(self) -> int:
        """d: width of each token."""
        if self.tower is None:
            return self.config.feats_dim
        return self.tower.config.hidden_size

    @property
    def grid(self) -> int:
        """g: patches per side of a frame (before pooling)."""
        if self.tower is None:
            return 1
        return self.tower.config.image_size // self.tower.config.patch_size

    @property
    def tokens_per_frame(self) -> int:
        """n: tokens per frame after pooling."""
        if self.tower is None:
            return 1
        side = math.ceil(self.grid / self.config.pool)
        return side * side

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tower is not None and self.config.frozen:
            self.tower.eval()  # a frozen tower keeps eval behaviour (no dropout) whatever the trainer asks
        return self

    # ------------------------------------------------------------------ encoding
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode(frames)

    def encode(self, frames: torch.Tensor, return_global: bool = False):
        """See the class docstring for shapes. Tokens land on the tower's device in its dtype."""
        if self.tower is None:
            return self._encode_feats(frames, return_global)
        if frames.dim() == 5:  # (B, T, 3, H, W): fold the batch into time, unfold after
            b, t = frames.shape[:2]
            tokens, global_tokens = self._encode_frames(frames.flatten(0, 1))
            tokens, global_tokens = tokens.unflatten(0, (b, t)), global_tokens.unflatten(0, (b, t))
        else:
            tokens, global_tokens = self._encode_frames(frames)
        return (tokens, global_tokens) if return_global else tokens

    def _encode_feats(self, feats: torch.Tensor, return_global: bool):
        if feats.dim() not in (2, 3) or feats.shape[-1] != self.config.feats_dim:
            raise ValueError(f"vision (mode 'feats'): expected features (T, {self.config.feats_dim}) or "
                             f"(B, T, {self.config.feats_dim}), got shape {tuple(feats.shape)}")
        if not feats.is_floating_point():
            raise ValueError(f"vision (mode 'feats'): features must be floating point, got {feats.dtype}")
        tokens = feats.unsqueeze(-2)
        return (tokens, feats) if return_global else tokens

    def _encode_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"vision: expected frames (T, 3, H, W) or (B, T, 3, H, W), "
                             f"got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"vision: frames must be float in [0, 1], got {frames.dtype} (divide uint8 by 255)")
        if frames.shape[0] == 0:
            raise ValueError("vision: got zero frames")
        if frames.min() < 0 or frames.max() > 1:
            raise ValueError(f"vision: frames must lie in [0, 1], got values in "
                             f"[{frames.min().item():.3g}, {frames.max().item():.3g}]")
        trainable = not self.config.frozen and torch.is_grad_enabled()
        tokens, global_tokens = [], []
        for chunk in frames.split(self.config.chunk_frames):
            # Frames may stay on the host: only one chunk at a time visits the tower's device.
            chunk = chunk.to(self.pixel_mean.device, non_blocking=True)
            if not trainable:
                with torch.no_grad():
                    out = self._encode_chunk(chunk)
            elif frames.shape[0] > self.config.chunk_frames:
                # Keep only each chunk's input and output; recompute its activations in backward.
                out = checkpoint(self._encode_chunk, chunk, use_reentrant=False)
            else:
                out = self._encode_chunk(chunk)
            tokens.append(out[0])
            global_tokens.append(out[1])
        return torch.cat(tokens), torch.cat(global_tokens)

    def _encode_chunk(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (t, 3, H, W) in [0, 1] -> tokens (t, n, d), global (t, d)."""
        size = self.tower.config.image_size
        if frames.shape[-2:] != (size, size):
            # The tower's position embeddings fix its input size; non-square frames are squashed, not cropped.
            frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        pixels = ((frames - self.pixel_mean) / self.pixel_std).to(self.tower.dtype)
        out = self.tower(pixel_values=pixels, output_hidden_states=True)
        patches = out.hidden_states[self.config.select_layer]
        if self._has_cls:
            patches = patches[:, 1:]
        if out.pooler_output is None:
            raise ValueError(f"vision: the {self.config.family} tower has no pooling head (vision_use_head=False), "
                             "so it gives no global token per frame")
        return self._pool(patches), out.pooler_output

    def _pool(self, patches: torch.Tensor) -> torch.Tensor:
        """(t, g*g, d) -> (t, ceil(g/pool)^2, d)."""
        pool, g = self.config.pool, self.grid
        if pool == 1:
            return patches
        grid = patches.transpose(1, 2).unflatten(2, (g, g))  # (t, d, g, g)
        side = math.ceil(g / pool)
        if self.config.pool_mode == "bilinear":
            # Halving with align_corners=False samples each 2x2 block's centre: the block mean on even grids.
            grid = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
        else:
            grid = F.avg_pool2d(grid, pool, ceil_mode=True)
        return grid.flatten(2).transpose(1, 2)


def checked_pretrained_dir(path, model_types: tuple[str, ...], family: str, section: str = "vision") -> Path:
    """A local HF checkpoint dir of the configured family, or a clear error naming `<section>.path`
    (we never download). The text tower checks its dirs with it too."""
    directory = Path(path).expanduser()
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{section}.path: {str(directory)!r} holds no config.json; mode 'pretrained' loads a "
                                "local HF checkpoint directory and never downloads")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in model_types:
        raise ValueError(f"{section}.path: {str(config_file)!r} has model_type {model_type!r}, which does not match "
                         f"{section}.family {family!r} (expected one of {model_types})")
    return directory


def _pixel_stats(directory: Path, mean, std):
    """The checkpoint's own image_mean/image_std when its preprocessor_config.json gives them."""
    preprocessor = directory / "preprocessor_config.json"
    if not preprocessor.is_file():
        return mean, std
    stats = json.loads(preprocessor.read_text())
    return stats.get("image_mean", mean), stats.get("image_std", std)
