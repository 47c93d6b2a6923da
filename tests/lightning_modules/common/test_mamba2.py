"""Mamba2LM: parity with transformers' Mamba2ForCausalLM (whole and in pieces), both checkpoint
layouts, generation through the O(1) step, and gradient checkpointing modes against no
checkpointing."""
import importlib
import inspect
import json
import sys

import pytest
import torch

from lightning_modules.common.mamba2 import Mamba2Config, Mamba2LM

TINY = dict(d_model=32, n_layer=3, vocab_size=50, d_state=8, headdim=16, ngroups=2, chunk_size=8,
            ssd_backend="torch")
HF_KERNEL_FUNCS = ("causal_conv1d_fn", "causal_conv1d_update", "mamba2_split_conv1d_scan_combined",
                   "mamba2_selective_state_update", "mamba2_chunk_scan")


def _uses_fused_kernels(module) -> bool:
    """transformers picks each kernel when its modeling module is imported: mamba_ssm /
    causal_conv1d if they import, else its pure-torch path (the closure flag below)."""
    return any(inspect.getclosurevars(getattr(module, name)).nonlocals["is_new_implementation"]
               for name in HF_KERNEL_FUNCS)


@pytest.fixture(scope="module")
def hf_mamba2():
    """transformers' Mamba2 module on its pure-torch path: mamba_ssm and causal_conv1d are
    made unimportable (sys.modules[name] = None) while it is (re)imported, and we check."""
    hidden = {name: sys.modules.get(name) for name in ("mamba_ssm", "causal_conv1d", "selective_scan_cuda")}
    for name in hidden:
        sys.modules[name] = None
    try:
        module = importlib.import_module("transformers.models.mamba2.modeling_mamba2")
        if _uses_fused_kernels(module):
            module = importlib.reload(module)
    finally:
        for name, mod in hidden.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    assert not _uses_fused_kernels(module), "transformers' Mamba2 is on a fused (mamba_ssm) path"
    return module


def _hf_model(hf_mamba2, tie=False):
    from transformers import Mamba2Config as HFConfig

    torch.manual_seed(0)
    cfg = HFConfig(num_heads=4, head_dim=16, vocab_size=56, hidden_size=32, state_size=8, num_hidden_layers=3,
                   n_groups=2, chunk_size=8, expand=2, tie_word_embeddings=tie, use_conv_bias=True)
    model = hf_mamba2.Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():  # move the weights off their init values so every one of them matters
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", "conv1d.bias", ".D")):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_transformers_whole_and_in_pieces(hf_mamba2, tmp_path, tie):
    hf = _hf_model(hf_mamba2, tie)
    hf.save_pretrained(tmp_path)
    ours = Mamba2LM.from_pretrained(tmp_path, ssd_backend="torch").eval()
    assert ours.cfg.tie_embeddings == tie
    ids = torch.randint(0, 56, (2, 29))  # 29: not a multiple of the chunk (8)
    with torch.no_grad():
        ref = hf(ids).logits
        assert (ours(ids).logits - ref).abs().max() <= 1e-4

        # transformers carries the state across segments through `cache=`; ours through `states=`.
        cut = [0, 13, 14, 29]  # a piece of one token in the middle
        hf_cache, ours_states, hf_logits, ours_logits = None, None, [], []
        for a, b in zip(cut, cut[1:]):
            out = hf(ids[:, a:b], cache=hf_cache, use_cache=True)
            hf_cache = out.cache
            hf_logits.append(out.logits)
            mine = ours(ids[:, a:b], states=ours_states, return_states=True)
            ours_states = mine.states
            ours_logits.append(mine.logits)
        hf_pieces, ours_pieces = torch.cat(hf_logits, 1), torch.cat(ours_logits, 1)
    assert (ours_pieces - hf_pieces).abs().max() <= 1e-4
    assert (ours_pieces - ref).abs().max() <= 1e-4


