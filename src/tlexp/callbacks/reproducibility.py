"""Make every epoch's randomness a function of (seed, epoch), so a resumed run matches an uninterrupted one.

Lightning restores model, optimizer and loop state but not the RNG streams; reseeding at each
train-epoch start makes dropout and augmentation independent of how the run got there. A run
interrupted mid-epoch (``tlexp.callbacks.interruption``) saves the RNG streams with its
checkpoint and continues from them instead.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class EpochSeeder(Callback):
    def __init__(self, seed: int):
        self.seed = seed
        self._restored: dict | None = None

    def on_train_start(self, trainer, pl_module):
        """After a resume: the RNG streams of the checkpoint. Lightning skips ``on_train_epoch_start``
        when it resumes mid-epoch, so these are the streams that epoch continues with; at an epoch
        boundary the reseeding below replaces them."""
        restored, self._restored = self._restored, None
        if restored:
            random.setstate(restored["python"])
            name, keys, position, has_gauss, gauss = restored["numpy"]
            np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
            torch.set_rng_state(restored["torch"])

    def on_train_epoch_start(self, trainer, pl_module):
        epoch_seed = (self.seed * 1_000_003 + trainer.current_epoch) % 2**31
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)

    def state_dict(self):
        name, keys, position, has_gauss, gauss = np.random.get_state()
        numpy_state = (name, keys.tolist(), int(position), int(has_gauss), float(gauss))  # plain types: weights_only loads
        return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}

    def load_state_dict(self, state_dict):
        self._restored = state_dict if "torch" in state_dict else None
