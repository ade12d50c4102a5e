"""Bug port: with ``reduction="mean"`` the gradient is not divided by the number of valid rows.

The loss is correct; the gradient of the mean is the gradient of the sum. Any input with more than one
valid row and ``reduction="mean"`` shows it (against the reference or finite differences of the loss).
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class UndividedMeanGradient(GoodPort):
    name = "bug-undivided-mean-gradient"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _gradient_mean_count(self, valid: np.ndarray) -> int:
        return 1  # forgot to divide


BACKEND = UndividedMeanGradient()
