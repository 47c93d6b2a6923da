"""Callbacks that keep a run's last good checkpoint intact and make interruptions resumable."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
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
    (what Slurm sends before a time limit, `--signal=USR1@90`) the same way and save the checkpoint
    that `fit --ckpt` resumes. Under Slurm, a USR1 also requeues the job (rank 0), and the job script
    resumes from `path`. (Lightning's own Slurm handler is turned off in run.py: it saves from inside
    the signal handler, possibly mid-step; we save at a step boundary.)

    The USR1 handler only sets a flag. Every rank then agrees at the end of each step (an all-reduce
    of the flag), so all of them stop at the same step even when the signal reaches them at different
    moments. Lightning's SIGTERM notifier broadcasts from inside the handler instead, which deadlocks
    when another rank is blocked in a gradient all-reduce at that moment (seen as a hung preemption test).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._previous = None
        self._signum = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def on_usr1(signum, frame):
            self._signum = signum  # no logging or collectives in a signal handler

        self._previous = signal.signal(signal.SIGUSR1, on_usr1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        requested = self._signum is not None
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([int(requested)], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested and not trainer.received_sigterm:
            self._signum = signal.SIGUSR1
            log.info("USR1 received: stopping after global step %d", trainer.global_step)
            trainer._signal_connector.received_sigterm = True  # the fit loop raises SIGTERMException next

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)
            log.info("signal received: saved %s at global step %d; resume with fit --ckpt %s", self.path, trainer.global_step, self.path)
            job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            job = job or os.environ.get("SLURM_JOB_ID")
            if self._signum == signal.SIGUSR1 and job and trainer.is_global_zero:
                log.info("requeueing Slurm job %s", job)
                subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None


class WeightChecksum(L.Callback):
    """At the end of fit each rank writes `dir/rank<k>.txt`: its global step and a hash of its weights.

    Under DDP every rank must end with identical weights; comparing these files catches a rank that
    diverged or never trained, without loading checkpoints.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        self.directory.mkdir(parents=True, exist_ok=True)
        line = f"rank={trainer.global_rank} world_size={trainer.world_size} global_step={trainer.global_step} sha256={digest.hexdigest()}\n"
        (self.directory / f"rank{trainer.global_rank}.txt").write_text(line)
