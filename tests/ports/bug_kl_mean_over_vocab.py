"""Bug port: the KD term averages the KL over the vocabulary (``kl_div(reduction='mean')``), consistently in the
loss and its gradient.

``KL / V`` instead of ``KL``: the gradient is the true derivative of this port's loss, so finite differences
agree; the standalone ``kl_divergence`` is right. The loss at a known point or the gradient's closed form see it.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class KLMeanOverVocab(GoodPort):
    name = "bug-kl-mean-over-vocab"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _kd_divergence(self, s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
        return self._kl(s, t, temperature) / s.shape[-1]

    def _gradient_rows(self, s, t, y, valid, temperature, alpha):  # type: ignore[no-untyped-def]
        w_ce, w_kl = self._weights(alpha, temperature)
        one_hot = np.arange(s.shape[-1]) == y[..., None]
        hard = np.where(valid[..., None], self._softmax(s, 1.0) - one_hot, 0.0)
        soft = np.where(valid[..., None], self._softmax(s, temperature) - self._softmax(t, temperature), 0.0)
        return w_ce * hard + (w_kl / temperature / s.shape[-1]) * soft


BACKEND = KLMeanOverVocab()
