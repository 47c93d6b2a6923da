"""LLaVA-style MLP projector: vision tokens -> LLM embedding space (Video-Ma²mba: 2-layer GELU MLP)."""
from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class MLPProjector(nn.Module):
    """(..., in_dim) -> (..., out_dim): Linear(in, out), then (act, Linear(out, out)) x (depth - 1).

    depth=1 is a plain linear projection; depth=2 is LLaVA-1.5's `mlp2x_gelu`.
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, act: str = "gelu"):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"MLPProjector: in_dim {in_dim} and out_dim {out_dim} must be >= 1")
        if depth < 1:
            raise ValueError(f"MLPProjector: depth {depth} must be >= 1")
        if act not in ACTIVATIONS:
            raise ValueError(f"MLPProjector: act {act!r} is not one of {tuple(ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [ACTIVATIONS[act](), nn.Linear(out_dim, out_dim)]
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLPProjector: expected (..., {self.in_dim}), got shape {tuple(x.shape)}")
        return self.net(x)
