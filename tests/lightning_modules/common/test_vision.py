"""VisionEncoder against the raw HF towers it wraps: layer choice, CLS handling, pooling, chunking, freezing, modes."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules.common.vision import VisionConfig, VisionEncoder

FAMILIES = ("clip", "siglip")


def block_mean(patches: torch.Tensor, grid: int, pool: int) -> torch.Tensor:
    """Obviously-right pooling reference: mean over each pool x pool block of the (grid x grid) patches.

    patches (t, grid*grid, d) -> (t, (grid/pool)^2, d); needs grid % pool == 0.
    """
    t, _, d = patches.shape
    side = grid // pool
    blocks = patches.reshape(t, side, pool, side, pool, d)
    return blocks.mean(dim=(2, 4)).reshape(t, side * side, d)


def reference_tokens(encoder: VisionEncoder, frames: torch.Tensor, layer: int):
    """Run the HF tower by hand: normalise, hidden_states[layer], drop CLS (CLIP), pool; plus its pooled output."""
    mean = torch.tensor(encoder.pixel_mean.flatten().tolist()).view(3, 1, 1)
    std = torch.tensor(encoder.pixel_std.flatten().tolist()).view(3, 1, 1)
    with torch.no_grad():
        out = encoder.tower(pixel_values=(frames - mean) / std, output_hidden_states=True)
    patches = out.hidden_states[layer]
    if encoder.config.family == "clip":
        patches = patches[:, 1:]
    return block_mean(patches, encoder.grid, encoder.config.pool), out.pooler_output


@pytest.mark.parametrize("family", FAMILIES)
def test_penultimate_layer_and_pooling_match_raw_tower(family):
    encoder = VisionEncoder(VisionConfig(family=family, layers=3))
    frames = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tokens, global_tokens = encoder.encode(frames, return_global=True)
    want_tokens, want_global = reference_tokens(encoder, frames, layer=-2)
    assert tokens.shape == (5, 16, 64) == (5, encoder.tokens_per_frame, encoder.out_dim)
    torch.testing.assert_close(tokens, want_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(global_tokens, want_global, rtol=1e-5, atol=1e-5)
    # The last layer differs from the penultimate one, so the check above really pins the layer.
    last_tokens, _ = reference_tokens(encoder, frames, layer=-1)
    assert not torch.allclose(tokens, last_tokens, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_encoding_equals_one_pass(family):
    frames = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # 7 = 3 + 3 + 1 chunks
    chunked = VisionEncoder(VisionConfig(family=family, chunk_frames=3))
    whole = VisionEncoder(VisionConfig(family=family, chunk_frames=64))
    tokens, global_tokens = chunked.encode(frames, return_global=True)
    want_tokens, want_global = whole.encode(frames, return_global=True)
    torch.testing.assert_close(tokens, want_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(global_tokens, want_global, rtol=1e-5, atol=1e-5)


def test_batched_frames_fold_into_time():
    encoder = VisionEncoder(VisionConfig(chunk_frames=4))
    frames = torch.rand(2, 3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    tokens, global_tokens = encoder.encode(frames, return_global=True)
    assert tokens.shape == (2, 3, 16, 64) and global_tokens.shape == (2, 3, 64)
    torch.testing.assert_close(tokens[1], encoder.encode(frames[1]), rtol=1e-5, atol=1e-5)


def test_trainable_chunked_gradients_match_one_pass():
    """A trainable tower checkpoints each chunk; its gradients must equal those of a single pass."""
    frames = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    grads = []
    for chunk_frames in (2, 64):
        encoder = VisionEncoder(VisionConfig(frozen=False, chunk_frames=chunk_frames))
        tokens, global_tokens = encoder.encode(frames, return_global=True)
        (tokens.square().sum() + global_tokens.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, want in grads[1].items():
        # fp32 sums over 5 frames in another order; k_proj.bias has a true gradient of 0 (softmax shift), so a floor.
        scale = want.abs().max().item()
        torch.testing.assert_close(grads[0][name], want, rtol=1e-4, atol=1e-5 * scale + 1e-6, msg=name)


@pytest.mark.parametrize("pool_mode", ["bilinear", "avg"])
@pytest.mark.parametrize("image_size,pool,side", [(64, 2, 4), (64, 1, 8), (64, 4, 2), (56, 2, 4), (40, 2, 3)])
def test_pooling_shapes(image_size, pool, side, pool_mode):
    # grid = image_size / 8: even grids, and odd ones (7, 5) where the last row/column is pooled alone.
    encoder = VisionEncoder(VisionConfig(image_size=image_size, pool=pool, pool_mode=pool_mode))
    tokens = encoder.encode(torch.rand(2, 3, image_size, image_size))
    assert encoder.tokens_per_frame == side * side
    assert tokens.shape == (2, side * side, 64)


def test_bilinear_equals_block_mean_on_even_grid_and_avg_keeps_edges_on_odd():
    even = VisionEncoder(VisionConfig())
    patches = torch.randn(3, 64, 5)  # grid 8
    torch.testing.assert_close(even._pool(patches), block_mean(patches, 8, 2), rtol=1e-6, atol=1e-6)

    odd = VisionEncoder(VisionConfig(image_size=24, pool_mode="avg"))  # grid 3 -> 2 x 2
    patches = torch.arange(9.0).view(1, 9, 1)  # rows [0 1 2], [3 4 5], [6 7 8]
    want = torch.tensor([(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8.0]).view(1, 4, 1)
    torch.testing.assert_close(odd._pool(patches), want)


def test_frozen_tower_has_no_grads_and_stays_in_eval():
    encoder = VisionEncoder(VisionConfig())
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert encoder.training and not encoder.tower.training
    tokens = encoder.encode(torch.rand(2, 3, 64, 64))
    assert not tokens.requires_grad and tokens.grad_fn is None

    trainable = VisionEncoder(VisionConfig(frozen=False)).train()
    assert trainable.tower.training and all(p.requires_grad for p in trainable.parameters())


def test_seeded_tiny_weights_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = VisionEncoder(VisionConfig(seed=5))
    assert torch.equal(torch.rand(1), expected_next)
    b, c = VisionEncoder(VisionConfig(seed=5)), VisionEncoder(VisionConfig(seed=6))
    wa, wb, wc = (m.tower.embeddings.patch_embedding.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_frames_of_another_size_are_resized():
    encoder = VisionEncoder(VisionConfig())
    small = torch.rand(2, 3, 32, 48)
    tokens = encoder.encode(small)
    assert tokens.shape == (2, 16, 64)
    resized = torch.nn.functional.interpolate(small, size=(64, 64), mode="bilinear", antialias=True)
    torch.testing.assert_close(tokens, encoder.encode(resized.clamp(0, 1)), rtol=1e-4, atol=1e-4)


def test_feats_mode_makes_one_token_per_frame():
    encoder = VisionEncoder(VisionConfig(mode="feats", feats_dim=12))
    feats = torch.randn(9, 12)
    tokens, global_tokens = encoder.encode(feats, return_global=True)
    assert tokens.shape == (9, 1, 12) and torch.equal(tokens[:, 0], feats) and torch.equal(global_tokens, feats)
    assert encoder.encode(torch.randn(2, 9, 12)).shape == (2, 9, 1, 12)
    assert (encoder.out_dim, encoder.tokens_per_frame) == (12, 1)
    assert list(encoder.parameters()) == []
    with pytest.raises(ValueError, match=r"\(T, 12\)"):
        encoder.encode(torch.randn(9, 13))


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrained_mode_loads_a_local_dir(tmp_path, family):
    tiny = VisionEncoder(VisionConfig(family=family, seed=7))
    tiny.tower.save_pretrained(tmp_path)
    loaded = VisionEncoder(VisionConfig(mode="pretrained", family=family, path=str(tmp_path)))
    frames = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(loaded.encode(frames), tiny.encode(frames), rtol=1e-5, atol=1e-5)
    assert loaded.tokens_per_frame == 16 and all(not p.requires_grad for p in loaded.parameters())

    # The checkpoint's preprocessor statistics win over the family defaults.
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                   "image_std": [0.5, 0.5, 0.5]}))
    custom = VisionEncoder(VisionConfig(mode="pretrained", family=family, path=str(tmp_path)))
    assert custom.pixel_mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_pretrained_errors_name_the_path(tmp_path):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(FileNotFoundError, match="no-such-clip.*never downloads"):
        VisionEncoder(VisionConfig(mode="pretrained", path=str(missing)))
    VisionEncoder(VisionConfig(family="siglip")).tower.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'siglip_vision_model'.*family 'clip'"):
        VisionEncoder(VisionConfig(mode="pretrained", family="clip", path=str(tmp_path)))
    with pytest.raises(ValueError, match="vision.select_layer: -9"):
        VisionEncoder(VisionConfig(mode="pretrained", family="siglip", path=str(tmp_path), select_layer=-9))


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="video"), "vision.mode"),
    (dict(family="eva"), "vision.family"),
    (dict(pool_mode="max"), "vision.pool_mode"),
    (dict(pool=0), "vision.pool"),
    (dict(chunk_frames=0), "vision.chunk_frames"),
    (dict(mode="pretrained"), "vision.path"),
    (dict(mode="feats"), "vision.feats_dim"),
    (dict(image_size=60), "vision.image_size"),
    (dict(hidden_size=30), "vision.hidden_size"),
    (dict(select_layer=3), "vision.select_layer"),
])
def test_config_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisionConfig(**kwargs)


def test_config_is_an_omegaconf_schema():
    cfg = OmegaConf.merge(OmegaConf.structured(VisionConfig), {"family": "siglip", "pool": 1})
    assert OmegaConf.to_object(cfg) == VisionConfig(family="siglip", pool=1)


@pytest.mark.parametrize("frames,match", [
    (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "float"),
    (torch.full((2, 3, 64, 64), 2.0), r"\[0, 1\]"),
    (torch.rand(2, 4, 64, 64), "shape"),
    (torch.rand(0, 3, 64, 64), "zero frames"),
])
def test_bad_frames_are_rejected(frames, match):
    with pytest.raises(ValueError, match=match):
        VisionEncoder(VisionConfig()).encode(frames)


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrained_mode_reads_the_vision_half_of_a_full_two_tower_checkpoint(tmp_path, family):
    """Released CLIP/SigLIP dirs hold CLIPModel/SiglipModel (text + vision); we take the vision tower from them."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    config_cls, model_cls = (CLIPConfig, CLIPModel) if family == "clip" else (SiglipConfig, SiglipModel)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4)
    text = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    torch.manual_seed(0)
    full = model_cls(config_cls(text_config=text, vision_config=vision)).eval()
    full.save_pretrained(tmp_path)
    encoder = VisionEncoder(VisionConfig(mode="pretrained", family=family, path=str(tmp_path)))
    frames = torch.rand(2, 3, 32, 32)
    tokens, global_tokens = encoder.encode(frames, return_global=True)
    with torch.no_grad():
        mean, std = encoder.pixel_mean, encoder.pixel_std
        want = full.vision_model(pixel_values=(frames - mean) / std, output_hidden_states=True)
    patches = want.hidden_states[-2][:, 1:] if family == "clip" else want.hidden_states[-2]
    torch.testing.assert_close(tokens, block_mean(patches, 4, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(global_tokens, want.pooler_output, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_bf16_tower_on_cuda_encodes_host_frames_chunk_by_chunk():
    reference = VisionEncoder(VisionConfig(chunk_frames=4))
    encoder = VisionEncoder(VisionConfig(chunk_frames=4)).to("cuda", torch.bfloat16)
    frames = torch.rand(9, 3, 64, 64).pin_memory()  # stays on the host; chunks travel
    tokens, global_tokens = encoder.encode(frames, return_global=True)
    assert tokens.device.type == "cuda" and tokens.dtype == torch.bfloat16 and tokens.shape == (9, 16, 64)
    want_tokens, want_global = reference.encode(frames, return_global=True)
    torch.testing.assert_close(tokens.float().cpu(), want_tokens, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(global_tokens.float().cpu(), want_global, rtol=5e-2, atol=5e-2)
