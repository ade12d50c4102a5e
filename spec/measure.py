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


def subject_label(nodeid: str, once: str = "(once)") -> str:
    """The subject a test ran on, from its pytest node ID: ``torch-float32`` in ``test_X[torch-float32]``."""
    return nodeid.rsplit("[", 1)[-1].rstrip("]") if "[" in nodeid else once


def keep_worst(worst: dict[str, dict[str, float | str]], label: str, error: float, tolerance: float, test: str) -> None:
    """Keep in ``worst[label]`` the measurement closest to (or furthest past) its tolerance."""
    prev = worst.get(label)
    if prev is None or ratio(error, tolerance) > ratio(float(prev["error"]), float(prev["tolerance"])):
        worst[label] = {"error": error, "tolerance": tolerance, "test": test}


def describe(worst: dict[str, float | str]) -> str:
    """``1.234e-15 (tolerance 1.0e-06) in test_X[torch]``."""
    return f"{float(worst['error']):.3e} (tolerance {float(worst['tolerance']):.1e}) in {worst['test']}"


def drain() -> tuple[float, float] | None:
    """The record with the largest error/tolerance ratio since the last drain, and clear them all."""
    if not _records:
        return None
    worst = max(_records, key=lambda r: ratio(*r))
    _records.clear()
    return worst
