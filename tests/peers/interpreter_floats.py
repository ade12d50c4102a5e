"""Let the Triton interpreter take Python float kernel arguments as float32 scalars, as compiled Triton does.

The Triton 3 interpreter passes a Python float argument into the kernel as a plain float, so a kernel that
calls ``.to(...)`` on one (Liger's KL kernel does, on ``eps``) fails with ``AttributeError: 'float' object has
no attribute 'to'``. :func:`wrap_float_arguments` patches the interpreter's argument conversion (not Liger's
code) so that such arguments arrive as float32 scalar tensors. Call it after setting ``TRITON_INTERPRET=1``
and before the kernels run; used by ``tests/peers/_liger_run.py`` and ``benchmarks/liger_check.py``.
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
