"""Bug port: the Triton backend with an online log-sum-exp that forgets to rescale.

When a vocabulary chunk raises a row's running max from ``m_old`` to ``m_new``, the running sum
``z = sum exp(x - m_old)`` must be multiplied by ``exp(m_old - m_new)`` before the new chunk's terms are
added. This step adds them without it, so ``z`` (hence the log-sum-exp, every softmax, the CE and KL terms
and the gradient) is wrong whenever a row's max is not in its first chunk. Exact when the vocabulary fits
in one chunk, which is why the Triton backend's interpreter chunks are small (16 columns for small
vocabularies): the suite's shapes span several chunks.

Runs under the Triton interpreter (``TRITON_INTERPRET=1``) or on a CUDA GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

from backends.triton_backend import TritonBackend


@triton.jit
def online_lse_step_without_rescale(m, z, x):
    """The broken step: ``z + sum exp(x - m_new)``, the old sum left at the old max's scale."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    finite = m_new != -float("inf")
    e = tl.where(x == -float("inf"), 0.0, tl.exp(x - tl.where(finite, m_new, 0.0)[:, None]))
    return m_new, z + tl.sum(e, axis=1), tl.where(finite, 1.0, 1.0)


class TritonMissingRescale(TritonBackend):
    update = online_lse_step_without_rescale

    def __init__(self) -> None:
        super().__init__()
        self.name = "bug-triton-missing-rescale"


BACKEND = TritonMissingRescale()
