"""Bug port: the hard-label CE term is computed on tempered logits, ``CE(s/T, y)``, instead of ``CE(s, y)``.

The gradient is that of the wrong loss (``alpha*(softmax(s/T) - e_y)/T + ...``, self-consistent).
``kd_loss`` and ``kd_logit_gradient`` with ``alpha > 0`` and ``T != 1`` show it; ``cross_entropy`` itself is
correct.
"""

from __future__ import annotations

from tests.ports.good_port import GoodPort


class TemperatureOnCE(GoodPort):
    name = "bug-temperature-on-ce"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def _ce_temperature(self, temperature: float) -> float:
        return temperature  # should be 1


BACKEND = TemperatureOnCE()
