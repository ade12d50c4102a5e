"""Bug port: the KD term is the reverse KL, KL(q_student || p_teacher), in the loss *and* in its gradient.

Unlike ``bug_wrong_kl_direction`` (loss and gradient disagree), this pair is consistent: the gradient is the
true derivative of this port's loss, so finite differences agree with it. Only the value of the loss at a
known point, the gradient's closed form or the reference see it.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class ReverseKLConsistent(GoodPort):
    name = "bug-reverse-kl-consistent"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _kd_divergence(self, s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
        return self._kl(t, s, temperature)  # KL(softmax(s/T) || softmax(t/T))

    def _gradient_rows(self, s, t, y, valid, temperature, alpha):  # type: ignore[no-untyped-def]
        w_ce, w_kl = self._weights(alpha, temperature)
        one_hot = np.arange(s.shape[-1]) == y[..., None]
        hard = np.where(valid[..., None], self._softmax(s, 1.0) - one_hot, 0.0)
        # d/ds KL(q || p) = q * (log q - log p - KL(q || p)) / T, with q = softmax(s/T), p = softmax(t/T)
        log_q = self._log_softmax(s, temperature)
        log_p = self._log_softmax(t, temperature)
        q = np.exp(log_q)
        with np.errstate(invalid="ignore"):
            kl = np.where(q > 0, q * (log_q - log_p), 0.0).sum(axis=-1, keepdims=True)
            soft = np.where(q > 0, q * (log_q - log_p - kl), 0.0) / temperature
        soft = np.where(valid[..., None], soft, 0.0)
        return w_ce * hard + w_kl * soft


BACKEND = ReverseKLConsistent()
