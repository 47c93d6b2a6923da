"""SALOVA model parts against obviously-right references: connector padding, router order, losses, batching."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.salova.config import ConnectorConfig, RouterConfig, SalovaConfig
from lightning_modules.salova.model import (
    SalovaModel, SRRouter, STConnector, feats_to_patches, ground_truth_segments, router_bce, router_margin,
    select_top_k,
)

from .helpers import make_batch, make_tokens, tiny_config

ATOL = 1e-5


def _connector(max_frames=12, token_drop=0.0):
    torch.manual_seed(0)
    cfg = ConnectorConfig(width=32, num_latents=5, depth=2, heads=4, max_frames=max_frames, token_drop=token_drop)
    return STConnector(vision_dim=24, tokens_per_frame=4, out_dim=40, cfg=cfg).eval()


@pytest.mark.parametrize("frames", [1, 3, 7, 12])
def test_connector_gives_k_plus_one_tokens_whatever_the_length(frames):
    connector = _connector()
    out, cls = connector(torch.randn(3, frames, 4, 24), torch.randn(3, frames, 24), torch.ones(3, frames, dtype=torch.bool))
    assert out.shape == (3, 5 + 1, 40)
    assert cls.shape == (3, 32)


def test_connector_ignores_padded_frames():
    connector = _connector()
    lengths = torch.tensor([2, 5, 7])
    mask = torch.arange(7)[None] < lengths[:, None]
    tokens, global_tokens = torch.randn(3, 7, 4, 24), torch.randn(3, 7, 24)
    out, cls = connector(tokens, global_tokens, mask)
    # Garbage (even inf) in the padded frames changes nothing.
    tokens2 = torch.where(mask[..., None, None], tokens, torch.full_like(tokens, float("inf")))
    global2 = torch.where(mask[..., None], global_tokens, 1e4 * torch.randn_like(global_tokens))
    out2, cls2 = connector(tokens2, global2, mask)
    torch.testing.assert_close(out2, out, atol=ATOL, rtol=0)
    torch.testing.assert_close(cls2, cls, atol=ATOL, rtol=0)
    # And each segment equals itself run alone, unpadded.
    for i, n in enumerate(lengths.tolist()):
        alone, _ = connector(tokens[i:i + 1, :n], global_tokens[i:i + 1, :n], mask[i:i + 1, :n])
        torch.testing.assert_close(alone[0], out[i], atol=ATOL, rtol=0)


def test_connector_cls_starts_from_mean_global_token():
    connector = _connector()
    mask = torch.tensor([[True, True, False]])
    global_tokens = torch.randn(1, 3, 24)
    captured = {}

    def capture(module, args):
        captured["latents"] = args[0]

    hook = connector.layers[0].register_forward_pre_hook(capture)
    connector(torch.randn(1, 3, 4, 24), global_tokens, mask)
    hook.remove()
    expected = connector.cls_in(global_tokens[:, :2].mean(1))
    torch.testing.assert_close(captured["latents"][:, 0], expected, atol=ATOL, rtol=0)


def test_connector_token_drop_only_in_training_and_keeps_a_token():
    connector = _connector(token_drop=0.9)
    mask = torch.ones(4, 3, dtype=torch.bool)
    tokens, global_tokens = torch.randn(4, 3, 4, 24), torch.randn(4, 3, 24)
    eval_out, _ = connector(tokens, global_tokens, mask)
    torch.testing.assert_close(connector(tokens, global_tokens, mask)[0], eval_out)
    connector.train()
    torch.manual_seed(1)
    train_out, _ = connector(tokens, global_tokens, mask)
    assert not torch.allclose(train_out, eval_out)
    assert torch.isfinite(train_out).all()
    kept = connector._drop_tokens(torch.tensor([[True, False, False, False]] * 64))
    assert kept.any(1).all() and not kept[:, 1:].any()


def test_connector_rejects_too_many_frames():
    with pytest.raises(ValueError, match="max_frames"):
        _connector(max_frames=4)(torch.randn(1, 5, 4, 24), torch.randn(1, 5, 24), torch.ones(1, 5, dtype=torch.bool))


def test_select_top_k_is_in_temporal_order_and_respects_padding():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.5], [0.7, 0.2, 0.9, 5.0, 9.0]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    index, valid = select_top_k(scores, mask, 3)
    assert index.tolist() == [[1, 3, 4], [0, 1, 2]]
    assert valid.all()
    index, valid = select_top_k(scores, mask, 5)
    assert index[1][valid[1]].tolist() == [0, 1, 2] and valid[1].tolist() == [True, True, True, False, False]
    # Reference: sort the real segments by score, keep k, sort by time.
    torch.manual_seed(0)
    scores, mask = torch.randn(20, 9), torch.rand(20, 9) > 0.3
    mask[:, 0] = True
    index, valid = select_top_k(scores, mask, 4)
    for q in range(20):
        real = [j for j in range(9) if mask[q, j]]
        best = sorted(sorted(real, key=lambda j: -scores[q, j].item())[:4])
        assert index[q][valid[q]].tolist() == best


def test_ground_truth_segments_are_the_first_k_positives_in_order():
    labels = torch.tensor([[0, 1, 0, 1, 1.0], [1, 0, 0, 0, 0]])
    mask = torch.ones(2, 5, dtype=torch.bool)
    index, valid = ground_truth_segments(labels, mask, 2)
    assert index[0][valid[0]].tolist() == [1, 3] and index[1][valid[1]].tolist() == [0]
    # With router scores the free slots go to the best-scoring irrelevant segments, however high positives' are not.
    scores = torch.tensor([[50.0, -9.0, 3.0, 0.5, -20.0], [-1.0, 4.0, 2.0, 8.0, 0.0]])
    index, valid = ground_truth_segments(labels, mask, 3, scores)
    assert index[0][valid[0]].tolist() == [1, 3, 4] and index[1][valid[1]].tolist() == [0, 1, 3]
    index, valid = ground_truth_segments(labels, mask, 4, scores)
    assert index[0][valid[0]].tolist() == [0, 1, 3, 4]
    mask[1, 3] = False  # a padded segment is never chosen
    index, valid = ground_truth_segments(labels, mask, 3, scores)
    assert index[1][valid[1]].tolist() == [0, 1, 2]


def test_teacher_forcing_fills_questions_to_k_and_shows_captions_their_own(tmp_path):
    tokens = make_tokens(tmp_path)
    torch.manual_seed(0)
    model = SalovaModel(tiny_config(), tokens.vocab_size).eval()
    batch = make_batch(tokens, videos=3, seed=5, queries="both")
    assert batch["query_is_caption"].any() and not batch["query_is_caption"].all()
    with torch.no_grad():
        _, segment_cls = model.encode_segments(batch)
        router = model.route(batch, segment_cls)
        chosen, valid = model.choose(batch, router, 3, teacher_forcing=True)
    for q, caption in enumerate(batch["query_is_caption"].tolist()):
        positives = [j for j, v in enumerate(batch["labels"][q].tolist()) if v > 0.5]
        picked = chosen[q][valid[q]].tolist()
        if caption:
            assert picked == positives[:3]
        else:
            real = int(router.mask[q].sum())
            assert len(picked) == min(3, real) and set(positives[:3]) <= set(picked) and picked == sorted(picked)
            others = [j for j in range(real) if j not in positives]
            best_others = sorted(others, key=lambda j: -router.scores[q, j].item())[:len(picked) - len(positives[:3])]
            assert set(picked) - set(positives) == set(best_others)
    model.cfg.teacher_fill = False  # every query reads its relevant segments alone
    with torch.no_grad():
        chosen, valid = model.choose(batch, router, 3, teacher_forcing=True)
    for q in range(len(chosen)):
        positives = [j for j, v in enumerate(batch["labels"][q].tolist()) if v > 0.5]
        assert chosen[q][valid[q]].tolist() == positives[:3]


def test_router_scores_are_scaled_cosines_in_segment_order():
    torch.manual_seed(0)
    router = SRRouter(segment_dim=16, text_dim=12, cfg=RouterConfig(width=16, depth=2, heads=2, max_segments=8)).eval()
    seg, text = torch.randn(2, 6, 16), torch.randn(2, 5, 12)
    seg_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    text_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    out = router(seg, seg_mask, text, text_mask, torch.randn(2, 12))
    assert out.scores.shape == (2, 6)
    assert (out.cos.abs() <= 1 + 1e-6).all()
    torch.testing.assert_close(out.scores, router.logit_scale.exp() * out.cos)
    torch.testing.assert_close(out.logits, out.scores + router.logit_bias)
    assert (out.scores[1, 4:] == 0).all()
    # Padded text tokens and padded segments do not matter.
    text_cls = torch.randn(2, 12)
    reference = router(seg, seg_mask, text, text_mask, text_cls)
    text2, seg2 = text.clone(), seg.clone()
    text2[1, 3:] = 1e3
    seg2[1, 4:] = -1e3
    changed = router(seg2, seg_mask, text2, text_mask, text_cls)
    torch.testing.assert_close(changed.scores[:, :4], reference.scores[:, :4], atol=ATOL, rtol=0)


def test_router_bce_matches_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -7.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    sig = lambda x: 1 / (1 + math.exp(-x))
    terms = [-math.log(sig(2.0)), -math.log(1 - sig(-1.0)), -math.log(sig(0.5)), -math.log(1 - sig(0.0)),
             -math.log(sig(3.0))]
    assert router_bce(logits, labels, mask).item() == pytest.approx(sum(terms) / 5, rel=1e-6)


def test_router_margin_matches_hand_computation():
    cos = torch.tensor([[0.9, 0.8, 0.1, 0.85], [0.2, 0.5, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    # Pairs (pos, neg): q0: (0,1) (0,2) (3,1) (3,2); q1: (0,1).
    gaps = [0.2 - (0.9 - 0.8), 0.2 - (0.9 - 0.1), 0.2 - (0.85 - 0.8), 0.2 - (0.85 - 0.1), 0.2 - (0.2 - 0.5)]
    expected = sum(max(0.0, g) for g in gaps) / 5
    assert router_margin(cos, labels, mask, 0.2).item() == pytest.approx(expected, rel=1e-6)
    # Same as torch's MarginRankingLoss over the listed pairs.
    x1 = torch.tensor([0.9, 0.9, 0.85, 0.85, 0.2])
    x2 = torch.tensor([0.8, 0.1, 0.8, 0.1, 0.5])
    reference = F.margin_ranking_loss(x1, x2, torch.ones(5), margin=0.2)
    assert router_margin(cos, labels, mask, 0.2).item() == pytest.approx(reference.item(), rel=1e-6)
    assert router_margin(cos, torch.zeros_like(labels), mask, 0.2).item() == 0.0


def test_batch_of_eight_equals_eight_batches_of_one(tmp_path):
    tokens = make_tokens(tmp_path)
    torch.manual_seed(0)
    model = SalovaModel(tiny_config(), tokens.vocab_size).eval()
    items = make_batch(tokens, videos=8, seed=3, items_only=True)
    from datamodules.salova import collate_items

    batch = collate_items(items)
    with torch.no_grad():
        together = model(batch)
        segment_tokens, _ = model.encode_segments(batch)
        options = model.option_scores(batch, segment_tokens, together.chosen, together.chosen_valid, True)
        q = 0
        for item in items:
            single = collate_items([item])
            alone = model(single)
            n = single["labels"].shape[0]
            s = int(single["video_segment_mask"].sum())
            torch.testing.assert_close(alone.router.scores, together.router.scores[q:q + n, :s], atol=1e-4, rtol=0)
            torch.testing.assert_close(alone.lm_nll, together.lm_nll[q:q + n], atol=1e-4, rtol=0)
            assert alone.chosen[alone.chosen_valid].tolist() == together.chosen[q:q + n][
                together.chosen_valid[q:q + n]].tolist()
            seg_alone, _ = model.encode_segments(single)
            opt_alone = model.option_scores(single, seg_alone, alone.chosen, alone.chosen_valid, True)
            o = opt_alone.shape[1]
            torch.testing.assert_close(opt_alone, options[q:q + n, :o], atol=1e-4, rtol=0)
            q += n
        assert q == batch["labels"].shape[0]


def test_focusfast_prefix_layout(tmp_path):
    tokens = make_tokens(tmp_path)
    model = SalovaModel(tiny_config(), tokens.vocab_size).eval()
    batch = make_batch(tokens, videos=2, seed=1)
    with torch.no_grad():
        segment_tokens, _ = model.encode_segments(batch)
        out = model(batch)
        k = model.cfg.connector.num_latents
        on = model.video_prefix(batch, segment_tokens, out.chosen, out.chosen_valid, True)
        off = model.video_prefix(batch, segment_tokens, out.chosen, out.chosen_valid, False)
    for q, b in enumerate(batch["query_video"].tolist()):
        s = int(batch["video_segment_mask"][b].sum())
        chosen = int(out.chosen_valid[q].sum())
        assert chosen == min(model.cfg.router.top_k, s)
        assert on[q].shape[0] == 1 + s + chosen * (1 + k)
        assert off[q].shape[0] == chosen * (1 + k)
        ids = batch["video_segments"][b][batch["video_segment_mask"][b]]
        torch.testing.assert_close(on[q][1:1 + s], segment_tokens[ids, 0])


def test_lm_loss_trains_only_on_answer_tokens(tmp_path):
    tokens = make_tokens(tmp_path)
    model = SalovaModel(tiny_config(), tokens.vocab_size).eval()
    batch = make_batch(tokens, videos=2, seed=2)
    with torch.no_grad():
        out = model(batch)
        segment_tokens, _ = model.encode_segments(batch)
        prefixes = model.video_prefix(batch, segment_tokens, out.chosen, out.chosen_valid, True)
        inputs, attention, labels = model.lm_sequences(prefixes, batch["prompt_ids"], batch["prompt_mask"],
                                                       batch["answer_ids"], batch["answer_mask"])
        # Reference: one row at a time, no padding, loss over the answer span only.
        for q in range(len(prefixes)):
            answer = batch["answer_ids"][q][batch["answer_mask"][q]]
            prompt = batch["prompt_ids"][q][batch["prompt_mask"][q]]
            embed = model.llm.get_input_embeddings()
            row = torch.cat([prefixes[q], embed(prompt), embed(answer)])[None]
            logits = model.llm(inputs_embeds=row).logits[0]
            start = prefixes[q].shape[0] + prompt.shape[0]
            nll = F.cross_entropy(logits[start - 1:start - 1 + answer.shape[0]], answer)
            assert out.lm_nll[q].item() == pytest.approx(nll.item(), abs=1e-4)
            assert (labels[q] != -100).sum() == answer.shape[0]


@pytest.mark.parametrize("side, grid, lead", [(16, 4, (5,)), (8, 2, (2, 3)), (6, 3, ()), (4, 1, (1,))])
def test_feats_to_patches_matches_a_loop_over_patches(side, grid, lead):
    image = torch.randn(*lead, side, side, 3)  # the (G, G, 3) row-major layout of the world's feats.npy
    patches = feats_to_patches(image.flatten(-3), grid)
    cell = side // grid
    reference = torch.stack([image[..., gy * cell:(gy + 1) * cell, gx * cell:(gx + 1) * cell, :].flatten(-3)
                             for gy in range(grid) for gx in range(grid)], dim=-2)
    assert patches.shape == (*lead, grid * grid, cell * cell * 3)
    assert torch.equal(patches, reference)


def test_feats_to_patches_rejects_features_that_are_not_a_grid():
    with pytest.raises(ValueError, match="feats_grid"):
        feats_to_patches(torch.randn(2, 100), 2)  # not (G, G, 3)
    with pytest.raises(ValueError, match="feats_grid"):
        feats_to_patches(torch.randn(2, 6 * 6 * 3), 4)  # 6 cells do not split into 4 patches


def test_feats_patch_tokens_reach_the_connector_and_train(tmp_path):
    from lightning_modules.common.vision import VisionConfig

    tokens = make_tokens(tmp_path)
    torch.manual_seed(0)
    cfg = tiny_config(vision=VisionConfig(mode="feats", feats_dim=8 * 8 * 3),
                      connector=ConnectorConfig(width=32, num_latents=4, depth=2, heads=2, max_frames=8,
                                                feats_grid=2))
    model = SalovaModel(cfg, tokens.vocab_size)
    assert model.connector.media_in.in_features == 4 * 4 * 3 and model.connector.spatial.shape[0] == 4
    assert model.connector.cls_in.in_features == 8 * 8 * 3  # the CLS still starts from the whole frame
    batch = make_batch(tokens, videos=2, seed=4)
    batch["frames"] = torch.rand(batch["frames"].shape[0], 8 * 8 * 3)
    out = model(batch)
    bce, margin = model.router_loss(batch, out.router)
    (out.lm_loss + bce + margin).backward()
    assert torch.isfinite(out.lm_loss)
    assert model.connector.media_in.weight.grad.abs().sum() > 0
    # Moving one patch's pixels changes the tokens of that patch only.
    feats = batch["frames"]
    moved = feats.view(-1, 8, 8, 3).clone()
    moved[:, 4:, :4] += 1.0  # bottom-left patch
    patches, patches_moved = feats_to_patches(feats, 2), feats_to_patches(moved.flatten(1), 2)
    changed = (patches != patches_moved).any(-1).any(0)
    assert changed.tolist() == [False, False, True, False]


def test_router_only_forward_skips_the_llm_and_trains_the_router(tmp_path):
    tokens = make_tokens(tmp_path)
    torch.manual_seed(0)
    model = SalovaModel(tiny_config(), tokens.vocab_size)
    batch = make_batch(tokens, videos=3, seed=5)

    def no_llm(*args, **kwargs):
        raise AssertionError("the router pre-stage must not run the LLM")

    model.llm.forward = no_llm
    model.llm.base_model.forward = no_llm
    out = model(batch, use_llm=False)
    with torch.no_grad():  # the same routing as the full forward: scores and top-k do not depend on the LLM
        reference = select_top_k(out.router.scores, out.router.mask, model.cfg.router.top_k)
    assert torch.equal(out.chosen, reference[0]) and torch.equal(out.chosen_valid, reference[1])
    assert out.lm_loss.item() == 0.0 and torch.isnan(out.lm_nll).all()
    bce, margin = model.router_loss(batch, out.router)
    (out.lm_loss + bce + margin).backward()
    assert model.router.segment_in.weight.grad.abs().sum() > 0
    assert model.connector.cls_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm.parameters())


def test_router_only_config_refuses_to_train_the_llm():
    with pytest.raises(ValueError, match="model.router_only"):
        SalovaConfig(router_only=True, trainable=["connector", "router", "llm"])
    SalovaConfig(router_only=True, trainable=["connector", "router", "text"])


def test_relevance_weights_scale_only_the_chosen_segments_tokens(tmp_path):
    tokens = make_tokens(tmp_path)
    torch.manual_seed(0)
    model = SalovaModel(tiny_config(), tokens.vocab_size).eval()
    batch = make_batch(tokens, videos=2, seed=7)
    with torch.no_grad():
        segment_tokens, segment_cls = model.encode_segments(batch)
        router = model.route(batch, segment_cls)
        assert model.relevance(router) is None  # the paper's unweighted FocusFast by default
        chosen, valid = select_top_k(router.scores, router.mask, 3)
        plain = model.video_prefix(batch, segment_tokens, chosen, valid, True)
        ones = model.video_prefix(batch, segment_tokens, chosen, valid, True, torch.ones_like(router.scores))
        relevance = torch.rand(router.scores.shape)
        weighted = model.video_prefix(batch, segment_tokens, chosen, valid, True, relevance)
        k = model.cfg.connector.num_latents
        for q, b in enumerate(batch["query_video"].tolist()):
            torch.testing.assert_close(ones[q], plain[q])
            s = int(batch["video_segment_mask"][b].sum())
            start = 1 + s  # [<seg>, s global tokens] are not weighted
            torch.testing.assert_close(weighted[q][:start], plain[q][:start])
            for slot, j in enumerate(chosen[q][valid[q]].tolist()):
                first = start + slot * (1 + k)
                torch.testing.assert_close(weighted[q][first], plain[q][first])  # the <seg> marker
                torch.testing.assert_close(weighted[q][first + 1:first + 1 + k], plain[q][first + 1:first + 1 + k]
                                           * relevance[q, j])
        model.cfg.weight_by_relevance = True
        torch.testing.assert_close(model.relevance(router), torch.sigmoid(router.scores + model.router.logit_bias))
        out = model(batch)
        expected = model.video_prefix(batch, segment_tokens, out.chosen, out.chosen_valid, True,
                                      model.relevance(router))
        inputs, attention, labels = model.lm_sequences(expected, batch["prompt_ids"], batch["prompt_mask"],
                                                       batch["answer_ids"], batch["answer_mask"])
        nll, count = model.answer_nll(inputs, attention, labels)
        torch.testing.assert_close(out.lm_nll, nll / count)
