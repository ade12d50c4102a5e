"""Bug port: kd_loss does not scale the KD term by T^2 (``alpha*CE + (1-alpha)*KL``).

The gradient is still the correct one (``(1-alpha)*T*(q - p)``, with the factor T that comes from
``T^2 * 1/T``): the loss was typed from memory, the gradient from the paper. So the loss differs from the
reference at ``T != 1`` and the gradient is no longer the derivative of the loss (finite differences catch
it), while ``kl_divergence`` and ``kd_logit_gradient`` agree with the reference.
"""

from __future__ import annotations

from tests.ports.good_port import GoodPort


class MissingTSquared(GoodPort):
    name = "bug-missing-t-squared"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _loss_weights(self, alpha: float, temperature: float) -> tuple[float, float]:
        return alpha, 1.0 - alpha  # T^2 forgotten in the loss


BACKEND = MissingTSquared()
