"""Bug port: kd_loss uses the reverse KL, KL(q_student || p_teacher); its gradient is still the forward one.

This is the seed's bug (DESIGN.md principle 6): the loss and its "analytic gradient" belong to different
divergences. ``kl_divergence`` and ``kd_logit_gradient`` are correct; only kd_loss is wrong, so a check of
the loss against the reference, or of the gradient against finite differences of the loss, catches it.
"""

from __future__ import annotations

import numpy as np

from tests.ports.good_port import GoodPort


class WrongKLDirection(GoodPort):
    name = "bug-wrong-kl-direction"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _kd_divergence(self, s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
        return self._kl(t, s, temperature)  # KL(softmax(s/T) || softmax(t/T)): arguments swapped


BACKEND = WrongKLDirection()
