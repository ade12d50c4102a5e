"""Bug port: ``mean`` divides by every row, ignored (padding) rows included, instead of the valid rows.

Loss and gradient are both divided by the total row count (self-consistent); only inputs with ignored rows
and ``reduction="mean"`` show it.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class MeanOverAllRows(GoodPort):
    name = "bug-mean-over-all-rows"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _loss_mean_count(self, valid: np.ndarray) -> int:
        return int(valid.size)

    def _gradient_mean_count(self, valid: np.ndarray) -> int:
        return int(valid.size)


BACKEND = MeanOverAllRows()
