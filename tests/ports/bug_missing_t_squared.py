"""Bug port: the KD term is not scaled by T^2 (loss ``alpha*CE + (1-alpha)*KL``).

The gradient is the true gradient of that wrong loss (``(1-alpha)/T * (q - p)``), as autograd would give, so
the port is self-consistent: only a comparison with the reference at ``T != 1`` catches it.
"""

from __future__ import annotations

from tests.ports.good_port import GoodPort


class MissingTSquared(GoodPort):
    name = "bug-missing-t-squared"

    def _weights(self, alpha: float, temperature: float) -> tuple[float, float]:
        return alpha, 1.0 - alpha  # T^2 forgotten


BACKEND = MissingTSquared()
