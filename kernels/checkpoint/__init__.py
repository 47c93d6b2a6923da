"""Multi-Axis Gradient Checkpointing (Video-Ma²mba, arXiv 2411.19460), model-agnostic.

`plan_grid` picks the grid (l layers per group, s tokens per block) that minimises the
paper's memory cost model; `checkpointed_grid` runs a stack of stateful layers
`f(h, state) -> (h, new_state)` on that grid, keeping group inputs and block-start states
and recomputing one cell at a time in backward.
"""
from kernels.checkpoint.grid import Layer, State, checkpointed_grid
from kernels.checkpoint.planner import GridCosts, GridPlan, grid_cost, plan_grid

__all__ = ["checkpointed_grid", "plan_grid", "grid_cost", "GridCosts", "GridPlan", "Layer", "State"]
