"""scikit-learn's 1,797 8x8 handwritten digits: always offline. Test split carved once, fixed."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from sklearn.datasets import load_digits

from tlexp.data import sizes
from tlexp.data.base import TransferDataModule
from tlexp.data.loading import Split
from tlexp.data.sizes import AUTO


class Digits(TransferDataModule):
    val_carve = sizes.Carve(share=0.2, cap=200, keep=1)
    test_carve = sizes.Carve(share=0.25, cap=sizes.TEST_CAP, keep=2)
    """auto: the former defaults, 200 validation and a quarter (449) of the 1,797 images as the test split."""

    def __init__(self, test_size: Annotated[float | str, sizes.CARVE] = AUTO, **kwargs):
        super().__init__(**kwargs)
        self.test_size = test_size

    def load(self):
        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)
        everything = Split(digits.target.astype(np.int64), images)
        rest, test = self.carve_test(everything.labels)
        return everything.take(rest), None, everything.take(test), [str(d) for d in range(10)]