def test_loss_matches_transformers(hf_mamba2, tmp_path):
    hf = _hf_model(hf_mamba2)
    hf.save_pretrained(tmp_path)
    ours = Mamba2LM.from_pretrained(tmp_path, ssd_backend="torch").eval()
    ids = torch.randint(0, 56, (2, 20))
    labels = ids.clone()
    labels[0, :7] = -100
    with torch.no_grad():
        ref = hf(ids, labels=labels).loss
        assert torch.allclose(ours(ids, labels=labels).loss, ref, atol=1e-5)
        assert torch.allclose(ours(ids, labels=labels, return_logits=False).loss, ref, atol=1e-5)


def _write_mamba_ssm_dir(model: Mamba2LM, path, cfg: Mamba2Config):
    """A dir as mamba_ssm's MambaLMHeadModel.save_pretrained writes it."""
    config = {"d_model": cfg.d_model, "d_intermediate": 0, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
              "ssm_cfg": {"layer": "Mamba2", "d_state": cfg.d_state, "headdim": cfg.headdim, "ngroups": cfg.ngroups,
                          "chunk_size": cfg.chunk_size, "d_conv": cfg.d_conv, "expand": cfg.expand},
              "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
              "tie_embeddings": cfg.tie_embeddings}
    (path / "config.json").write_text(json.dumps(config))
    # mamba_ssm's names: backbone.embedding, backbone.layers.i.{norm,mixer.*}, backbone.norm_f, lm_head.
    keys = {"backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight"}
    for i in range(cfg.n_layer):
        keys |= {f"backbone.layers.{i}.norm.weight"} | {f"backbone.layers.{i}.mixer.{n}" for n in (
            "in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
            "out_proj.weight")}
    state_dict = model.state_dict()
    assert set(state_dict) == keys
    torch.save(state_dict, path / "pytorch_model.bin")


def test_from_pretrained_mamba_ssm_layout_round_trip(tmp_path):
    cfg = Mamba2Config(**TINY)  # vocab 50 padded to 56, as mamba_ssm pads
    torch.manual_seed(0)
    model = Mamba2LM(cfg).eval()
    assert model.lm_head.weight.shape[0] == 56
    _write_mamba_ssm_dir(model, tmp_path, cfg)
    loaded = Mamba2LM.from_pretrained(tmp_path, ssd_backend="torch").eval()
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    ids = torch.randint(0, 50, (1, 19))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_from_pretrained_lists_missing_and_unexpected_keys(tmp_path):
    cfg = Mamba2Config(**TINY)
    model = Mamba2LM(cfg)
    _write_mamba_ssm_dir(model, tmp_path, cfg)
    state_dict = torch.load(tmp_path / "pytorch_model.bin")
    state_dict.pop("backbone.layers.1.mixer.A_log")
    state_dict["backbone.layers.1.mixer.extra"] = torch.zeros(1)
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing keys \['backbone.layers.1.mixer.A_log'\].*"
                                         r"unexpected keys \['backbone.layers.1.mixer.extra'\]"):
        Mamba2LM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="neither a transformers Mamba2 config"):
        Mamba2LM.from_pretrained(tmp_path)


def test_pieces_equal_whole_and_embeds_equal_ids():
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(**TINY)).eval()
    ids = torch.randint(0, 50, (2, 27))
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :10], return_states=True)
        second = model(inputs_embeds=model.backbone.embedding(ids[:, 10:]), states=first.states)
    assert torch.allclose(torch.cat([first.logits, second.logits], 1), whole, atol=1e-5)


def test_greedy_generation_by_steps_equals_argmax_of_full_forward():
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(**TINY)).eval()
    prompt = torch.randint(0, 50, (2, 11))
    new = model.generate(prompt, max_new_tokens=9)
    assert new.shape == (2, 9)
    with torch.no_grad():
        logits = model(torch.cat([prompt, new], 1)).logits[:, :, :50]
    assert torch.equal(logits[:, prompt.shape[1] - 1:-1].argmax(-1), new)


