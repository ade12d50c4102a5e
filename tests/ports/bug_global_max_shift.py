"""Bug port: softmax is shifted by the max of the whole tensor, not by each row's max.

Mathematically the same (any constant cancels), and exact while every row sits near the global max; a row
far below it underflows: ``exp`` of every entry is 0, its sum 0, its log ``-inf`` and its softmax NaN.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class GlobalMaxShift(GoodPort):
    name = "bug-global-max-shift"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _log_softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        scaled = z / temperature
        shifted = scaled - scaled.max()  # one constant for the whole tensor
        with np.errstate(divide="ignore", invalid="ignore"):
            return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


BACKEND = GlobalMaxShift()
