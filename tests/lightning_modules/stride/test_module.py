"""STRIDE end to end on a tiny world generated in tmp_path: a few training steps, online test, report;
plus the models' shape contracts and the Mamba-2 downstream (state summary per frame, O(1) state, answers)."""
import json

import lightning as L
import pytest
import torch

from lightning_modules.stride.config import StreamingConfig, StrideConfig
from lightning_modules.stride.model import MASK, ActivationDenoiser, PixelFeatures, gather_windows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from datamodules.synthetic.generate import main as generate

    out = tmp_path_factory.mktemp("world")
    generate(["--out", str(out), "--videos", "4", "--eval-videos", "2", "--minutes", "1", "1", "--seed", "3",
              "--shard-size", "2", "--workers", "1", "--feats"])
    return out


def test_smoke_fit_test_report(world, tmp_path):
    from experiments import config as config_lib
    from experiments.papers import stride as paper

    cfg = config_lib.load("stride/tiny", [f"data.root={world}", "trainer.max_steps=3", "data.batch_size=2",
                                          "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
                                          "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=1",
                                          "model.d_model=16", "model.n_heads=2", "model.n_layers=1"])
    module, data = paper.PAPER.build(cfg)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, data)
    trainer.test(module, data)
    assert "test/tvg_f1" in trainer.callback_metrics and "test/live_token.time_diff" in trainer.callback_metrics
    metrics, section = module.report(tmp_path)
    for key in ("tvg_f1", "time_diff", "threshold_head.tvg_f1", "threshold_head.time_diff", "live_token.tvg_f1",
                "live_token.time_diff", "tal_f1", "dvc_f1", "proactive_acc", "frame_f1"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    assert "| TVG F1" in section and "62.8" in section
    pngs = sorted(tmp_path.glob("stride_timeline_*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert f"]({pngs[0].name})" in section
    json.dumps(metrics)


def test_every_committed_yaml_loads():
    from experiments import config as config_lib

    names = [e for e in config_lib.list_experiments() if e.startswith("stride/")]
    assert "stride/tiny" in names
    for name in names:
        cfg = config_lib.load(name, [])
        assert cfg.model.window == cfg.data.window == cfg.model.streaming.window


def test_denoiser_shapes_unseen_rule_and_loss():
    cfg = StrideConfig(features="feats", feat_dim=5, window=6, d_model=16, n_heads=2, n_layers=1, vocab_size=20,
                       streaming=StreamingConfig(window=6))
    model = ActivationDenoiser(cfg)
    feats, seen = torch.randn(3, 6, 5), torch.ones(3, 6, dtype=torch.bool)
    seen[0, :2] = False
    tokens = torch.full((3, 6), MASK)
    tokens[0, :2] = 0
    logits = model(feats, seen, torch.randint(1, 20, (3, 4)), tokens)
    assert logits.shape == (3, 6, 2)
    loss = model.loss(logits, torch.randint(0, 2, (3, 6)), tokens == MASK)
    loss.backward()
    assert model.inputs.frame.net[0].weight.grad is not None
    with pytest.raises(ValueError, match="unseen slots must carry the inactive token"):
        model(feats, seen, torch.randint(1, 20, (3, 4)), torch.full((3, 6), MASK))
    with pytest.raises(ValueError, match="vocab_size"):
        model(feats, seen, torch.full((3, 4), 20), tokens)


def test_gather_windows_matches_a_loop():
    video = torch.randn(2, 7, 3)
    index, ends = torch.tensor([0, 1, 1]), torch.tensor([3, 7, 1])
    got = gather_windows(video, index, ends, window=4)
    for n, (b, e) in enumerate(zip(index.tolist(), ends.tolist())):
        for j, t in enumerate(range(e - 4, e)):
            want = video[b, t] if t >= 0 else torch.zeros(3)
            assert torch.equal(got[n, j], want)


def test_pixel_features_are_cell_means_and_a_colour_histogram():
    frames = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    frames[0, :4, :4, 0] = 255  # top-left quarter red
    feats = PixelFeatures(2, bins=2)(frames)
    assert feats.shape == (2, 12 + 8)
    layout, hist = feats[:, :12], feats[:, 12:]
    # layout (channel, row, col): red channel, cell (0, 0) is 1; all else -1
    assert layout[0, 0] == 1.0 and (layout[0, 1:] == -1.0).all() and (layout[1] == -1.0).all()
    # after 4x4 pooling: 4 pixels, one pure red (bin r=1,g=0,b=0 -> code 4), three black (code 0)
    assert torch.allclose(hist[0] ** 2, torch.tensor([0.75, 0, 0, 0, 0.25, 0, 0, 0]))
    assert torch.allclose(hist[1] ** 2, torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]))


