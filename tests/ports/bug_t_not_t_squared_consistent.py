"""Bug port: the KD term is weighted by T instead of T^2, in the loss and (consistently) in the gradient.

The gradient is the true derivative of this port's loss, ``(1 - alpha) (softmax(s/T) - softmax(t/T))``, so
finite differences agree; at T = 1 nothing differs at all.
"""

from __future__ import annotations

from tests.ports.good_port import GoodPort


class TNotTSquaredConsistent(GoodPort):
    name = "bug-t-not-t-squared-consistent"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _weights(self, alpha: float, temperature: float) -> tuple[float, float]:
        return alpha, (1.0 - alpha) * temperature


BACKEND = TNotTSquaredConsistent()
