"""Bug port: cross_entropy's default reduction is ``'sum'``, not the protocol's ``'mean'``.

Every call that spells the reduction out is right; a caller relying on the default gets a loss that grows
with the batch size.
"""

from __future__ import annotations

from typing import Any

from tests.ports.good_port import GoodPort


class DefaultReductionSum(GoodPort):
    name = "bug-default-reduction-sum"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def cross_entropy(self, logits: Any, labels: Any, *, ignore_index: int = -100, reduction: str = "sum") -> Any:
        return super().cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)


BACKEND = DefaultReductionSum()
