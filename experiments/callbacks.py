"""Callbacks that keep a run's last good checkpoint intact and make interruptions resumable."""
from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("longwatch")


class FiniteLossGuard(L.Callback):
    """Stops the run at the first NaN/Inf loss, before backward, so no poisoned step is saved.

    The checkpoint callback only writes after a finished step, so `last.ckpt` stays the last good one.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite loss {loss.detach().float().item()} at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}); the last good checkpoint is left as it was"
            )


class SaveOnSignal(L.Callback):
    """SIGTERM or SIGUSR1 during fit: finish the current step, save `path`, exit cleanly.

    Lightning turns SIGTERM into a SIGTERMException at the next step boundary; we route SIGUSR1
    (what Slurm sends before a time limit, `--signal=USR1@90`) the same way when Lightning's own
    Slurm requeue handler is not installed, and save the checkpoint that `fit --ckpt` resumes.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._previous = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        connector = trainer._signal_connector
        current = signal.getsignal(signal.SIGUSR1)
        if current in (signal.SIG_DFL, signal.SIG_IGN, None):  # nobody (e.g. Slurm auto-requeue) owns it
            self._previous = current
            signal.signal(signal.SIGUSR1, lambda signum, frame: connector._sigterm_notifier_fn(signum, frame))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)
            log.info("signal received: saved %s at global step %d; resume with fit --ckpt %s", self.path, trainer.global_step, self.path)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None
