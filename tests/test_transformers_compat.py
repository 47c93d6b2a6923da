"""Our top-level package is named `kernels`, like the Hub kernel library (PyPI `kernels`) that transformers probes.

transformers 5.x asks `is_kernels_available()`: `importlib.util.find_spec("kernels")` (which finds ours), then a
version from `importlib.metadata` -- not found under "kernels", so it maps the import name to its distribution
(`packages_distributions()["kernels"] == ["longwatch"]`) and reads *longwatch's* version; without any metadata it
imports the package and reads `kernels.__version__`. It counts the library as present only inside
[KERNELS_MIN_VERSION, KERNELS_MAX_VERSION) (0.18.2..0.19.0 in 5.24). Were ours taken for it, transformers would run
`from kernels import CUDAProperties, ...` and every Hub-kernel lookup (Mamba-2's included) would fail.
These tests keep that from happening silently: transformers must not detect it, and tiny Llama and Mamba-2 must run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from packaging import version

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import transformers
from transformers.utils import is_kernels_available
from transformers.utils import import_utils
imported_by_transformers = "kernels" in sys.modules
import transformers.integrations.hub_kernels  # would fail on `from kernels import ...` if ours were detected
import kernels
print(json.dumps({
    "available": is_kernels_available(),
    "imported_by_transformers": imported_by_transformers,
    "origin": kernels.__file__,
    "seen": import_utils._is_package_available("kernels", return_version=True),
}))
"""


def test_a_fresh_transformers_does_not_take_our_kernels_for_the_hub_library(tmp_path):
    # A fresh interpreter outside the repo: the installed (editable) project as a user sees it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["origin"].startswith(str(REPO / "kernels")), f"`kernels` resolves to {probe['origin']}, not ours"
    assert probe["available"] is False
    assert probe["imported_by_transformers"] is False, "transformers imported our kernels package while probing"
    found, seen_version = probe["seen"]
    assert found  # transformers does see a `kernels` ...
    # ... and tells it apart only by the version it reads: longwatch's own (or N/A without metadata).
    assert seen_version in ("N/A", _longwatch_version())


def _longwatch_version():
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("longwatch")
    except PackageNotFoundError:
        return "N/A"


def test_the_version_transformers_reads_for_our_kernels_stays_outside_its_window():
    """Tripwire: releasing longwatch 0.18.x, or giving `kernels` a `__version__` in the window, breaks transformers."""
    import kernels
    from transformers.utils import import_utils

    low, high = version.parse(import_utils.KERNELS_MIN_VERSION), version.parse(import_utils.KERNELS_MAX_VERSION)
    for source, seen in (("longwatch dist", _longwatch_version()),
                         ("kernels.__version__", getattr(kernels, "__version__", "N/A"))):
        if seen != "N/A":
            assert not low <= version.parse(seen) < high, (
                f"{source} {seen} lies in transformers' kernels window [{low}, {high}): transformers would take our "
                "`kernels` package for the Hub kernels library")


def test_tiny_llama_trains_and_generates_with_our_kernels_imported():
    import kernels  # noqa: F401  (ours, imported first on purpose)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    ids = torch.randint(0, 97, (2, 11))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.model.embed_tokens.weight.grad.abs().sum() > 0
    _assert_greedy_generation_matches_full_forward(model.eval(), ids[:, :5])


def test_tiny_mamba2_trains_and_generates_on_the_reference_path():
    import kernels  # noqa: F401
    from transformers import Mamba2Config, Mamba2ForCausalLM
    from transformers.integrations.hub_kernels import lazy_load_kernel

    torch.manual_seed(0)
    model = Mamba2ForCausalLM(Mamba2Config(vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=16,
                                           expand=2, head_dim=16, num_heads=4, n_groups=1, chunk_size=8))
    ids = torch.randint(0, 97, (2, 13))  # 13: not a multiple of the chunk
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.backbone.embeddings.weight.grad.abs().sum() > 0
    # No Hub kernel was loaded (from our package or anywhere): transformers ran its pure-torch reference.
    assert lazy_load_kernel("mamba-ssm") is None
    _assert_greedy_generation_matches_full_forward(model.eval(), ids[:, :5])


def _assert_greedy_generation_matches_full_forward(model, prompt: torch.Tensor, new_tokens: int = 4) -> None:
    """Cached step-by-step decoding must pick, at every step, the argmax of a full forward over the same prefix."""
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        assert generated.shape == (prompt.shape[0], prompt.shape[1] + new_tokens)
        logits = model(input_ids=generated).logits
    want = logits[:, prompt.shape[1] - 1:-1].argmax(-1)
    assert torch.equal(generated[:, prompt.shape[1]:], want)
