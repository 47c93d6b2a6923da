"""Downstream models behind STRIDE's activation interface.

A downstream plays two roles in `StreamingRunner`:
- `FrameSource`: it consumes every frame as it arrives and hands the activation module that frame's
  feature. With a recurrent downstream the natural feature is a summary of its state after the frame,
  so the activation module sees what the answering model has understood so far.
- `Responder`: at a trigger it answers the query on the frames so far.

`Mamba2Downstream` wraps `lightning_modules.common.mamba2.Mamba2LM` (the Video-Ma²mba backbone): each
frame becomes `frame_tokens` embeddings stepped through the LM, so its state (and the per-frame cost)
stays O(1) however long the stream; an answer is greedy generation from a copy of that state after the
query prompt, which leaves the stream's own state untouched.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from lightning_modules.common.mamba2 import Mamba2LM
from lightning_modules.stride.streaming import Trigger


def state_summary(states) -> Tensor:
    """Last layer's SSM state (b, nheads, headdim, d_state) -> (b, nheads * headdim): its mean over d_state."""
    ssm = states[-1][1]
    return ssm.float().mean(-1).flatten(1)


class Mamba2Downstream:
    """O(1)-state downstream: frame source (state summary per frame) and responder (generation).

    lm: a Mamba2LM; embed_frame: one incoming item -> (frame_tokens, lm d_model) embeddings (e.g. vision
    encoder + projector of Video-Ma²mba); encode / decode: text <-> token ids for the responder.
    """

    def __init__(self, lm: Mamba2LM, embed_frame: Callable[[Tensor], Tensor],
                 encode: Callable[[str], list[int]] | None = None, decode: Callable[[list[int]], str] | None = None,
                 max_new_tokens: int = 16, eos_token_id: int | None = None):
        self.lm, self.embed_frame = lm.eval(), embed_frame
        self.encode, self.decode = encode, decode
        self.max_new_tokens, self.eos_token_id = max_new_tokens, eos_token_id
        self.states = None
        self.frames = 0

    @property
    def feature_dim(self) -> int:
        return self.lm.cfg.d_inner

    def reset(self) -> None:
        self.states, self.frames = None, 0

    @torch.no_grad()
    def __call__(self, item: Tensor) -> Tensor:
        """FrameSource: step the frame's tokens through the LM -> (d_inner,) state summary."""
        tokens = self.embed_frame(item)
        if tokens.dim() != 2 or tokens.shape[1] != self.lm.cfg.d_model:
            raise ValueError(f"Mamba2Downstream: embed_frame must give (frame_tokens, {self.lm.cfg.d_model}), got "
                             f"{tuple(tokens.shape)}")
        for token in tokens:
            _, self.states = self.lm.step(inputs_embeds=token[None], states=self.states)
        self.frames += 1
        return state_summary(self.states)[0]

    @torch.no_grad()
    def respond(self, query: str, trigger: Trigger) -> str:
        """Responder: greedy answer to `query` after the frames so far (the stream state is not changed)."""
        if self.encode is None or self.decode is None:
            raise ValueError("Mamba2Downstream.respond needs encode and decode (a tokenizer) to answer in text")
        if self.states is None:
            raise ValueError("Mamba2Downstream.respond: no frame seen yet")
        prompt = torch.tensor([self.encode(query)], dtype=torch.long)
        states = [tuple(s.clone() for s in layer) for layer in self.states]
        new = self.lm.generate(input_ids=prompt, states=states, max_new_tokens=self.max_new_tokens,
                               eos_token_id=self.eos_token_id)
        return self.decode(new[0].tolist())


class LinearFrameEmbed(nn.Module):
    """Precomputed frame feature (F,) -> (frame_tokens, d_model): a stand-in for vision encoder + projector."""

    def __init__(self, feat_dim: int, d_model: int, frame_tokens: int = 1):
        super().__init__()
        self.proj = nn.Linear(feat_dim, frame_tokens * d_model)
        self.frame_tokens, self.d_model = frame_tokens, d_model

    def forward(self, feat: Tensor) -> Tensor:
        return self.proj(feat.float()).reshape(self.frame_tokens, self.d_model)
