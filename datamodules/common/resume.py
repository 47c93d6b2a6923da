"""Training loaders that resume mid-epoch exactly where a run stopped.

A run killed mid-epoch (preemption, SIGTERM) must, when resumed from its checkpoint, see exactly
the batches an uninterrupted run would have seen. We get that by making each epoch's batch
order a pure function of (seed, epoch) and letting Lightning save, inside the checkpoint, how far
into the epoch the run got; resuming rebuilds the epoch's stream and skips what was consumed.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional


class ResumableLoader:
    """Wraps `batches_for_epoch(epoch) -> iterable of batches` (deterministic per epoch) for Lightning.

    Lightning calls `state_dict()` when it saves a checkpoint and `load_state_dict()` before a
    resumed epoch starts (it treats any loader with both methods as resumable). We ask the trainer
    how many batches of the epoch it has processed rather than counting what we yielded, because
    Lightning prefetches one batch ahead of the step being trained.
    """

    def __init__(self, batches_for_epoch: Callable[[int], Iterable], trainer_getter: Callable[[], Any], length: Optional[int] = None):
        self.batches_for_epoch = batches_for_epoch
        self.trainer_getter = trainer_getter
        self.length = length
        self._resume: Optional[dict] = None

    def __iter__(self) -> Iterator:
        trainer = self.trainer_getter()
        epoch = trainer.current_epoch if trainer is not None else 0
        skip = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            skip = self._resume["batches"]
        self._resume = None
        for i, batch in enumerate(self.batches_for_epoch(epoch)):
            if i >= skip:
                yield batch

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this loader streams batches and has no length")
        return self.length

    def state_dict(self) -> dict:
        trainer = self.trainer_getter()
        loop = trainer.fit_loop
        return {"epoch": trainer.current_epoch, "batches": loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
