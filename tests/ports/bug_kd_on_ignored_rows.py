"""Bug port: the KD (KL) term is computed on every row, ignored rows included; only CE is masked.

Loss and gradient both include the KL of ignored rows (self-consistent); the ``mean`` still divides by the
valid rows. Inputs with ignored rows and ``alpha < 1`` show it.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class KDOnIgnoredRows(GoodPort):
    name = "bug-kd-on-ignored-rows"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _kd_rows_mask(self, valid: np.ndarray) -> np.ndarray:
        return np.ones_like(valid)  # the mask is forgotten for the KD term


BACKEND = KDOnIgnoredRows()