def test_mamba2_downstream_summary_matches_a_full_forward_and_answers():
    from lightning_modules.common.mamba2 import Mamba2Config, Mamba2LM
    from lightning_modules.stride.downstream import LinearFrameEmbed, Mamba2Downstream, state_summary
    from lightning_modules.stride.streaming import StreamingRunner

    torch.manual_seed(0)
    lm_cfg = Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=16, chunk_size=16)
    lm = Mamba2LM(lm_cfg).eval()
    embed = LinearFrameEmbed(5, 32, frame_tokens=2)
    downstream = Mamba2Downstream(lm, embed, encode=lambda s: [1, 2], decode=lambda ids: ",".join(map(str, ids)),
                                  max_new_tokens=3)
    frames = torch.randn(9, 5)
    summaries = torch.stack([downstream(f) for f in frames])
    assert summaries.shape == (9, lm_cfg.d_inner)
    with torch.no_grad():  # the recurrent summary after frame t == the full forward's final state on frames [0, t]
        embeds = torch.cat([embed(f) for f in frames[:5]])[None]
        states = lm(inputs_embeds=embeds, return_states=True).states
    assert torch.allclose(summaries[4], state_summary(states)[0], atol=1e-4)
    before = [s.clone() for layer in downstream.states for s in layer]
    answer = downstream.respond("what now", None)
    assert len(answer.split(",")) == 3
    assert all(torch.equal(a, b) for a, b in zip(before, [s for layer in downstream.states for s in layer]))
    # plugged into the runner: the state stays the same size however long the stream
    cfg = StrideConfig(features="feats", feat_dim=lm_cfg.d_inner, window=4, d_model=16, n_heads=2, n_layers=1,
                       vocab_size=16, streaming=StreamingConfig(window=4, steps=2))
    downstream.reset()
    runner = StreamingRunner(ActivationDenoiser(cfg).eval(), cfg.streaming, "q", torch.tensor([1, 2]),
                             lm_cfg.d_inner, source=downstream, responder=downstream.respond)
    sizes = []
    for f in torch.randn(12, 5):
        runner.push(f)
        sizes.append(sum(s.numel() for layer in downstream.states for s in layer))
    assert len(set(sizes)) == 1 and downstream.frames == 12


def test_conv_frame_encoder_matches_a_per_frame_loop_and_validates():
    from lightning_modules.stride.model import ConvFrameEncoder

    cfg = StrideConfig(features="feats", feat_dim=3 * 8 * 8, feat_grid=8, frame_encoder="conv", encoder_channels=4,
                       encoder_dim=6, window=4, d_model=16, n_heads=2, vocab_size=20,
                       streaming=StreamingConfig(window=4))
    assert cfg.slot_dim == 6
    encoder = ConvFrameEncoder(cfg)
    feats = torch.rand(2, 5, 3 * 8 * 8, requires_grad=True)
    out = encoder(feats)
    assert out.shape == (2, 5, 6)
    # a whole stream at once equals each frame on its own (what the online runners rely on), and the
    # (g, g, 3) row-major layout of synthetic --feats is the image the convolutions see
    for b in range(2):
        for t in range(5):
            image = feats[b, t].detach().reshape(8, 8, 3).permute(2, 0, 1)[None] * 2 - 1
            maps = encoder.convs(image).flatten(2)
            want = encoder.out(torch.cat([maps.amax(-1), maps.mean(-1)], 1))[0]
            assert torch.allclose(out[b, t], want, atol=1e-5)
    out.sum().backward()
    assert feats.grad is not None and encoder.convs[0].weight.grad is not None
    with pytest.raises(ValueError, match="feat_grid"):
        StrideConfig(features="feats", feat_dim=100, frame_encoder="conv")
    with pytest.raises(ValueError, match="frame_encoder"):
        StrideConfig(frame_encoder="resnet")


def test_head_span_rules_default_to_strides_and_can_be_set_apart():
    base = dict(features="feats", feat_dim=5, window=8, d_model=16, n_heads=2, vocab_size=20)
    shared = StrideConfig(**base, streaming=StreamingConfig(window=8, close_run=2, min_span=3))
    assert (shared.head_streaming.close_run, shared.head_streaming.min_span) == (2, 3)
    apart = StrideConfig(**base, head_close_run=1, head_min_span=2,
                         streaming=StreamingConfig(window=8, close_run=2, min_span=3))
    assert (apart.head_streaming.close_run, apart.head_streaming.min_span) == (1, 2)
    assert (apart.streaming.close_run, apart.streaming.min_span) == (2, 3)  # STRIDE's own stay
    with pytest.raises(ValueError, match="head_min_span"):
        StrideConfig(**base, head_min_span=9, streaming=StreamingConfig(window=8))
    with pytest.raises(ValueError, match="close_run"):
        StreamingConfig(window=8, close_run=0)
    with pytest.raises(ValueError, match="active_threshold"):
        StreamingConfig(window=8, active_threshold=0.0)
