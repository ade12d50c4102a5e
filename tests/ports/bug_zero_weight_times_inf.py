"""Bug port: a loss term whose weight is 0 is still multiplied in, so ``0 * inf = NaN``.

``alpha * CE + (1 - alpha) * T^2 * KL`` with plain products: at alpha = 1 a row whose KL is +inf (the student
masks a token the teacher likes) gives NaN instead of its CE, and at alpha = 0 a row whose CE is +inf (the label
is masked) gives NaN instead of its KD term.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class ZeroWeightTimesInf(GoodPort):
    name = "bug-zero-weight-times-inf"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    @staticmethod
    def _scaled(weight: float, term: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return weight * term


BACKEND = ZeroWeightTimesInf()
