"""Bug port: the standalone cross_entropy casts labels to int64 and checks nothing.

Float labels are truncated, labels past the vocabulary raise IndexError (not ValueError), negative labels wrap
around to the last classes, NaN logits flow into the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.ports.good_port import GoodPort


class CrossEntropyUnvalidated(GoodPort):
    name = "bug-cross-entropy-unvalidated"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def cross_entropy(self, logits: Any, labels: Any, *, ignore_index: int = -100, reduction: str = "mean") -> Any:
        s = np.asarray(logits, dtype=np.float64)
        y = np.asarray(labels).astype(np.int64)
        valid = y != ignore_index
        with np.errstate(all="ignore"):
            return self._reduce(self._ce(s, y, valid, 1.0), valid, reduction)


BACKEND = CrossEntropyUnvalidated()
