"""Make every epoch's randomness a function of (seed, epoch), so a resumed run matches an uninterrupted one.

Lightning restores model, optimizer and loop state but not the RNG streams; reseeding at each
train-epoch start makes dropout and augmentation independent of how the run got there.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class EpochSeeder(Callback):
    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        epoch_seed = (self.seed * 1_000_003 + trainer.current_epoch) % 2**31
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)
