"""SIGTERM (preemption, ``scancel``, a cluster's time limit) and SIGINT (Ctrl-C) end training at
the next batch boundary with a checkpoint, so re-running the same command resumes the job.

Lightning already notices SIGTERM (``trainer.received_sigterm``) and stops after the batch; this
callback adds SIGINT to the same path and saves the checkpoint at that consistent point (after
the optimizer step, where Lightning's own mid-epoch checkpoints are taken). A second Ctrl-C
interrupts at once, without a checkpoint.
"""

from __future__ import annotations

import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback

INTERRUPTED_CHECKPOINT = "interrupted.ckpt"


class Interrupted(SystemExit):
    """Training stopped by a signal; ``checkpoint`` is where it can resume from."""

    def __init__(self, signal_name: str, checkpoint: Path, step: int, epoch: int):
        self.signal_name, self.checkpoint, self.step, self.epoch = signal_name, checkpoint, step, epoch
        super().__init__(130 if signal_name == "SIGINT" else 143)


class Interruption(Callback):
    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.sigint = False
        self._previous = None

    def on_fit_start(self, trainer, pl_module):
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            try:
                self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            except ValueError:  # not the main thread (some launchers): Ctrl-C keeps its usual meaning
                self._previous = None

    def _on_sigint(self, signum, frame):
        if self.sigint:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.sigint = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not (self.sigint or trainer.received_sigterm):
            return
        path = self.checkpoint_dir / INTERRUPTED_CHECKPOINT
        trainer.save_checkpoint(path)
        raise Interrupted("SIGINT" if self.sigint else "SIGTERM", path, trainer.global_step, trainer.current_epoch)

    def teardown(self, trainer, pl_module, stage):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
