"""Measured errors: checks record ``error`` beside ``tolerance`` so reports can show the margin.

A binding's comparison helpers call :func:`record`; the pytest plugin drains the records after each test
into the test report, and ``python -m spec check`` shows the largest per backend beside its tolerance.
"""

from __future__ import annotations

import math

_records: list[tuple[float, float]] = []


def record(error: float, tolerance: float) -> None:
    """Note one measured error and the tolerance it was held to."""
    if math.isfinite(error) or math.isinf(error):
        _records.append((float(error), float(tolerance)))


def ratio(error: float, tolerance: float) -> float:
    """``error / tolerance``, where an exact comparison (tolerance 0) gives 0 when met and inf when not."""
    if tolerance > 0:
        return error / tolerance
    return 0.0 if error == 0 else math.inf


def drain() -> tuple[float, float] | None:
    """The record with the largest error/tolerance ratio since the last drain, and clear them all."""
    if not _records:
        return None
    worst = max(_records, key=lambda r: ratio(*r))
    _records.clear()
    return worst
