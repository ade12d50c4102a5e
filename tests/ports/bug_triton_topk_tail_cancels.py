"""Bug port: the Triton backend with the student's top-k tail formed as ``log(1 - sum q[ids])``.

The tail bucket of mode ``tail`` holds the student's mass outside the teacher's K ids. Written as one minus the
mass inside, it cancels: once the top-k holds all but an epsilon of the mass (a confident student), ``1 - sum``
rounds to 0 (``log`` = ``-inf``, forward KL = ``+inf``) or to a rounding error of the sum. The backend forms it
exactly, as a log-sum-exp over the ids' complement; this port swaps in the cancelling form
(:func:`backends.triton_topk_kernels.student_tail` is a kernel parameter). Only a falsifier with a confident
student sees it (F-TOPK-TAIL-002): on the suite's ordinary draws the tails are large enough to survive.

Runs under the Triton interpreter (``TRITON_INTERPRET=1``) or on a CUDA GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

from backends.triton_backend import TritonBackend


@triton.jit
def student_tail_one_minus_sum(mt, zt, mq, lzq, lq_k, kmask):
    """The broken tail: ``log(1 - sum_k q[ids_k])``."""
    inside = tl.sum(tl.where(kmask, tl.exp(lq_k), 0.0), axis=1)
    return tl.log(1.0 - inside)


class TritonTopKTailCancels(TritonBackend):
    student_tail = student_tail_one_minus_sum

    def __init__(self) -> None:
        super().__init__()
        self.name = "bug-triton-topk-tail-cancels"


BACKEND = TritonTopKTailCancels()
