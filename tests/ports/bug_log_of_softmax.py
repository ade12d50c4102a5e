"""Bug port: log_softmax is computed as ``log(softmax(z))``.

The softmax is shifted and correct, but a probability that underflows to 0 has log ``-inf`` instead of its
exact value: ``log_softmax([0, -1000])`` gives ``[0, -inf]`` where the answer is ``[0, -1000]``, and a
cross-entropy of 1000 becomes +inf.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class LogOfSoftmax(GoodPort):
    name = "bug-log-of-softmax"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _log_softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        scaled = z / temperature
        e = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
        with np.errstate(divide="ignore"):
            return np.log(e / e.sum(axis=-1, keepdims=True))

    def _softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        scaled = z / temperature
        e = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


BACKEND = LogOfSoftmax()
