"""SALOVA as plain PyTorch: ST-Connector -> SR-Router -> FocusFast -> LLM (FACTS.md, "SALOVA"; README.md here).

Shapes used throughout (one batch holds several videos, each with its own number of segments and queries):
    T  frames of the whole batch (only the frames the segments sample), N segments of the batch,
    F  frames per segment (padded), P  tokens per frame, B  videos, S  segments per video (padded),
    Q  queries of the batch (captions or questions), L  query text tokens (padded), K  visual latents.
Padding is always described by a boolean mask, True = real.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from lightning_modules.common.projector import MLPProjector
from lightning_modules.common.vision import VisionEncoder

from .config import ConnectorConfig, LLMConfig, RouterConfig, SalovaConfig
from .text import build_text_tower

IGNORE = -100


# --------------------------------------------------------------------------- attention blocks
class MaskedAttention(nn.Module):
    """Multi-head attention of queries x (N, Lq, D) over context (N, Lk, D) with a key mask (N, Lk), True = attend."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor) -> Tensor:
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (N, H, Lq, d)
        k, v = self.kv(context).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)  # 2 x (N, H, Lk, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return self.out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim))


class PerceiverLayer(nn.Module):
    """Flamingo resampler layer: latents attend to [media; latents], then a feed-forward, both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = MaskedAttention(dim, heads)
        self.ff = FeedForward(dim)

    def forward(self, latents: Tensor, media: Tensor, media_mask: Tensor) -> Tensor:
        x = self.norm_latents(latents)
        context = torch.cat([self.norm_media(media), x], dim=1)
        mask = torch.cat([media_mask, media_mask.new_ones(x.shape[:2])], dim=1)
        latents = latents + self.attn(x, context, mask)
        return latents + self.ff(latents)


class CrossLayer(nn.Module):
    """Router layer: segment tokens attend to the query's text tokens, then a feed-forward, both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm_text = nn.LayerNorm(dim)
        self.attn = MaskedAttention(dim, heads)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm(x), self.norm_text(text), text_mask)
        return x + self.ff(x)


