"""Bug port: a chunked (online) softmax that forgets to rescale its running sum.

The vocabulary is processed in chunks of 1024 with a running max ``m`` and running sum ``l``; when a chunk
raises the max, ``l`` must be multiplied by ``exp(m_old - m_new)``. This port skips that, so the normalizer is
too large whenever V > 1024 and a later chunk holds a larger logit. Exact for V <= 1024.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort

CHUNK = 1024


class OnlineSoftmaxNoRescale(GoodPort):
    name = "bug-online-softmax-no-rescale"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _log_softmax(self, z: np.ndarray, temperature: float) -> np.ndarray:
        scaled = z / temperature
        running_max = np.full((*scaled.shape[:-1], 1), -np.inf)
        running_sum = np.zeros((*scaled.shape[:-1], 1))
        for start in range(0, scaled.shape[-1], CHUNK):
            chunk = scaled[..., start : start + CHUNK]
            new_max = np.maximum(running_max, chunk.max(axis=-1, keepdims=True))
            # missing: running_sum *= np.exp(running_max - new_max)
            running_sum = running_sum + np.exp(chunk - new_max).sum(axis=-1, keepdims=True)
            running_max = new_max
        return scaled - running_max - np.log(running_sum)


BACKEND = OnlineSoftmaxNoRescale()
