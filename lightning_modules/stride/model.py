"""STRIDE's activation module and the two baselines, as plain single-device PyTorch.

All three read the same per-slot inputs (`SlotInputs`): one frozen feature vector per 1-second slot,
conditioned on the query, plus a learned "unseen" vector at slots before the clip start. They differ
only in what they predict and how they look at the window:

- `ActivationDenoiser` (STRIDE): adds a slot token (inactive / active / mask), attends bidirectionally
  over the window, and is trained with cross-entropy at the masked slots; `denoise` unmasks it in K steps.
- `ThresholdHead` (MMDuet / Dispider style): causal, one sigmoid relevance score per frame.
- `LiveToken` (VideoLLM-online style): causal, one frame token per frame: silent, or "respond now"
  (announcing that the event started, or that it is over).

Shapes: N windows, W slots, F frame-feature width, L query tokens, d model width.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.common.projector import MLPProjector
from lightning_modules.stride.config import StrideConfig

INACTIVE, ACTIVE, MASK = 0, 1, 2  # STRIDE slot tokens
SILENT, RESPOND_START, RESPOND_END = 0, 1, 2  # LIVE frame tokens
IGNORE = -100  # target value of slots that carry no loss


class PixelFeatures(nn.Module):
    """Frozen, parameter-free frame features: coarse layout plus a colour histogram.

    uint8 frames (..., H, W, 3) -> float (..., 3 * grid**2 + bins**3):
    - the mean colour of each cell of a grid x grid partition, in [-1, 1] (where things are);
    - the share of pixels (after 4x4 average pooling) falling in each of bins**3 RGB bins, square-rooted
      (which colours are on screen, wherever they are; a small shape still leaves a clear trace).
    Cheap enough for every frame on a CPU, and position-invariant where the query needs it to be.
    """

    def __init__(self, grid: int, bins: int = 4):
        super().__init__()
        self.grid, self.bins = grid, bins

    @property
    def dim(self) -> int:
        return 3 * self.grid**2 + self.bins**3

    def forward(self, frames: Tensor) -> Tensor:
        if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
            raise ValueError(f"PixelFeatures: expected uint8 (..., H, W, 3) frames, got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        lead, (h, w) = frames.shape[:-3], frames.shape[-3:-1]
        if h < max(self.grid, 4) or w < max(self.grid, 4):
            raise ValueError(f"PixelFeatures: frames {h}x{w} are smaller than the {self.grid}x{self.grid} grid")
        x = frames.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float() / 255.0
        layout = F.adaptive_avg_pool2d(x, self.grid).flatten(1) * 2.0 - 1.0
        pooled = F.avg_pool2d(x, 4)  # (n, 3, h/4, w/4)
        level = (pooled * self.bins).long().clamp(max=self.bins - 1)
        code = (level[:, 0] * self.bins + level[:, 1]) * self.bins + level[:, 2]  # (n, h/4, w/4)
        hist = F.one_hot(code.flatten(1), self.bins**3).float().mean(1).sqrt()
        return torch.cat([layout, hist], dim=1).reshape(*lead, self.dim)


class ConvFrameEncoder(nn.Module):
    """Learned per-frame encoder over feats read as small RGB images, shared by the three methods.

    feats (..., g*g*3) in [0, 1], row-major (g, g, 3) -> (..., encoder_dim). Two 3x3 convolutions at full
    resolution (a shape's outline spans a few cells), 2x2 max pooling, one more 3x3 convolution, then the
    spatial max and mean of every channel: "is a <colour> <shape> anywhere" is a max over positions, and
    the late pooling keeps colour and shape bound to one place. Each frame is encoded on its own (no
    time), so encoding a whole stream up front equals encoding frame by frame as they arrive.
    """

    def __init__(self, cfg: StrideConfig):
        super().__init__()
        c, g = cfg.encoder_channels, cfg.feat_grid
        self.grid = g
        self.convs = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.GELU())
        self.out = nn.Sequential(nn.Linear(4 * c, cfg.encoder_dim), nn.LayerNorm(cfg.encoder_dim))

    def forward(self, feats: Tensor) -> Tensor:
        lead, g = feats.shape[:-1], self.grid
        if feats.shape[-1] != 3 * g * g:
            raise ValueError(f"ConvFrameEncoder: feats of width {feats.shape[-1]} are not {g}x{g}x3 images")
        x = feats.reshape(-1, g, g, 3).permute(0, 3, 1, 2).float() * 2.0 - 1.0
        maps = self.convs(x).flatten(2)  # (n, 2c, (g/2)^2)
        pooled = torch.cat([maps.amax(-1), maps.mean(-1)], dim=1)
        return self.out(pooled).reshape(*lead, -1)


class QueryEncoder(nn.Module):
    """Query token ids (N, L), 0 = padding -> (N, d): masked mean of token embeddings, then an MLP."""

    def __init__(self, vocab_size: int, d: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d, padding_idx=0)
        self.mlp = MLPProjector(d, d, depth=2)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.numel() and int(ids.max()) >= self.embed.num_embeddings:
            raise ValueError(f"QueryEncoder: token id {int(ids.max())} >= vocab_size {self.embed.num_embeddings}")
        keep = (ids != 0).unsqueeze(-1).float()
        pooled = (self.embed(ids) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.mlp(pooled)


class SlotInputs(nn.Module):
    """Frame features (N, W, F), seen (N, W) bool, query ids (N, L) -> slot vectors (N, W, d).

    The query modulates each frame vector (FiLM), because "is *this* shape on screen" is a product of
    what the query asks and what the frame shows, not a sum.
    """

    def __init__(self, cfg: StrideConfig):
        super().__init__()
        d = cfg.d_model
        self.frame = MLPProjector(cfg.slot_dim, d, depth=2)
        self.frame_norm = nn.LayerNorm(d)
        self.query = QueryEncoder(cfg.vocab_size, d)
        self.film = nn.Linear(d, 2 * d)
        self.unseen = nn.Parameter(torch.zeros(d))
        self.position = nn.Parameter(torch.randn(cfg.window, d) * 0.02)  # row W-1 = newest slot
        self.window = cfg.window

    def forward(self, feats: Tensor, seen: Tensor, query_ids: Tensor) -> Tensor:
        n, w, _ = feats.shape
        if w != self.window or seen.shape != (n, w) or query_ids.shape[0] != n:
            raise ValueError(f"SlotInputs: expected feats (N, {self.window}, F), seen (N, {self.window}), "
                             f"query_ids (N, L); got {tuple(feats.shape)}, {tuple(seen.shape)}, "
                             f"{tuple(query_ids.shape)}")
        frames = self.frame_norm(self.frame(feats))
        scale, shift = self.film(self.query(query_ids)).unsqueeze(1).chunk(2, dim=-1)
        slots = frames * (1.0 + scale) + shift
        slots = torch.where(seen.unsqueeze(-1), slots, self.unseen)
        return slots + self.position


class Encoder(nn.Module):
    """Pre-norm transformer encoder over the window: (N, W, d) -> (N, W, d); causal or bidirectional."""

    def __init__(self, cfg: StrideConfig, causal: bool):
        super().__init__()
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.ffn_mult * cfg.d_model, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.causal = causal

    def forward(self, x: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device) if self.causal else None
        return self.norm(self.layers(x, mask=mask, is_causal=self.causal))


class ActivationDenoiser(nn.Module):
    """STRIDE: masked-diffusion activation over a window of slots.

    forward: feats (N, W, F), seen (N, W) bool, query_ids (N, L), tokens (N, W) in {0 inactive, 1 active,
    2 mask} -> logits (N, W, 2) over {inactive, active}. Unseen slots must carry token 0.
    """

    def __init__(self, cfg: StrideConfig):
        super().__init__()
        self.inputs = SlotInputs(cfg)
        self.token = nn.Embedding(3, cfg.d_model)
        self.encoder = Encoder(cfg, causal=False)
        self.head = nn.Linear(cfg.d_model, 2)

    def forward(self, feats: Tensor, seen: Tensor, query_ids: Tensor, tokens: Tensor) -> Tensor:
        if tokens.shape != seen.shape:
            raise ValueError(f"ActivationDenoiser: tokens {tuple(tokens.shape)} must match seen {tuple(seen.shape)}")
        if bool(((tokens != INACTIVE) & ~seen).any()):
            raise ValueError("ActivationDenoiser: unseen slots must carry the inactive token (they are fixed to 0)")
        x = self.inputs(feats, seen, query_ids) + self.token(tokens)
        return self.head(self.encoder(x))

    @staticmethod
    def loss(logits: Tensor, labels: Tensor, loss_mask: Tensor) -> Tensor:
        """Cross-entropy at the masked slots only (mean over them)."""
        if not bool(loss_mask.any()):
            raise ValueError("ActivationDenoiser.loss: no masked slot in the batch (every mask mode masks >= 1)")
        return F.cross_entropy(logits[loss_mask], labels[loss_mask])

    @torch.no_grad()
    def denoise(self, feats: Tensor, seen: Tensor, query_ids: Tensor, tokens: Tensor, steps: int,
                threshold: float, active_threshold: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
        """Unmask every masked slot in `steps` (K) forward passes.

        At each step but the last, among the ceil(n/K) most confident masked slots (n = masked at the
        start), those with confidence >= `threshold` are committed to their argmax; the last step commits
        the rest. `active_threshold` is the decision threshold on p(active), as the threshold head's: the
        active logit is shifted by -logit(active_threshold) before the argmax and the confidences (0.5 =
        plain argmax). Returns labels (N, W) long in {0, 1}, p_active (N, W) (the model's probability of
        "active" when the slot was committed; the given label for slots that were not masked) and
        confident (N, W) bool (committed at or above the threshold, or given).
        """
        if not 0.0 < active_threshold < 1.0:
            raise ValueError(f"denoise: active_threshold must lie in (0, 1), got {active_threshold}")
        shift = torch.tensor([0.0, -math.log(active_threshold / (1.0 - active_threshold))])
        tokens = tokens.clone()
        masked = tokens == MASK
        p_active = tokens.float().clamp(max=1.0)
        confident = ~masked
        per_step = torch.ceil(masked.sum(1, keepdim=True).float() / steps)  # (N, 1)
        for step in range(steps):
            if not bool(masked.any()):
                break
            logits = self.forward(feats, seen, query_ids, tokens)
            probs = (logits + shift.to(logits)).softmax(-1)
            confidence, prediction = probs.max(-1)
            if step == steps - 1:
                commit = masked
            else:
                # rank of each masked slot by confidence within its row (0 = most confident)
                ranked = torch.where(masked, confidence, torch.full_like(confidence, -1.0))
                rank = ranked.argsort(1, descending=True).argsort(1)
                commit = masked & (rank < per_step) & (confidence >= threshold)
            tokens = torch.where(commit, prediction, tokens)
            p_active = torch.where(commit, logits.softmax(-1)[..., ACTIVE], p_active)
            confident = confident | (commit & (confidence >= threshold))
            masked = masked & ~commit
        return tokens, p_active, confident


class ThresholdHead(nn.Module):
    """Per-frame relevance score, causal over the window: (feats, seen, query_ids) -> logits (N, W)."""

    def __init__(self, cfg: StrideConfig):
        super().__init__()
        self.inputs = SlotInputs(cfg)
        self.encoder = Encoder(cfg, causal=True)
        self.head = nn.Linear(cfg.d_model, 1)

    def forward(self, feats: Tensor, seen: Tensor, query_ids: Tensor) -> Tensor:
        return self.head(self.encoder(self.inputs(feats, seen, query_ids))).squeeze(-1)

    @staticmethod
    def loss(logits: Tensor, labels: Tensor, seen: Tensor) -> Tensor:
        """Binary cross-entropy over the seen slots."""
        return F.binary_cross_entropy_with_logits(logits[seen], labels[seen].float())


class LiveToken(nn.Module):
    """LIVE-style frame token, causal over the window: (feats, seen, query_ids) -> logits (N, W, 3)
    over {silent, respond: started, respond: over}."""

    def __init__(self, cfg: StrideConfig):
        super().__init__()
        self.inputs = SlotInputs(cfg)
        self.encoder = Encoder(cfg, causal=True)
        self.head = nn.Linear(cfg.d_model, 3)

    def forward(self, feats: Tensor, seen: Tensor, query_ids: Tensor) -> Tensor:
        return self.head(self.encoder(self.inputs(feats, seen, query_ids)))

    @staticmethod
    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy over slots whose target is not IGNORE (the unseen ones are)."""
        return F.cross_entropy(logits.reshape(-1, 3), targets.reshape(-1), ignore_index=IGNORE)


def gather_windows(video_feats: Tensor, video_index: Tensor, clip_end: Tensor, window: int) -> Tensor:
    """Cut windows out of per-video features.

    video_feats (B, T, F); video_index (N,) long; clip_end (N,) long, the number of frames seen (the
    window covers frames [clip_end - W, clip_end)) -> (N, W, F). Frames before 0 come back as zeros
    (they are unseen and replaced by the unseen vector anyway).
    """
    frames = clip_end.unsqueeze(1) - window + torch.arange(window, device=clip_end.device)  # (N, W)
    picked = video_feats[video_index.unsqueeze(1), frames.clamp(min=0)]
    return picked * (frames >= 0).unsqueeze(-1).to(picked.dtype)


def cosine_warmup(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warmup, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))