def test_step_equals_forward_token_by_token():
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(**TINY)).eval()
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        whole = model(ids, return_states=True)
        states, logits = None, []
        for t in range(ids.shape[1]):
            step_logits, states = model.step(ids[:, t], states=states)
            logits.append(step_logits)
    assert torch.allclose(torch.stack(logits, 1), whole.logits, atol=1e-5)
    for (conv, ssm), (conv_ref, ssm_ref) in zip(states, whole.states):
        assert torch.allclose(conv, conv_ref, atol=1e-6) and torch.allclose(ssm, ssm_ref, atol=1e-5)


def _grads(cfg, state_dict, x, labels):
    model = Mamba2LM(cfg)
    model.load_state_dict(state_dict)
    x = x.clone().requires_grad_()
    loss = model(inputs_embeds=x, labels=labels).loss
    loss.backward()
    return loss.detach(), [x.grad] + [p.grad for p in model.parameters()]


GC_BASE = dict(TINY, d_model=16, n_layer=5)


@pytest.fixture(scope="module")
def unchecked_gradients():
    """Weights, inputs and gradients without checkpointing, shared by the mode tests."""
    torch.manual_seed(0)
    weights = Mamba2LM(Mamba2Config(**GC_BASE)).state_dict()
    x, labels = torch.randn(2, 27, 16), torch.randint(0, 50, (2, 27))
    return weights, x, labels, _grads(Mamba2Config(**GC_BASE), weights, x, labels)


@pytest.mark.parametrize("mode, l, s", [("layer", "auto", "auto"), ("sqrt", "auto", "auto"),
                                        ("ma_gc", 2, 16), ("ma_gc", 5, 8), ("ma_gc", "auto", "auto")])
def test_gradient_checkpointing_gives_the_same_gradients(unchecked_gradients, mode, l, s):
    # 5 layers in groups of 2 and 27 tokens in blocks of 16 or 8: neither divides.
    weights, x, labels, (loss_ref, grads_ref) = unchecked_gradients
    cfg = Mamba2Config(**GC_BASE, gradient_checkpointing=mode, ma_gc_l=l, ma_gc_s=s)
    loss, grads = _grads(cfg, weights, x, labels)
    assert torch.equal(loss, loss_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def _triton_vs_torch_scan(base, length, device):
    """Loss and gradients of the LM on the Triton scan against the torch scan, same weights and inputs."""
    torch.manual_seed(0)
    weights = Mamba2LM(Mamba2Config(**base, ssd_backend="torch")).state_dict()
    x = torch.randn(2, length, base["d_model"], device=device)
    labels = torch.randint(0, base["vocab_size"], (2, length), device=device)
    results = {}
    for backend in ("torch", "triton"):
        with torch.device(device):
            results[backend] = _grads(Mamba2Config(**base, ssd_backend=backend), weights, x, labels)
    (loss, grads), (loss_ref, grads_ref) = results["triton"], results["torch"]
    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["none", "ma_gc"])
def test_triton_scan_trains_like_the_torch_scan(mode):
    """The LM on the Triton scan (the interpreter, tiny sizes) has the torch scan's loss and gradients, also when
    MA-GC recomputes it from states cut every 16 of 50 tokens."""
    _triton_vs_torch_scan(dict(d_model=32, n_layer=3, vocab_size=64, d_state=16, headdim=16, ngroups=1,
                               chunk_size=16, gradient_checkpointing=mode, ma_gc_l=2, ma_gc_s=16), 50, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["none", "ma_gc"])
def test_triton_scan_trains_like_the_torch_scan_on_cuda(mode):
    """The same at real head sizes (p 64, n 128, chunk 256) on CUDA, MA-GC cutting states every 256 of 1000."""
    _triton_vs_torch_scan(dict(d_model=256, n_layer=3, vocab_size=256, d_state=128, headdim=64, ngroups=1,
                               chunk_size=256, gradient_checkpointing=mode, ma_gc_l=2, ma_gc_s=256), 1000, "cuda")


