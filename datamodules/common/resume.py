"""Training loaders that resume mid-epoch exactly where a run stopped.

A run killed mid-epoch (preemption, SIGTERM) must, when resumed from its checkpoint, see exactly
the batches an uninterrupted run would have seen. We get that by making each epoch's batch order
a pure function of (seed, epoch) — the wrapped loader's job — and letting Lightning save, inside
the checkpoint, how far into the epoch the run got; resuming rebuilds the epoch's stream and skips
what was already trained on.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator, Optional


class ResumableLoader:
    """Wraps a training loader whose batch order depends only on the seed and `trainer.current_epoch`.

    Lightning calls `state_dict()` when it saves a checkpoint and `load_state_dict()` before the
    resumed epoch starts (any train loader with both methods counts as resumable). We ask the
    trainer how many batches of the epoch it has processed instead of counting what we yielded,
    because Lightning fetches one batch ahead of the step being trained.
    """

    def __init__(self, loader: Iterable, trainer_getter: Callable[[], Any]):
        self.loader = loader
        self.trainer_getter = trainer_getter
        self._resume: Optional[dict] = None

    def __iter__(self) -> Iterator:
        trainer = self.trainer_getter()
        epoch = trainer.current_epoch if trainer is not None else 0
        skip = self._resume["batches"] if self._resume and self._resume["epoch"] == epoch else 0
        self._resume = None
        return itertools.islice(iter(self.loader), skip, None)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict:
        trainer = self.trainer_getter()
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
