"""Bug port: negative labels index from the end of the vocabulary.

The range check only looks at the upper end (``labels < V``); a label of -1 then gathers the last class and
-V the first, as numpy and torch negative indexing do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.ports.good_port import GoodPort


class NegativeLabelWraps(GoodPort):
    name = "bug-negative-label-wraps"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    @staticmethod
    def _labels(y: Any, logits_shape: tuple[int, ...], ignore_index: int) -> np.ndarray:
        labels = np.asarray(y)
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels: dtype {labels.dtype} is not an integer type")
        if labels.shape != logits_shape[:-1]:
            raise ValueError(f"labels: shape {labels.shape} does not match logits {logits_shape}")
        bad = (labels != ignore_index) & (labels >= logits_shape[-1])  # no lower bound
        if bad.any():
            raise ValueError(f"labels: {labels[bad][0]} is outside [0, {logits_shape[-1]})")
        return np.where(labels == ignore_index, labels, labels % logits_shape[-1]).astype(np.int64)


BACKEND = NegativeLabelWraps()
