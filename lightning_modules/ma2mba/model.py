"""Video-Ma²mba as a plain `nn.Module`: frames -> vision tokens -> projector -> interleaved with text -> Mamba-2 LM.

A sample's text holds one `<|frame|>` placeholder per frame, in the paper's prompt format

    <|system|>S<|user|><|frame|>...<|frame|>Q<|endoftext|><|assistant|>A<|endoftext|>

and `embed` swaps each placeholder for that frame's `n` projected vision tokens, so the LM reads
`n * T` visual tokens among the text embeddings. Labels are -100 everywhere but on the answer (or
caption) tokens, and stay -100 on every visual token.

Multiple-choice QA is scored by likelihood, as Video-MME evaluations do: the video prefix runs once,
each question continues from its recurrent state, and the K options of a question continue, as one
batch, from the question's state. A Mamba state is a few fixed-size tensors per layer, so this reuse
costs nothing like a transformer's KV cache of the whole video.

Shapes: T frames, n tokens per frame, d = the LM's d_model, L text tokens, L' = L + T (n - 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_modules.common.mamba2 import Mamba2LM, Mamba2LMOutput
from lightning_modules.common.projector import MLPProjector
from lightning_modules.common.vision import VisionEncoder

from .config import Ma2mbaConfig

IGNORE = -100


@dataclass(frozen=True)
class SpecialTokens:
    """Ids the model itself needs: the frame placeholder, the padding and the end-of-turn token."""

    frame: int
    pad: int
    eot: int


@dataclass
class Question:
    """One multiple-choice question of a video, tokenised: `prompt` continues the video prefix
    (Q<|endoftext|><|assistant|>), each option is an answer (A<|endoftext|>)."""

    prompt: Tensor  # (Lq,) long
    options: list[Tensor]  # K x (Lo_k,) long
    answer: int  # index into options


class VideoMa2mba(nn.Module):
    def __init__(self, config: Ma2mbaConfig, tokens: SpecialTokens):
        super().__init__()
        self.config, self.tokens = config, tokens
        self.vision = VisionEncoder(config.vision)
        if config.lm_path:
            keep = {k: getattr(config.lm, k) for k in ("gradient_checkpointing", "ma_gc_l", "ma_gc_s", "ssd_backend")}
            self.lm = Mamba2LM.from_pretrained(config.lm_path, **keep)
        else:
            self.lm = Mamba2LM(config.lm)
        token_dim = self.vision.out_dim // config.feats_grid ** 2
        self.projector = MLPProjector(token_dim, self.lm.cfg.d_model, depth=config.projector_depth)
        vocab = self.lm.cfg.vocab_size
        for name in ("frame", "pad", "eot"):
            if not 0 <= getattr(tokens, name) < vocab:
                raise ValueError(f"special token {name} has id {getattr(tokens, name)}, outside the LM's vocabulary "
                                 f"of {vocab} (model.lm.vocab_size)")

    @property
    def tokens_per_frame(self) -> int:
        return self.vision.tokens_per_frame * self.config.feats_grid ** 2

    # ------------------------------------------------------------------------------------------ inputs
    def encode_video(self, video: Tensor) -> Tensor:
        """frames (T, H, W, 3) uint8, or features (T, D) in vision mode "feats" -> tokens (T, n, d).

        Frames are converted, encoded and projected `vision.chunk_frames` at a time, so neither the float
        copy of the video nor the tower's activations ever exist for the whole video at once; when the tower
        trains, each chunk is recomputed in backward (activation checkpointing) for the same reason.
        """
        feats = self.config.vision.mode == "feats"
        if feats and video.dim() != 2:
            raise ValueError(f"VideoMa2mba: vision mode 'feats' expects features (T, D), got {tuple(video.shape)}")
        if not feats and (video.dim() != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8):
            raise ValueError(f"VideoMa2mba: expected uint8 frames (T, H, W, 3), got {tuple(video.shape)} {video.dtype}")
        chunks = video.split(self.config.vision.chunk_frames)
        recompute = torch.is_grad_enabled() and self.config.trains_vision and len(chunks) > 1
        out = [checkpoint(self._encode_chunk, c, use_reentrant=False) if recompute else self._encode_chunk(c)
               for c in chunks]
        return torch.cat(out)

    def _encode_chunk(self, chunk: Tensor) -> Tensor:
        if self.config.vision.mode == "feats":
            return self.projector(self._split_feats(self.vision.encode(chunk.float())))
        return self.projector(self.vision.encode(chunk.permute(0, 3, 1, 2).float().div_(255.0)))

    def _split_feats(self, tokens: Tensor) -> Tensor:
        """(t, 1, D) features, each a row-major (g, g, c) grid -> (t, k*k, (g/k)^2 c) tokens, k = feats_grid,
        token i*k + j being cell (row i, column j) of a k x k cut of the grid."""
        k, c = self.config.feats_grid, self.config.feats_channels
        if k == 1:
            return tokens
        t, d = tokens.shape[0], tokens.shape[-1]
        g = math.isqrt(d // c)
        cells = tokens.reshape(t, k, g // k, k, g // k, c).permute(0, 1, 3, 2, 4, 5)
        return cells.reshape(t, k * k, -1)

    def embed(self, input_ids: Tensor, video: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """input_ids (L,) with one `<|frame|>` per frame of `video` -> (embeds (L', d), source (L',)).

        `source[j]` is the text position the j-th embedding comes from (each placeholder repeats n times),
        so per-token tensors such as labels follow with `labels[source]`.
        """
        is_frame = input_ids == self.tokens.frame
        n_placeholders = int(is_frame.sum())
        n_frames = 0 if video is None else video.shape[0]
        if n_placeholders != n_frames:
            raise ValueError(f"VideoMa2mba.embed: the text has {n_placeholders} <|frame|> placeholders but the video "
                             f"has {n_frames} frames")
        text = self.lm.backbone.embedding(input_ids)
        if n_frames == 0:
            return text, torch.arange(input_ids.shape[0], device=input_ids.device)
        visual = self.encode_video(video)  # (T, n, d)
        n = visual.shape[1]
        repeats = torch.where(is_frame, n, 1)
        source = torch.repeat_interleave(torch.arange(input_ids.shape[0], device=input_ids.device), repeats)
        embeds = text[source]
        slots = is_frame[source]
        embeds = embeds.index_put((slots,), visual.reshape(-1, visual.shape[-1]).to(embeds.dtype))
        return embeds, source

    def build_inputs(self, input_ids: Tensor, labels: Optional[Tensor], videos: Sequence[Optional[Tensor]],
                     lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """input_ids, labels (B, L) right-padded (`lengths` (B,) real lengths, default all L); videos: B frames
        or features (or None) -> inputs_embeds (B, L'_max, d) right-padded with zeros, labels (B, L'_max) with
        -100 on padding and visual tokens. Right padding is harmless: the LM is causal."""
        b, length = input_ids.shape
        if len(videos) != b:
            raise ValueError(f"VideoMa2mba: {b} token sequences but {len(videos)} videos")
        lengths = torch.full((b,), length) if lengths is None else lengths
        embeds, targets = [], []
        for i in range(b):
            ids = input_ids[i, : int(lengths[i])]
            e, source = self.embed(ids, videos[i])
            embeds.append(e)
            if labels is not None:
                lab = labels[i, : int(lengths[i])][source]
                targets.append(lab.masked_fill(ids[source] == self.tokens.frame, IGNORE))
        longest = max(e.shape[0] for e in embeds)
        inputs = embeds[0].new_zeros(b, longest, embeds[0].shape[-1])
        out_labels = None if labels is None else input_ids.new_full((b, longest), IGNORE)
        for i, e in enumerate(embeds):
            inputs[i, : e.shape[0]] = e
            if labels is not None:
                out_labels[i, : e.shape[0]] = targets[i]
        return inputs, out_labels

    # ------------------------------------------------------------------------------------------ training
    def forward(self, input_ids: Tensor, labels: Tensor, videos: Sequence[Optional[Tensor]],
                lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """-> (loss: mean cross-entropy over the labelled tokens, count: how many tokens carry a label).

        Logits are only formed at labelled positions, so a long video's (L', vocab) logits never exist.
        """
        inputs, labels = self.build_inputs(input_ids, labels, videos, lengths)
        out: Mamba2LMOutput = self.lm(inputs_embeds=inputs, labels=labels, return_logits=False)
        return out.loss, (labels[:, 1:] != IGNORE).sum()

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def video_state(self, video_ids: Tensor, video: Optional[Tensor]) -> list:
        """The LM's per-layer states after reading the video prefix (L,) (system, user turn, frames)."""
        embeds, _ = self.embed(video_ids, video)
        # All labels ignored + no logits: the LM runs its layers and returns states without forming any logits.
        no_labels = video_ids.new_full((1, embeds.shape[0]), IGNORE)
        return self.lm(inputs_embeds=embeds[None], labels=no_labels, return_logits=False, return_states=True).states

    @torch.no_grad()
    def score_options(self, states: list, question: Question) -> Tensor:
        """Log-likelihood of each option given the state after the video: (K,) floats, summed (or averaged,
        `option_score: mean`) over each option's tokens. The question runs once from `states`; the options run
        as one batch of K from the question's state."""
        q = self.lm(input_ids=question.prompt[None], states=states, return_states=True)
        first = F.log_softmax(q.logits[0, -1], dim=-1)  # predicts every option's first token
        k = len(question.options)
        lengths = torch.tensor([len(o) for o in question.options], device=question.prompt.device)
        if (lengths == 0).any():
            raise ValueError("VideoMa2mba.score_options: an option has no tokens")
        options = question.prompt.new_full((k, int(lengths.max())), self.tokens.pad)
        for i, o in enumerate(question.options):
            options[i, : len(o)] = o
        branched = [tuple(s.expand(k, *s.shape[1:]).contiguous() for s in layer) for layer in q.states]
        logits = self.lm(input_ids=options, states=branched).logits  # (K, Lo, V): token j predicts j + 1
        logp = torch.cat([first.expand(k, -1)[:, None], F.log_softmax(logits[:, :-1], dim=-1)], dim=1)
        token_logp = logp.gather(-1, options[..., None])[..., 0]
        valid = torch.arange(options.shape[1], device=options.device)[None] < lengths[:, None]
        total = (token_logp * valid).sum(1)
        return total / lengths if self.config.option_score == "mean" else total

    @torch.no_grad()
    def generate_answer(self, states: list, prompt: Tensor, max_new_tokens: int = 24) -> Tensor:
        """Greedy free-form answer to `prompt` (Lq,) from the state after the video -> new token ids (<= max,)."""
        return self.lm.generate(input_ids=prompt[None], states=states, max_new_tokens=max_new_tokens,
                                eos_token_id=self.tokens.eot)[0]
