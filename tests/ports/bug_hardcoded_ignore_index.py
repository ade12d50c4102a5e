"""Bug port: the kernel hard-codes ``ignore_index = -100`` and ignores the argument.

Every test that uses the default passes; with ``ignore_index=-1`` the ignored rows are refused as
out-of-range labels (or, in a kernel without the check, computed as if valid).
"""

from __future__ import annotations

from typing import Any

from tests.ports.good_port import GoodPort


class HardcodedIgnoreIndex(GoodPort):
    name = "bug-hardcoded-ignore-index"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    @staticmethod
    def _ignore_index(value: Any) -> int:
        return -100  # the argument is accepted and dropped


BACKEND = HardcodedIgnoreIndex()
