"""scikit-learn's 1,797 8x8 handwritten digits: always offline. Test split carved once, fixed."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from tlexp.data.base import Split, TransferDataModule
from tlexp.data.subset import stratified_split


class Digits(TransferDataModule):
    def __init__(self, test_size: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        self.test_size = test_size

    def load(self):
        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)
        everything = Split(digits.target.astype(np.int64), images)
        rest, test = stratified_split(everything.labels, self.test_size, self.split_seed, name="test_size")
        return everything.take(rest), None, everything.take(test), [str(d) for d in range(10)]
