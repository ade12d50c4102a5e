"""Bug port: the loss kernel takes int64 labels only, and int32 labels crash it.

PyTorch's ``nll_loss`` refuses ``Int`` targets ("expected scalar type Long but found Int"); a port that hands
the user's labels straight to such a kernel works in every test that casts labels to int64 first, and fails
on the int32 labels many data loaders produce.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.ports.good_port import GoodPort


class Int32LabelsCrash(GoodPort):
    name = "bug-int32-labels-crash"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    @staticmethod
    def _labels(y: Any, logits_shape: tuple[int, ...], ignore_index: int) -> np.ndarray:
        if np.asarray(y).dtype == np.int32:
            raise RuntimeError("expected scalar type Long but found Int")
        return GoodPort._labels(y, logits_shape, ignore_index)


BACKEND = Int32LabelsCrash()