# --------------------------------------------------------------------------- ST-Connector
class STConnector(nn.Module):
    """Perceiver resampler per segment: any number of frames -> 1 CLS + K visual tokens.

    forward(tokens (N, F, P, Dv), global_tokens (N, F, Dv), frame_mask (N, F)) ->
        out (N, K + 1, D_llm) through the MLP projector (index 0 = CLS), cls (N, W) the CLS latent before it.
    The CLS latent starts from the mean of the real frames' global tokens; padded frames are masked everywhere.
    """

    def __init__(self, vision_dim: int, tokens_per_frame: int, out_dim: int, cfg: ConnectorConfig,
                 global_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        width = cfg.width
        self.media_in = nn.Linear(vision_dim, width)
        self.cls_in = nn.Linear(vision_dim if global_dim is None else global_dim, width)
        self.spatial = nn.Parameter(0.02 * torch.randn(tokens_per_frame, width))
        self.frame = nn.Parameter(0.02 * torch.randn(cfg.max_frames, width))
        self.latents = nn.Parameter(0.02 * torch.randn(cfg.num_latents, width))
        self.layers = nn.ModuleList(PerceiverLayer(width, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(width)
        self.projector = MLPProjector(width, out_dim, depth=cfg.projector_depth)

    def forward(self, tokens: Tensor, global_tokens: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        n, f, p, _ = tokens.shape
        if f > self.cfg.max_frames:
            raise ValueError(f"STConnector: segments bring {f} frames but model.connector.max_frames is "
                             f"{self.cfg.max_frames}; subsample frames (data.max_frames_per_segment) or raise it")
        if p != self.spatial.shape[0]:
            raise ValueError(f"STConnector: {p} tokens per frame, built for {self.spatial.shape[0]}")
        if not frame_mask.any(1).all():
            raise ValueError("STConnector: a segment has no real frame")
        # Zero the padded frames so that whatever they hold cannot reach the output (e.g. through 0 * inf).
        keep = frame_mask[:, :, None, None]
        tokens = torch.where(keep, tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
        media = self.media_in(tokens) + self.spatial + self.frame[:f, None, :]  # (N, F, P, W)
        media_mask = frame_mask[:, :, None].expand(n, f, p).flatten(1)
        media = media.flatten(1, 2)
        if self.training and self.cfg.token_drop > 0:
            media_mask = self._drop_tokens(media_mask)

        weights = frame_mask.to(global_tokens.dtype)[..., None]
        global_tokens = torch.where(frame_mask[..., None], global_tokens, torch.zeros((), dtype=global_tokens.dtype,
                                                                                      device=global_tokens.device))
        mean_global = (global_tokens * weights).sum(1) / weights.sum(1)
        cls = self.cls_in(mean_global)[:, None, :]  # (N, 1, W)
        latents = torch.cat([cls, self.latents.expand(n, -1, -1)], dim=1)
        for layer in self.layers:
            latents = layer(latents, media, media_mask)
        latents = self.norm(latents)
        return self.projector(latents), latents[:, 0]

    def _drop_tokens(self, media_mask: Tensor) -> Tensor:
        """Drop each real media token with a per-segment rate drawn from U(0, token_drop); keep at least one."""
        rate = torch.rand(media_mask.shape[0], 1, device=media_mask.device) * self.cfg.token_drop
        kept = media_mask & (torch.rand(media_mask.shape, device=media_mask.device) >= rate)
        empty = ~kept.any(1, keepdim=True)
        return torch.where(empty, media_mask, kept)


# --------------------------------------------------------------------------- SR-Router
@dataclass
class RouterOutput:
    scores: Tensor  # (Q, S) exp(logit_scale) * cos; padded segments hold 0 (see mask)
    cos: Tensor  # (Q, S) cosine between the query-conditioned segment and the query's text CLS
    logits: Tensor  # (Q, S) scores + bias: what the BCE sees
    mask: Tensor  # (Q, S) True = a real segment of the query's video


class SRRouter(nn.Module):
    """Scores each segment of a video against a query.

    forward(segment_cls (Q, S, Ds), segment_mask (Q, S), text_tokens (Q, L, Dt), text_mask (Q, L), text_cls (Q, Dt))
    Segments are their CLS latent + a learned segment-index embedding; `depth` layers of segment -> text
    cross-attention condition them on the query; score = exp(logit_scale) * cos(segment, text CLS).
    """

    def __init__(self, segment_dim: int, text_dim: int, cfg: RouterConfig):
        super().__init__()
        self.cfg = cfg
        self.segment_in = nn.Linear(segment_dim, cfg.width)
        self.index = nn.Embedding(cfg.max_segments, cfg.width)
        nn.init.normal_(self.index.weight, std=0.02)
        self.text_in = nn.Linear(text_dim, cfg.width)
        self.layers = nn.ModuleList(CrossLayer(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.segment_out = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.width))
        self.text_out = nn.Linear(text_dim, cfg.width)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(cfg.init_logit_bias))

    def forward(self, segment_cls: Tensor, segment_mask: Tensor, text_tokens: Tensor, text_mask: Tensor,
                text_cls: Tensor) -> RouterOutput:
        s = segment_cls.shape[1]
        if s > self.cfg.max_segments:
            raise ValueError(f"SRRouter: a video has {s} segments but model.router.max_segments is "
                             f"{self.cfg.max_segments}")
        x = self.segment_in(segment_cls) + self.index.weight[:s]
        text = self.text_in(text_tokens)
        for layer in self.layers:
            x = layer(x, text, text_mask)
        segment = F.normalize(self.segment_out(x), dim=-1)
        query = F.normalize(self.text_out(text_cls), dim=-1)
        cos = torch.einsum("qsd,qd->qs", segment, query)
        cos = cos.masked_fill(~segment_mask, 0.0)
        scale = self.logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp()
        scores = scale * cos
        return RouterOutput(scores=scores, cos=cos, logits=scores + self.logit_bias, mask=segment_mask)


def feats_to_patches(feats: Tensor, grid: int) -> Tensor:
    """Pooled-RGB frame features (..., G*G*3), laid out (G, G, 3) row-major, -> (..., grid*grid, (G/grid)^2*3)
    patch tokens in row-major patch order, each patch's cells row-major, RGB innermost (a ViT's patchify)."""
    d = feats.shape[-1]
    side = math.isqrt(d // 3)
    if side * side * 3 != d or side % grid:
        raise ValueError(f"model.connector.feats_grid: features of width {d} are not (G, G, 3) with G a multiple "
                         f"of {grid}")
    cell = side // grid
    x = feats.unflatten(-1, (grid, cell, grid, cell, 3))  # (..., gy, cy, gx, cx, 3)
    x = x.movedim(-4, -3)  # (..., gy, gx, cy, cx, 3)
    return x.flatten(-5, -4).flatten(-3)


def select_top_k(scores: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best real segments per query, in temporal order.

    scores, mask (Q, S) -> index (Q, k') into S ascending, valid (Q, k') with k' = min(k, S);
    a video with fewer than k segments fills its tail with invalid slots (valid False, index 0).
    """
    k = min(k, scores.shape[1])
    ranked = scores.masked_fill(~mask, float("-inf")).topk(k, dim=1).indices
    valid = mask.gather(1, ranked)
    # Invalid slots sort last; real ones in time order.
    order_key = torch.where(valid, ranked, ranked.new_full((), scores.shape[1]) + ranked)
    index = ranked.gather(1, order_key.argsort(dim=1))
    valid = mask.gather(1, index) & (torch.arange(k, device=index.device) < valid.sum(1, keepdim=True))
    return torch.where(valid, index, torch.zeros_like(index)), valid


def ground_truth_segments(labels: Tensor, mask: Tensor, k: int, scores: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Teacher forcing: the ground-truth top-k, in temporal order; same outputs as select_top_k.

    Relevant segments rank first (the earliest first when there are more than k); when `scores` (Q, S) are given,
    the remaining slots go to the best-scoring irrelevant segments, so that the LLM reads k segments in training
    as it does at inference and learns to find the answer among them. Without `scores`: the positives only.
    """
    positive = (labels > 0.5) & mask
    s = labels.shape[1]
    order = s - torch.arange(s, device=labels.device, dtype=torch.float32)  # earlier positives first
    if scores is None:
        return select_top_k(order.expand_as(labels).masked_fill(~positive, 0.0), positive, k)
    # Positives above every negative, whatever the scores: offset them past the score range.
    offset = (scores.detach().abs().amax() + 1) * 2 + s
    rank = torch.where(positive, offset + order, scores.detach().float())
    return select_top_k(rank, mask, k)


# --------------------------------------------------------------------------- losses
def router_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy of (Q, S) logits against multi-hot labels, averaged over real segments."""
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def router_margin(cos: Tensor, labels: Tensor, mask: Tensor, margin: float) -> Tensor:
    """Margin ranking over every (positive, negative) segment pair of each query:
    mean of max(0, margin - (cos_pos - cos_neg)); 0 when no query has both a positive and a negative."""
    positive = (labels > 0.5) & mask
    negative = (labels <= 0.5) & mask
    gaps = margin - (cos[:, :, None] - cos[:, None, :])  # (Q, S_pos, S_neg)
    pairs = positive[:, :, None] & negative[:, None, :]
    return (gaps.clamp(min=0) * pairs).sum() / pairs.sum().clamp(min=1)


# --------------------------------------------------------------------------- LLM
def build_llm(cfg: LLMConfig, vocab_size: int) -> nn.Module:
    """A causal LM: from a local HF dir (never downloads) or built from the config's tiny dims (random init)."""
    if cfg.path:
        if not (Path(cfg.path) / "config.json").is_file():
            raise FileNotFoundError(f"model.llm.path: {cfg.path!r} holds no config.json; SALOVA loads a local "
                                    "HF checkpoint directory and never downloads")
        llm = AutoModelForCausalLM.from_pretrained(cfg.path, local_files_only=True)
        if llm.get_input_embeddings().num_embeddings < vocab_size:
            # The data side added our prompt tokens (<|user|>, <|segment|>, ...) to the LLM's tokenizer.
            llm.resize_token_embeddings(vocab_size)
        return llm
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[cfg.arch]
    hf_config = config_class(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(hf_config)


# --------------------------------------------------------------------------- the whole model
@dataclass
class SalovaOutput:
    router: RouterOutput
    chosen: Tensor  # (Q, k) segment ids fed to the LLM, temporal order
    chosen_valid: Tensor  # (Q, k)
    lm_loss: Tensor  # () mean NLL over every answer token of the batch
    lm_nll: Tensor  # (Q,) mean NLL per query (NaN where a query has no answer tokens)


class SalovaModel(nn.Module):
    """Frames -> segment tokens -> router scores per query -> FocusFast LLM input -> answer NLL.

    The batch is the dict `datamodules.salova.SalovaDataModule.collate` returns (documented there):
    frames (T, 3, H, W) float [0, 1] or feats (T, D); seg_frame_index / seg_frame_mask (N, F);
    video_segments / video_segment_mask (B, S); query_video (Q,); query_ids / query_mask (Q, L);
    labels (Q, S); prompt_ids / prompt_mask (Q, Lp); answer_ids / answer_mask (Q, La);
    options_ids / options_mask (Q, O, Lo); answer_index (Q,); segment_token_id (int).
    """

    def __init__(self, cfg: SalovaConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.llm = build_llm(cfg.llm, vocab_size)
        llm_dim = self.llm.get_input_embeddings().embedding_dim
        grid = cfg.connector.feats_grid
        if grid:
            cell = math.isqrt(self.vision.out_dim // 3) // grid
            media_dim, tokens_per_frame = cell * cell * 3, grid * grid
        else:
            media_dim, tokens_per_frame = self.vision.out_dim, self.vision.tokens_per_frame
        self.connector = STConnector(media_dim, tokens_per_frame, llm_dim, cfg.connector,
                                     global_dim=self.vision.out_dim)
        self.text = build_text_tower(cfg.text, vocab_size)
        self.router = SRRouter(cfg.connector.width, self.text.out_dim, cfg.router)

    # ----------------------------------------------------------------- stages of the forward pass
    def encode_segments(self, batch: dict) -> tuple[Tensor, Tensor]:
        """-> segment tokens (N, K + 1, D_llm) (index 0 = the global/CLS token), CLS latents (N, W)."""
        tokens, global_tokens = self.vision.encode(batch["frames"], return_global=True)  # (T, P, Dv), (T, Dv)
        if self.cfg.connector.feats_grid:
            tokens = feats_to_patches(global_tokens, self.cfg.connector.feats_grid)  # (T, grid^2, Dv / grid^2)
        index, mask = batch["seg_frame_index"], batch["seg_frame_mask"]
        return self.connector(tokens[index], global_tokens[index], mask)

    def route(self, batch: dict, segment_cls: Tensor) -> RouterOutput:
        video_segments, video_mask = batch["video_segments"], batch["video_segment_mask"]
        per_video = segment_cls[video_segments]  # (B, S, W)
        q_video = batch["query_video"]
        text_tokens, text_mask, text_cls = self.text(batch)
        return self.router(per_video[q_video], video_mask[q_video], text_tokens, text_mask, text_cls)

    def choose(self, batch: dict, router: RouterOutput, k: int, teacher_forcing: bool) -> tuple[Tensor, Tensor]:
        if teacher_forcing:
            # A question names what it asks about, so the LLM can learn to find it among k segments (filled
            # with the router's best others, model.teacher_fill); "describe the scene" does not: a caption query
            # reads its own.
            own, own_valid = ground_truth_segments(batch["labels"], router.mask, k)
            if not self.cfg.teacher_fill:
                return own, own_valid
            filled, filled_valid = ground_truth_segments(batch["labels"], router.mask, k, router.scores)
            caption = batch["query_is_caption"][:, None]
            return torch.where(caption, own, filled), torch.where(caption, own_valid, filled_valid)
        return select_top_k(router.scores.detach(), router.mask, k)

    def relevance(self, router: RouterOutput) -> Tensor | None:
        """The weights of the chosen segments' tokens (model.weight_by_relevance): the router's probability that a
        segment is relevant, sigmoid(score + b), detached (Q, S); None = unweighted, as in the paper."""
        return torch.sigmoid(router.logits.detach()) if self.cfg.weight_by_relevance else None

    def video_prefix(self, batch: dict, segment_tokens: Tensor, chosen: Tensor, chosen_valid: Tensor,
                     focusfast: bool, relevance: Tensor | None = None) -> list[Tensor]:
        """FocusFast: per query, [<seg>, one global token per segment of the video] (if focusfast) then
        [<seg>, K tokens] for each chosen segment in time order, the K tokens times relevance[q, segment] when
        given (Q, S). -> Q embeddings of shape (len_q, D)."""
        embed = self.llm.get_input_embeddings()
        marker = embed(torch.tensor([batch["segment_token_id"]], device=segment_tokens.device))  # (1, D)
        prefixes = []
        for q, b in enumerate(batch["query_video"].tolist()):
            ids = batch["video_segments"][b][batch["video_segment_mask"][b]]  # the video's segments in N
            pieces = []
            if focusfast:
                pieces += [marker, segment_tokens[ids, 0]]
            for j in chosen[q][chosen_valid[q]].tolist():
                tokens = segment_tokens[ids[j], 1:]
                pieces += [marker, tokens if relevance is None else tokens * relevance[q, j]]
            prefixes.append(torch.cat(pieces) if pieces else marker[:0])
        return prefixes

    def lm_sequences(self, prefixes: list[Tensor], prompt_ids: Tensor, prompt_mask: Tensor, answer_ids: Tensor,
                     answer_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[prefix; prompt; answer] per row, right-padded -> inputs_embeds (R, L, D), attention (R, L), labels (R, L)
        with labels = the answer tokens at their own positions, IGNORE elsewhere."""
        embed = self.llm.get_input_embeddings()
        prompt_emb, answer_emb = embed(prompt_ids), embed(answer_ids)
        rows, labels = [], []
        for r, prefix in enumerate(prefixes):
            p, a = prompt_mask[r], answer_mask[r]
            rows.append(torch.cat([prefix, prompt_emb[r][p], answer_emb[r][a]]))
            labels.append(torch.cat([answer_ids.new_full((prefix.shape[0] + int(p.sum()),), IGNORE), answer_ids[r][a]]))
        lengths = torch.tensor([row.shape[0] for row in rows], device=prompt_ids.device)
        inputs = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        labels = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE)
        attention = torch.arange(inputs.shape[1], device=inputs.device) < lengths[:, None]
        return inputs, attention, labels

    def answer_nll(self, inputs: Tensor, attention: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """-> token NLL summed per row (R,), answer tokens per row (R,).

        The LM head runs only at the positions that predict an answer token: the vocabulary projection of
        every video token would cost more than the rest of the LLM."""
        hidden = self.llm.base_model(inputs_embeds=inputs, attention_mask=attention.long()).last_hidden_state
        target = labels[:, 1:]
        counted = target != IGNORE
        rows, cols = counted.nonzero(as_tuple=True)
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][rows, cols]).float()
        nll = F.cross_entropy(logits, target[rows, cols], reduction="none")
        per_row = torch.zeros(labels.shape[0], dtype=nll.dtype, device=nll.device).index_add_(0, rows, nll)
        return per_row, counted.sum(1)

    # ----------------------------------------------------------------- entry points
    def forward(self, batch: dict, k: int | None = None, teacher_forcing: bool | None = None,
                focusfast: bool | None = None, use_llm: bool = True) -> SalovaOutput:
        """use_llm False: routing only (the router pre-stage); lm_loss is 0 and lm_nll NaN, `chosen` the router's."""
        k = self.cfg.router.top_k if k is None else k
        teacher_forcing = self.cfg.teacher_forcing if teacher_forcing is None else teacher_forcing
        focusfast = self.cfg.focusfast if focusfast is None else focusfast
        segment_tokens, segment_cls = self.encode_segments(batch)
        router = self.route(batch, segment_cls)
        if not use_llm:
            chosen, valid = select_top_k(router.scores.detach(), router.mask, k)
            q = router.scores.shape[0]
            return SalovaOutput(router=router, chosen=chosen, chosen_valid=valid,
                                lm_loss=router.scores.new_zeros(()), lm_nll=router.scores.new_full((q,), math.nan))
        chosen, valid = self.choose(batch, router, k, teacher_forcing)
        prefixes = self.video_prefix(batch, segment_tokens, chosen, valid, focusfast, self.relevance(router))
        inputs, attention, labels = self.lm_sequences(prefixes, batch["prompt_ids"], batch["prompt_mask"],
                                                      batch["answer_ids"], batch["answer_mask"])
        nll_sum, count = self.answer_nll(inputs, attention, labels)
        return SalovaOutput(router=router, chosen=chosen, chosen_valid=valid,
                            lm_loss=nll_sum.sum() / count.sum().clamp(min=1), lm_nll=nll_sum / count)

    def router_loss(self, batch: dict, router: RouterOutput) -> tuple[Tensor, Tensor]:
        """-> (BCE, margin ranking) of the router against the batch's multi-hot labels."""
        labels = batch["labels"]
        return router_bce(router.logits, labels, router.mask), router_margin(router.cos, labels, router.mask,
                                                                              self.cfg.margin)

    @torch.no_grad()
    def option_scores(self, batch: dict, segment_tokens: Tensor, chosen: Tensor, valid: Tensor,
                      focusfast: bool, relevance: Tensor | None = None) -> Tensor:
        """Multiple choice by likelihood: mean log-prob of each option as the answer. -> (Q, O), -inf for
        padded options; rows of open-ended queries are all -inf."""
        options_ids, options_mask = batch["options_ids"], batch["options_mask"]
        q, o, _ = options_ids.shape
        has_option = options_mask.any(-1)  # (Q, O)
        scores = torch.full((q, o), float("-inf"), device=options_ids.device)
        if not has_option.any():
            return scores
        prefixes = self.video_prefix(batch, segment_tokens, chosen, valid, focusfast, relevance)
        rows = has_option.nonzero().tolist()
        inputs, attention, labels = self.lm_sequences(
            [prefixes[i] for i, _ in rows],
            batch["prompt_ids"][[i for i, _ in rows]], batch["prompt_mask"][[i for i, _ in rows]],
            options_ids[[i for i, _ in rows], [j for _, j in rows]],
            options_mask[[i for i, _ in rows], [j for _, j in rows]])
        nll_sum, count = self.answer_nll(inputs, attention, labels)
        scores[[i for i, _ in rows], [j for _, j in rows]] = -nll_sum / count.clamp(min=1)
        return scores
