"""Bug port: a float32 fast path that computes softmax without the max shift.

The float64 path is the correct one; float32 inputs stay float32 and take ``exp`` of the raw logits, which
overflows above about 88. A suite that runs the finite and extreme-logit laws in float64 only passes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.ports.good_port import GoodPort


class Float32FastPathNoShift(GoodPort):
    name = "bug-float32-fast-path-no-shift"

    @staticmethod
    def _logits(name: str, x: Any) -> np.ndarray:
        z = GoodPort._logits(name, x)
        return z.astype(np.float32) if np.asarray(x).dtype == np.float32 else z

    def _log_softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        if z.dtype != np.float32:
            return super()._log_softmax(z, temperature)
        scaled = z / np.float32(temperature)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return scaled - np.log(np.exp(scaled).sum(axis=-1, keepdims=True))


BACKEND = Float32FastPathNoShift()
