"""Bug port: the Triton backend's generalized JSD forms its mixture from probabilities, without a shift.

The reference forms ``log M = log(beta p + (1 - beta) q)`` in log space (``logaddexp``, shifted by the
larger side). This port writes what many kernels write, ``log(beta exp(log p) + (1 - beta) exp(log q))``:
exact while both probabilities are representable, but where both underflow to 0 (logits of magnitude 1e4,
or a low temperature) ``log M = -inf`` next to a finite ``log p``, and ``p (log p - log M) = 0 * inf`` is
NaN. Every other member, and the JSD's endpoints (the KL branches), are untouched.

Runs under the Triton interpreter (``TRITON_INTERPRET=1``) or on a CUDA GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

from backends.triton_backend import TritonBackend
from backends.triton_terms import TERMS, kl_term, parameter, times_q


@triton.jit
def generalized_jsd_terms_unshifted(lq, lp, W):
    """The broken interior: the mixture from ``exp`` of the log-probabilities, then ``log``."""
    w, one_minus_w, _, _ = parameter(W)
    lm = tl.log(w * tl.exp(lp) + one_minus_w * tl.exp(lq))
    value = w * kl_term(lp, lm) + one_minus_w * kl_term(lq, lm)
    return value, one_minus_w * times_q(lq, lq - lm)


class TritonJSDUnshiftedMixture(TritonBackend):
    def __init__(self) -> None:
        super().__init__()
        self.family_terms = {**TERMS, "generalized_jsd": generalized_jsd_terms_unshifted}
        self.name = "bug-triton-jsd-unshifted-mixture"


BACKEND = TritonJSDUnshiftedMixture()
