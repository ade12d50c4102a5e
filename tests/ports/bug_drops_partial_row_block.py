"""Bug port: a launch grid of ``rows // BLOCK`` blocks drops the last partial block of rows.

Batches of 1024 rows or more take a blocked path over tiles of 1024 rows; the grid is computed with floor
division, so the rows of the last, partial tile are never written and keep the output buffer's zeros. Exact for
fewer than 1024 rows and for multiples of 1024.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort

BLOCK = 1024


class DropsPartialRowBlock(GoodPort):
    name = "bug-drops-partial-row-block"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _log_softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        rows = z.reshape(-1, z.shape[-1])
        if rows.shape[0] < BLOCK:
            return super()._log_softmax(z, temperature)
        out = np.zeros_like(rows)
        for block in range(rows.shape[0] // BLOCK):  # should be ceil(rows / BLOCK)
            tile = slice(block * BLOCK, (block + 1) * BLOCK)
            out[tile] = super()._log_softmax(rows[tile], temperature)
        return out.reshape(z.shape)

    def _softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        rows = z.reshape(-1, z.shape[-1])
        if rows.shape[0] < BLOCK:
            return super()._softmax(z, temperature)
        out = np.zeros_like(rows)
        for block in range(rows.shape[0] // BLOCK):
            tile = slice(block * BLOCK, (block + 1) * BLOCK)
            out[tile] = super()._softmax(rows[tile], temperature)
        return out.reshape(z.shape)


BACKEND = DropsPartialRowBlock()
