"""Bug port: the standalone softmax and log_softmax validate nothing.

kd_loss and its gradient check their inputs; ``softmax``/``log_softmax`` take NaN, +inf, rows without a finite
logit and any temperature, and return NaN or a flipped distribution.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.ports.good_port import GoodPort


class SoftmaxUnvalidated(GoodPort):
    name = "bug-softmax-unvalidated"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def softmax(self, logits: Any, temperature: float = 1.0) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self._softmax(np.asarray(logits, dtype=np.float64), float(temperature))

    def log_softmax(self, logits: Any, temperature: float = 1.0) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self._log_softmax(np.asarray(logits, dtype=np.float64), float(temperature))


BACKEND = SoftmaxUnvalidated()
