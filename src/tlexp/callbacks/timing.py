"""Wall-clock per epoch and cumulative, the x-axis of the race between strategies."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class EpochTimer(Callback):
    def __init__(self):
        self.elapsed = 0.0
        self._start = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_start(self, trainer, pl_module):  # a mid-epoch resume skips on_train_epoch_start
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        seconds = time.perf_counter() - self._start
        self.elapsed += seconds
        pl_module.log_dict({"time/epoch_s": seconds, "time/elapsed_s": self.elapsed}, on_step=False, on_epoch=True)

    def state_dict(self):
        return {"elapsed": self.elapsed}

    def load_state_dict(self, state_dict):
        self.elapsed = state_dict.get("elapsed", 0.0)
