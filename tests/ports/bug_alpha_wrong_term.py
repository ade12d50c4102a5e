"""Bug port: alpha weights the KD term instead of the CE term (``(1-alpha)*CE + alpha*T^2*KL``).

This is the other projects' ``kd_ratio`` convention (CONVENTIONS.md) applied without an adapter. The
gradient is that of the swapped loss (self-consistent); ``alpha = 1`` then gives pure KD, not pure CE.
"""

from __future__ import annotations

from tests.ports.good_port import GoodPort


class AlphaWrongTerm(GoodPort):
    name = "bug-alpha-wrong-term"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _weights(self, alpha: float, temperature: float) -> tuple[float, float]:
        return 1.0 - alpha, alpha * temperature**2  # swapped


BACKEND = AlphaWrongTerm()
