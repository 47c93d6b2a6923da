"""The MA-GC grid planner: choose (l, s) minimising the paper's memory cost model.

Video-Ma²mba (arXiv 2411.19460) keeps the input of every l-th layer for all S tokens and the
state of every layer every s tokens; backward recomputes one l x s cell at a time. Its memory
model, with L layers and S tokens, is

    M(l, s) = (L S / l) C_L + (L S / s) C_S + l s C_grid + s C_state

C_L: a layer input per token; C_S: one layer's state; C_grid: one layer's recomputed
activations per token; C_state: the per-token working set of one sequence block. With unit
constants the optimum is l = s = (L S)^(1/3), M* = 3 (L S)^(2/3). We count whole groups and
blocks (ceil(L / l), ceil(S / s)), which equals the paper's form when l | L and s | S.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class GridCosts:
    """The cost model's constants (any unit, the same for all four; the paper uses elements)."""

    layer_input: float  # C_L
    layer_state: float  # C_S
    cell: float  # C_grid
    block: float  # C_state

    def __post_init__(self):
        for name in ("layer_input", "layer_state", "cell", "block"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"GridCosts.{name} = {getattr(self, name)!r}: expected >= 0")


@dataclass(frozen=True)
class GridPlan:
    group_size: int  # l: layers per group (a group's input is kept)
    block_size: int  # s: tokens per sequence block (every layer's state is kept at block starts)
    cost: float  # M(l, s) in the unit of the GridCosts


def grid_cost(n_layers: int, seqlen: int, group_size: int, block_size: int, costs: GridCosts) -> float:
    """M(l, s) with whole groups and blocks counted."""
    groups = math.ceil(n_layers / group_size)
    blocks = math.ceil(seqlen / block_size)
    return (groups * seqlen * costs.layer_input + n_layers * blocks * costs.layer_state
            + group_size * block_size * costs.cell + block_size * costs.block)


def plan_grid(n_layers: int, seqlen: int, costs: GridCosts, block_multiple: int = 1,
              group_size: int | None = None, block_size: int | None = None) -> GridPlan:
    """The (l, s) that minimise `grid_cost`, l in [1, n_layers], s a multiple of
    `block_multiple` (the SSD chunk, so blocks cut the scan only at chunk boundaries) no larger
    than needed to cover `seqlen` in one block. A given group_size / block_size is kept fixed
    and the other is searched. Ties go to the larger cell (fewer, bigger recomputations)."""
    if n_layers < 1 or seqlen < 1 or block_multiple < 1:
        raise ValueError(f"plan_grid: n_layers = {n_layers}, seqlen = {seqlen}, block_multiple = {block_multiple}: "
                         "expected positive ints")
    if group_size is not None and not 1 <= group_size <= n_layers:
        raise ValueError(f"plan_grid: group_size = {group_size}, expected an int in [1, {n_layers}]")
    if block_size is not None and (block_size < 1 or block_size % block_multiple):
        raise ValueError(f"plan_grid: block_size = {block_size}, expected a positive multiple of {block_multiple}")
    return _plan(n_layers, seqlen, costs, block_multiple, group_size, block_size)


@lru_cache(maxsize=256)
def _plan(n_layers, seqlen, costs, block_multiple, group_size, block_size) -> GridPlan:
    groups = [group_size] if group_size is not None else range(1, n_layers + 1)
    if block_size is not None:
        blocks = [block_size]
    else:
        # Only the smallest s giving each block count matters: a larger s with the same count
        # costs more. So try, for every count n, s = ceil(S / n) rounded up to the multiple.
        max_blocks = math.ceil(seqlen / block_multiple)
        blocks = sorted({math.ceil(math.ceil(seqlen / n) / block_multiple) * block_multiple
                         for n in _block_counts(max_blocks)})
    best = None
    for l in groups:
        for s in blocks:
            cost = grid_cost(n_layers, seqlen, l, s, costs)
            if best is None or cost < best.cost or (cost == best.cost and l * s > best.group_size * best.block_size):
                best = GridPlan(l, s, cost)
    return best


def _block_counts(max_blocks: int) -> list[int]:
    # The block count ceil(K / k) of s = k * multiple takes O(sqrt(K)) distinct values: every
    # n <= sqrt(K) + 1 and the quotients ceil(K / k) for k <= sqrt(K).
    root = math.isqrt(max_blocks)
    counts = set(range(1, min(root + 1, max_blocks) + 1))
    counts |= {math.ceil(max_blocks / k) for k in range(1, root + 1)}
    return sorted(counts)