def test_ma_gc_grid_and_state_gradients_across_pieces():
    """With states fed in (a previous piece, differentiable), MA-GC passes their gradients back."""
    base = dict(TINY, d_model=16, n_layer=4)
    torch.manual_seed(0)
    ref = Mamba2LM(Mamba2Config(**base))
    gc = Mamba2LM(Mamba2Config(**base, gradient_checkpointing="ma_gc", ma_gc_l=3, ma_gc_s=8))
    gc.load_state_dict(ref.state_dict())
    assert gc.checkpoint_grid(21) == (3, 8)
    ids = torch.randint(0, 50, (1, 26))
    results = []
    for model in (ref, gc):
        first = model(ids[:, :9], return_states=True)
        loss = model(ids[:, 9:], labels=ids[:, 9:], states=first.states).loss + first.logits.square().mean()
        loss.backward()
        results.append([p.grad for p in model.parameters()])
    for g, g_ref in zip(results[1], results[0]):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_transformers_init_matches_the_peers_initialisation(hf_mamba2):
    """init="transformers" starts where transformers' Mamba2ForCausalLM starts (same A and dt range; in_proj and
    embedding scales; conv bias; out_proj scale), where the default follows mamba_ssm."""
    from transformers import Mamba2Config as HFConfig

    torch.manual_seed(0)
    peer = hf_mamba2.Mamba2ForCausalLM(HFConfig(num_heads=8, head_dim=16, vocab_size=512, hidden_size=64, state_size=8,
                                                num_hidden_layers=4, n_groups=1, expand=2, use_conv_bias=True))
    ours = Mamba2LM(Mamba2Config(d_model=64, n_layer=4, vocab_size=512, d_state=8, headdim=16, init="transformers"))
    default = Mamba2LM(Mamba2Config(d_model=64, n_layer=4, vocab_size=512, d_state=8, headdim=16))
    theirs = {n: p for n, p in peer.named_parameters()}
    for ours_name, peer_name in [("backbone.embedding.weight", "backbone.embeddings.weight"),
                                 ("backbone.layers.0.mixer.in_proj.weight", "backbone.layers.0.mixer.in_proj.weight"),
                                 ("backbone.layers.0.mixer.out_proj.weight", "backbone.layers.0.mixer.out_proj.weight")]:
        ours_std, peer_std = dict(ours.named_parameters())[ours_name].std().item(), theirs[peer_name].std().item()
        assert ours_std == pytest.approx(peer_std, rel=0.1), ours_name
    mixer, peer_mixer = ours.backbone.layers[0].mixer, peer.backbone.layers[0].mixer
    torch.testing.assert_close(mixer.A_log, peer_mixer.A_log)
    assert mixer.conv1d.bias.abs().max() == peer_mixer.conv1d.bias.abs().max() == 0
    # The default is mamba_ssm's: smaller embeddings, out_proj scaled down by sqrt(n_layer).
    assert default.backbone.embedding.weight.std() < 0.03
    assert default.backbone.layers[0].mixer.out_proj.weight.std() < 0.6 * mixer.out_proj.weight.std()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="Mamba2Config.headdim"):
        Mamba2Config(d_model=32, headdim=24)
    with pytest.raises(ValueError, match="Mamba2Config.gradient_checkpointing"):
        Mamba2Config(gradient_checkpointing="full")
    with pytest.raises(ValueError, match="Mamba2Config.ma_gc_s = 100"):
        Mamba2Config(chunk_size=64, ma_gc_s=100)
    with pytest.raises(ValueError, match="Mamba2Config.ma_gc_l = 9"):
        Mamba2Config(n_layer=4, ma_gc_l=9)
    with pytest.raises(ValueError, match="Mamba2Config.init = 'xavier'"):
        Mamba2Config(init="xavier")


def test_grid_costs_are_the_papers_for_2p7b():
    cfg = Mamba2Config(d_model=2560, n_layer=64, vocab_size=50277, d_state=128, headdim=64)
    costs = cfg.grid_costs()
    assert (costs.layer_input, costs.layer_state, costs.cell, costs.block) == (2560, 671_488, 15_696, 660_736)
