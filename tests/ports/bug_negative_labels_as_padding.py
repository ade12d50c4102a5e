"""Bug port: every negative label is read as padding.

``valid = labels >= 0`` instead of ``labels != ignore_index``: a label of -1 or -V (a tokenizer or data bug)
silently drops its row instead of being refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.ports.good_port import GoodPort


class NegativeLabelsAsPadding(GoodPort):
    name = "bug-negative-labels-as-padding"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    @staticmethod
    def _labels(y: Any, logits_shape: tuple[int, ...], ignore_index: int) -> np.ndarray:
        labels = np.asarray(y)
        padded = np.where(labels < 0, ignore_index, labels)  # any negative label counts as padding
        return GoodPort._labels(padded.astype(labels.dtype), logits_shape, ignore_index)


BACKEND = NegativeLabelsAsPadding()
