"""Make the Triton interpreter pass Python float kernel arguments as float32 scalars, as compiled Triton does.

Compiled Triton types a Python ``float`` argument as ``fp32`` (``triton._utils``: ``"float": "fp32"``), so
``1.0 / temperature`` handed to a float64 kernel is rounded to float32 on a GPU. The Triton 3 interpreter
instead passes the Python float itself: float64 precision, and no ``.to(...)`` method (Liger's KL kernel calls
``eps.to(tl.float32)`` and fails with ``AttributeError``). So the interpreter hides a whole class of GPU bugs
(float64 results with float32 constants) and breaks kernels that are fine on a GPU.

:func:`wrap_float_arguments` patches the interpreter's argument conversion so float arguments arrive as
float32 scalar tensors, as on a GPU. The triton backend installs it before its first launch under the
interpreter (so the suite sees what a GPU would compute); ``tests/peers/_liger_run.py`` and
``benchmarks/liger_check.py`` install it for Liger's kernels. Kernels that need a float64 constant take it
from a tensor of the compute dtype (``PARAMS``), never as a Python float.
"""

from __future__ import annotations

import numpy as np


def wrap_float_arguments() -> None:
    """Patch ``triton.runtime.interpreter._implicit_cvt`` once (idempotent)."""
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    convert = interpreter._implicit_cvt
    if getattr(convert, "wraps_floats", False):
        return

    def implicit_cvt(arg: object) -> object:
        if isinstance(arg, float):
            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return convert(arg)

    implicit_cvt.wraps_floats = True  # type: ignore[attr-defined]
    interpreter._implicit_cvt = implicit_cvt
