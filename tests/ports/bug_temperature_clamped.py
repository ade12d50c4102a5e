"""Bug port: the temperature is clamped to at most 10 "for numerical stability".

Every temperature up to 10 is exact; a distillation run at T = 100 silently trains at T = 10.
"""

from __future__ import annotations

from typing import Any

from tests.ports.good_port import GoodPort


class TemperatureClamped(GoodPort):
    name = "bug-temperature-clamped"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    @staticmethod
    def _temperature(value: Any) -> float:
        return min(GoodPort._temperature(value), 10.0)


BACKEND = TemperatureClamped()
