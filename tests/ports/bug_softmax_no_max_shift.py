"""Bug port: softmax and log-softmax do not subtract the row max before ``exp``.

Exact on small logits; ``exp`` overflows for logits (divided by T) above about 709, giving NaN/inf where the
reference is finite. Every operation built on softmax inherits it.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class SoftmaxNoMaxShift(GoodPort):
    name = "bug-softmax-no-max-shift"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _log_softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        scaled = z / temperature
        with np.errstate(over="ignore", invalid="ignore"):
            return scaled - np.log(np.exp(scaled).sum(axis=-1, keepdims=True))

    def _softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        scaled = z / temperature
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(scaled)
            return e / e.sum(axis=-1, keepdims=True)


BACKEND = SoftmaxNoMaxShift()
