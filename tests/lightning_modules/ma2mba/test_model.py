"""VideoMa2mba: shapes, masking, chunked encoding and state-reusing option scoring against from-scratch references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.common.mamba2 import Mamba2Config
from lightning_modules.common.vision import VisionConfig
from lightning_modules.ma2mba.config import Ma2mbaConfig, OptimConfig
from lightning_modules.ma2mba.model import IGNORE, Question, SpecialTokens, VideoMa2mba

TOKENS = SpecialTokens(frame=5, pad=0, eot=1)
VOCAB = 64


def tiny_config(stage="stage2", frozen=True, chunk_frames=64, **kw) -> Ma2mbaConfig:
    # chunk_size 8 with sequences that are not multiples of it: the scan's ragged last chunk is exercised.
    lm = Mamba2Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=8, headdim=16, chunk_size=8)
    vision = VisionConfig(mode="tiny", image_size=16, patch_size=4, hidden_size=16, layers=2, heads=2, pool=2,
                          frozen=frozen, chunk_frames=chunk_frames)
    return Ma2mbaConfig(stage=stage, lm=lm, vision=vision, **kw)


def make_model(**kw) -> VideoMa2mba:
    torch.manual_seed(0)
    return VideoMa2mba(tiny_config(**kw), TOKENS).eval()


def video(t, seed=0):
    return torch.randint(0, 256, (t, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def sequence(n_frames, text_before=3, text_after=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(6, VOCAB, (text_before,), generator=g)
    after = torch.randint(6, VOCAB, (text_after,), generator=g)
    return torch.cat([before, torch.full((n_frames,), TOKENS.frame), after])


def test_embed_expands_each_placeholder_into_its_frame_tokens():
    model = make_model()
    n = model.tokens_per_frame
    assert n == 4  # 16 px / 4 px patches = 4 x 4 grid, 2 x 2 pooled
    ids, frames = sequence(3), video(3)
    embeds, source = model.embed(ids, frames)
    assert embeds.shape == (len(ids) + 3 * (n - 1), 32)
    visual = model.encode_video(frames).reshape(-1, 32)
    slots = ids[source] == TOKENS.frame
    assert torch.equal(embeds[slots], visual)
    assert torch.equal(embeds[~slots], model.lm.backbone.embedding(ids[ids != TOKENS.frame]))


def test_placeholder_count_must_match_frames():
    model = make_model()
    with pytest.raises(ValueError, match="3 <\\|frame\\|> placeholders but the video has 4 frames"):
        model.embed(sequence(3), video(4))


def test_chunked_encoding_equals_one_chunk():
    whole, chunked = make_model(chunk_frames=64), make_model(chunk_frames=3)
    chunked.load_state_dict(whole.state_dict())
    frames = video(7)
    torch.testing.assert_close(chunked.encode_video(frames), whole.encode_video(frames), rtol=1e-5, atol=1e-6)


def test_chunked_encoding_gradients_equal_one_chunk_when_the_tower_trains():
    whole = make_model(stage="stage1_5", frozen=False, chunk_frames=64).train()
    chunked = make_model(stage="stage1_5", frozen=False, chunk_frames=3).train()
    chunked.load_state_dict(whole.state_dict())
    frames = video(7)
    for m in (whole, chunked):
        m.encode_video(frames).square().sum().backward()
    for (name, a), (_, b) in zip(whole.named_parameters(), chunked.named_parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert whole.vision.tower.embeddings.patch_embedding.weight.grad is not None


def test_forward_backward_shapes_with_padding_and_mixed_lengths():
    model = make_model().train()
    seqs = [sequence(4, seed=1), sequence(2, text_after=9, seed=2)]
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((2, int(lengths.max())), TOKENS.pad)
    labels = torch.full_like(ids, IGNORE)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        labels[i, len(s) - 3: len(s)] = s[-3:]  # the "answer": the last three tokens
    videos = [video(4, 1), video(2, 2)]
    inputs, out_labels = model.build_inputs(ids, labels, videos, lengths)
    n = model.tokens_per_frame
    assert inputs.shape == (2, len(seqs[0]) + 4 * (n - 1), 32)  # the longer expanded sequence sets the width
    assert int((out_labels != IGNORE).sum()) == 6
    loss, count = model(ids, labels, videos, lengths)
    assert count == 6 and torch.isfinite(loss)
    loss.backward()
    assert model.projector.net[0].weight.grad is not None
    assert model.lm.backbone.layers[0].mixer.in_proj.weight.grad is not None
    assert model.vision.tower.embeddings.patch_embedding.weight.grad is None  # frozen tower


def test_loss_is_cross_entropy_on_answer_tokens_only():
    model = make_model()
    ids, frames = sequence(3, text_after=7), video(3)
    labels = torch.full_like(ids, IGNORE)
    labels[-4:] = ids[-4:]
    loss, count = model(ids[None], labels[None], [frames])
    # Reference: full logits of the expanded sequence, cross-entropy at the positions before each answer token.
    embeds, source = model.embed(ids, frames)
    logits = model.lm(inputs_embeds=embeds[None]).logits[0]
    answer_positions = torch.arange(len(source) - 4, len(source))
    expected = F.cross_entropy(logits[answer_positions - 1], ids[source][answer_positions])
    assert count == 4
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # Labels on placeholders never reach the loss: the visual tokens are masked whatever the data says.
    leaky = labels.clone()
    leaky[ids == TOKENS.frame] = 7
    loss2, count2 = model(ids[None], leaky[None], [frames])
    assert count2 == 4 and torch.equal(loss2, loss)


def _score_from_scratch(model, video_ids, frames, question, reduce="sum"):
    """The obvious reference: for each option, the whole sequence video + question + option in one pass."""
    scores = []
    for option in question.options:
        ids = torch.cat([video_ids, question.prompt, option])
        embeds, _ = model.embed(ids, frames)
        logp = F.log_softmax(model.lm(inputs_embeds=embeds[None]).logits[0], -1)
        start = embeds.shape[0] - len(option)
        token_logp = logp[start - 1: -1].gather(-1, option[:, None])[:, 0]
        scores.append(token_logp.sum() if reduce == "sum" else token_logp.mean())
    return torch.stack(scores)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_option_scores_from_reused_state_equal_scoring_from_scratch(reduce):
    model = make_model(option_score=reduce)
    frames = video(5)
    video_ids = sequence(5, text_before=4, text_after=0)
    g = torch.Generator().manual_seed(3)
    questions = [Question(prompt=torch.randint(6, VOCAB, (6,), generator=g),
                          options=[torch.randint(6, VOCAB, (k,), generator=g) for k in (1, 3, 2, 5)], answer=1)
                 for _ in range(2)]
    states = model.video_state(video_ids, frames)
    before = [tuple(s.clone() for s in layer) for layer in states]
    for q in questions:  # two questions from one video state: the state must not be consumed
        got = model.score_options(states, q)
        torch.testing.assert_close(got, _score_from_scratch(model, video_ids, frames, q, reduce), rtol=1e-4, atol=1e-4)
    for layer, saved in zip(states, before):
        for s, t in zip(layer, saved):
            assert torch.equal(s, t)


def test_generate_answer_matches_greedy_decoding_from_scratch():
    model = make_model()
    frames, video_ids = video(3), sequence(3, text_after=0)
    prompt = torch.tensor([9, 10, 11])
    got = model.generate_answer(model.video_state(video_ids, frames), prompt, max_new_tokens=4)
    ids = torch.cat([video_ids, prompt])
    expected = []
    for _ in range(len(got)):
        embeds, _ = model.embed(ids, frames)
        token = model.lm(inputs_embeds=embeds[None]).logits[0, -1, :VOCAB].argmax()
        expected.append(int(token))
        ids = torch.cat([ids, token[None]])
    assert got.tolist() == expected


def test_feats_mode_reads_one_token_per_frame():
    cfg = tiny_config()
    cfg.vision = VisionConfig(mode="feats", feats_dim=12)
    model = VideoMa2mba(cfg, TOKENS)
    feats = torch.randn(4, 12)
    embeds, _ = model.embed(sequence(4), feats)
    assert embeds.shape == (len(sequence(4)), 32)
    with pytest.raises(ValueError, match="expects features"):
        model.encode_video(video(4))


def test_feats_grid_cuts_each_frame_into_spatial_tokens():
    # Reference: the synthetic world's features are a row-major (g, g, 3) pooled-RGB grid, g = 4 here; with
    # feats_grid 2, token i*2 + j must be exactly cell (row i, column j) of that grid, flattened.
    cfg = tiny_config()
    cfg.vision = VisionConfig(mode="feats", feats_dim=48)
    cfg.feats_grid = 2
    cfg.__post_init__()
    torch.manual_seed(0)
    model = VideoMa2mba(cfg, TOKENS)
    assert model.tokens_per_frame == 4
    feats = torch.randn(3, 48)
    images = feats.reshape(3, 4, 4, 3)
    expected = torch.stack([images[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(3, 12)
                            for i in range(2) for j in range(2)], dim=1)
    assert torch.equal(model._split_feats(feats[:, None]), expected)
    assert torch.allclose(model.encode_video(feats), model.projector(expected))
    embeds, _ = model.embed(sequence(3), feats)
    assert embeds.shape == (len(sequence(3)) + 3 * 3, 32)


def test_feats_grid_checks():
    with pytest.raises(ValueError, match="needs vision.mode 'feats'"):
        tiny_config(feats_grid=2)
    with pytest.raises(ValueError, match="does not divide vision.feats_dim 48"):
        Ma2mbaConfig(vision=VisionConfig(mode="feats", feats_dim=48), feats_grid=3)
    with pytest.raises(ValueError, match="does not divide vision.feats_dim 40"):
        Ma2mbaConfig(vision=VisionConfig(mode="feats", feats_dim=40), feats_grid=2)


def test_config_checks():
    with pytest.raises(ValueError, match="model.stage"):
        tiny_config(stage="stage3")
    with pytest.raises(ValueError, match="stage1 trains the projector only"):
        tiny_config(stage="stage1", frozen=False)
    with pytest.raises(ValueError, match="option_score"):
        tiny_config(option_score="max")
    with pytest.raises(ValueError, match="warmup_ratio"):
        OptimConfig(warmup_ratio=1.5)
    with pytest.raises(ValueError, match="outside the LM's vocabulary"):
        VideoMa2mba(tiny_config(), SpecialTokens(frame=VOCAB, pad=0, eot=1))
