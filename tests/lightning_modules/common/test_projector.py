"""MLPProjector: LLaVA's mlp2x_gelu layout, against a hand-written forward."""
import pytest
import torch

from lightning_modules.common.projector import MLPProjector


def test_two_layer_gelu_matches_hand_written_forward():
    projector = MLPProjector(12, 20)
    x = torch.randn(3, 5, 12)
    first, second = projector.net[0], projector.net[2]
    want = torch.nn.functional.gelu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    torch.testing.assert_close(projector(x), want)
    assert [type(m).__name__ for m in projector.net] == ["Linear", "GELU", "Linear"]


@pytest.mark.parametrize("depth,act,layers", [
    (1, "gelu", ["Linear"]),
    (3, "silu", ["Linear", "SiLU", "Linear", "SiLU", "Linear"]),
])
def test_depth_and_activation(depth, act, layers):
    projector = MLPProjector(4, 6, depth=depth, act=act)
    assert [type(m).__name__ for m in projector.net] == layers
    assert projector(torch.randn(2, 4)).shape == (2, 6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        MLPProjector(4, 6, depth=0)
    with pytest.raises(ValueError, match="act 'tanh'"):
        MLPProjector(4, 6, act="tanh")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        MLPProjector(4, 6)(torch.randn(2, 5))
