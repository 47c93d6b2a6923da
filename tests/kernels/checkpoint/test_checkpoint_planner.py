"""The MA-GC planner minimises the paper's cost model M = (LS/l)C_L + (LS/s)C_S + ls C_grid + s C_state."""
import itertools
import math
import random

import pytest

from kernels.checkpoint import GridCosts, grid_cost, plan_grid

UNIT = GridCosts(layer_input=1, layer_state=1, cell=1, block=0)


@pytest.mark.parametrize("n_layers, seqlen", [(8, 64), (27, 27), (64, 4096)])
def test_unit_costs_give_the_cube_root_optimum(n_layers, seqlen):
    # With C_L = C_S = C_grid = 1 and C_state = 0 the paper's optimum is l = s = (LS)^(1/3)
    # with M* = 3 (LS)^(2/3) (here (LS)^(1/3) divides both L and S).
    root = round((n_layers * seqlen) ** (1 / 3))
    assert root ** 3 == n_layers * seqlen
    plan = plan_grid(n_layers, seqlen, UNIT)
    assert (plan.group_size, plan.block_size) == (root, root)
    assert plan.cost == pytest.approx(3 * (n_layers * seqlen) ** (2 / 3))


def test_plan_is_the_brute_force_minimum():
    rng = random.Random(0)
    for _ in range(30):
        n_layers, seqlen, multiple = rng.randint(1, 12), rng.randint(1, 300), rng.choice([1, 4, 16])
        costs = GridCosts(*(rng.choice([0, 1, 7, 100, 5000]) for _ in range(4)))
        plan = plan_grid(n_layers, seqlen, costs, block_multiple=multiple)
        blocks = range(multiple, math.ceil(seqlen / multiple) * multiple + 1, multiple)
        best = min(grid_cost(n_layers, seqlen, l, s, costs) for l, s in itertools.product(range(1, n_layers + 1), blocks))
        assert plan.block_size % multiple == 0 and 1 <= plan.group_size <= n_layers
        assert plan.cost == best == grid_cost(n_layers, seqlen, plan.group_size, plan.block_size, costs)


def test_fixed_group_or_block_size_is_kept():
    costs = GridCosts(256, 34_000, 1_700, 33_000)
    plan = plan_grid(24, 65_536, costs, block_multiple=256, group_size=6)
    assert plan.group_size == 6 and plan.block_size % 256 == 0
    assert plan.cost == min(grid_cost(24, 65_536, 6, s, costs) for s in range(256, 65_537, 256))
    plan = plan_grid(24, 65_536, costs, block_multiple=256, block_size=1024)
    assert plan.block_size == 1024
    assert plan.cost == min(grid_cost(24, 65_536, l, 1024, costs) for l in range(1, 25))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="block_size = 100"):
        plan_grid(4, 1000, UNIT, block_multiple=64, block_size=100)
    with pytest.raises(ValueError, match="group_size = 5"):
        plan_grid(4, 1000, UNIT, group_size=5)
    with pytest.raises(ValueError, match="GridCosts.cell"):
        GridCosts(1, 1, -1, 0)
