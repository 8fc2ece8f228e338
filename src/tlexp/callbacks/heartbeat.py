"""Heartbeat: the job's ``result.json`` says how far it got and that it still runs, so that a job killed
without a chance to write (``tlexp.liveness``) is reported as killed after its last finished epoch.

A thread rewrites the heartbeat and peak memory every ``liveness.HEARTBEAT_S`` for the whole job (also
while data is prepared or the test runs); as a Lightning callback it records ``epochs_done`` at each
epoch's start, once the previous epoch's checkpoint is written, and at the end of training. Rank zero only.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from tlexp import liveness
from tlexp.results import RunRecord, write_result

log = logging.getLogger("tlexp")


class Heartbeat(Callback):
    def __init__(self, record: RunRecord, output_dir: str | Path, interval_s: float = liveness.HEARTBEAT_S):
        self.record, self.output_dir, self.interval_s = record, Path(output_dir), interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, **values) -> None:
        try:
            write_result(self.output_dir, self.record.update(**liveness.usage(), **values))
        except Exception as error:  # a full disk must not stop training; the record says running until it can
            log.warning("could not write the heartbeat to %s: %s", self.output_dir, error)

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def __enter__(self) -> Heartbeat:
        if rank_zero_only.rank == 0:
            self._thread = threading.Thread(target=self._beat_until_stopped, name="tlexp-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _epochs(self, trainer) -> None:
        if trainer.is_global_zero:
            self.beat(epochs_done=trainer.current_epoch)

    def on_train_start(self, trainer, pl_module):  # a resume: the epochs its checkpoint holds
        self._epochs(trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        self._epochs(trainer)

    def on_train_end(self, trainer, pl_module):
        self._epochs(trainer)
