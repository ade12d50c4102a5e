"""The backend under test, as a check sees it: ``kd`` (the backend) and ``ref`` (the reference).

``kd.kd_loss(...)`` takes numpy inputs, hands them to the backend in the dtype under test (labels at the
dtype the user passed: int64 or int32, each through ``asarray``; other integer labels as int64; labels of
any other dtype are passed as they are, so a backend must refuse them itself), and returns numpy float64.

A parity check of a backend that *is* the reference (``numpy``: its operations are the reference's own
functions) compares the reference with itself: :func:`not_the_reference` skips it with a reason that says
so, so it is reported as a self-comparison and never counted as evidence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference import kd as reference_kd
from reference.step import kd_step
from spec.binding import Target

LABEL_DTYPES = ("int64", "int32")
"""Label dtypes handed to a backend as they are (see :data:`backends.protocol.LABEL_DTYPES`)."""

SELF_COMPARISON = "self-comparison: {name} runs the reference's own functions; parity with it is not evidence"

KD_OPS = ("softmax", "log_softmax", "cross_entropy", "kl_divergence", "kd_loss", "kd_logit_gradient")


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` (round to nearest even) and widened back to float64."""
    a = np.asarray(x, dtype=np.float64)
    if dtype == "float64":
        return a
    f = a.astype(np.float32)
    if dtype == "float32":
        return f.astype(np.float64)
    bits = f.view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(f), rounded, f).astype(np.float64)


class BackendOps:
    """The math surface of one backend in one dtype, with numpy in and numpy out."""

    def __init__(self, backend: Any, dtype: str) -> None:
        self.backend = backend
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<{self.backend.name} in {self.dtype}>"

    def _in(self, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            if x.dtype.kind == "u" and x.size and x.max() > np.iinfo(np.int64).max:
                return x  # a cast here would wrap it: the backend must refuse it itself
            if x.dtype.kind in "iu":
                name = x.dtype.name if x.dtype.name in LABEL_DTYPES else "int64"
                return self.backend.asarray(x.astype(name), name)
            if x.dtype.kind == "f":
                return self.backend.asarray(x, self.dtype)
        return x

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.backend, op)(*(self._in(a) for a in args), **kwargs)
        return np.asarray(self.backend.to_numpy(result), dtype=np.float64)

    # Keyword arguments are forwarded only when the check gives them, so a backend's own defaults are what a
    # call without them measures.

    def softmax(self, logits: Any, **kwargs: Any) -> np.ndarray:
        return self._call("softmax", logits, **kwargs)

    def log_softmax(self, logits: Any, **kwargs: Any) -> np.ndarray:
        return self._call("log_softmax", logits, **kwargs)

    def cross_entropy(self, logits: Any, labels: Any, **kwargs: Any) -> np.ndarray:
        return self._call("cross_entropy", logits, labels, **kwargs)

    def kl_divergence(self, student_logits: Any, teacher_logits: Any, **kwargs: Any) -> np.ndarray:
        return self._call("kl_divergence", student_logits, teacher_logits, **kwargs)

    def kd_loss(self, student_logits: Any, teacher_logits: Any, labels: Any, **kwargs: Any) -> np.ndarray:
        return self._call("kd_loss", student_logits, teacher_logits, labels, **kwargs)

    def kd_logit_gradient(
        self, student_logits: Any, teacher_logits: Any, labels: Any, **kwargs: Any
    ) -> np.ndarray:
        return self._call("kd_logit_gradient", student_logits, teacher_logits, labels, **kwargs)

    def kd_loss_from_hidden(
        self, hidden: Any, weight: Any, teacher: Any, labels: Any, **kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(loss, dL/dhidden, dL/dweight)`` as numpy; a teacher pair is converted element by element.

        A backend without this optional member is skipped with ``not implemented: kd_loss_from_hidden``.
        """
        method = getattr(self.backend, "kd_loss_from_hidden", None)
        if method is None:
            import pytest

            pytest.skip("not implemented: kd_loss_from_hidden")
        teacher = tuple(self._in(x) for x in teacher) if isinstance(teacher, tuple) else self._in(teacher)
        result = method(self._in(hidden), self._in(weight), teacher, self._in(labels), **kwargs)
        return tuple(np.asarray(self.backend.to_numpy(x), dtype=np.float64) for x in result)  # type: ignore[return-value]


def is_reference(backend: Any) -> bool:
    """Whether ``backend``'s math surface is the reference's own functions (the ``numpy`` backend)."""
    return all(getattr(backend, op, None) is getattr(reference_kd, op) for op in KD_OPS)


def not_the_reference(ops: BackendOps) -> bool:
    """True for a backend that is not the reference; for one that is (its math is the reference's own
    functions), the check is skipped with a reason that says it would compare the reference with itself, so
    it is reported as a self-comparison and never counted as passed evidence. Use it first in a parity check."""
    if is_reference(ops.backend):
        import pytest

        pytest.skip(SELF_COMPARISON.format(name=ops.backend.name))
    return True


class Reference:
    """The float64 reference, on inputs first rounded to ``dtype``; plus ``kd_step``."""

    kd_step = staticmethod(kd_step)

    def __init__(self, dtype: str = "float64") -> None:
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<reference on {self.dtype}-rounded inputs>"

    def _in(self, x: Any) -> Any:
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            return round_to(x, self.dtype)
        return x

    def kd_loss_from_hidden(self, hidden: Any, weight: Any, teacher: Any, labels: Any, **kwargs: Any) -> Any:
        """:func:`reference.fused_linear.kd_loss_from_hidden` on the rounded inputs."""
        from reference import fused_linear

        teacher = tuple(self._in(x) for x in teacher) if isinstance(teacher, tuple) else self._in(teacher)
        return fused_linear.kd_loss_from_hidden(self._in(hidden), self._in(weight), teacher, labels, **kwargs)

    def __getattr__(self, op: str) -> Any:
        if op not in KD_OPS:
            raise AttributeError(op)
        fn = getattr(reference_kd, op)
        return lambda *args, **kwargs: fn(*(self._in(a) for a in args), **kwargs)


class KDBackends:
    """The backend catalog: :mod:`backends.registry` seen through the harness's :class:`BackendCatalog`."""

    default = "numpy"

    def select(self, spec: str) -> tuple[list[Target], list[tuple[str, str]]]:
        from backends import registry

        selection = registry.select(spec)
        targets = [Target(b.name, tuple(b.dtypes), b) for b in selection.backends]
        return targets, list(selection.left_out)

    def namespaces(self, target: Target, dtype: str) -> dict[str, Any]:
        return {"kd": BackendOps(target.backend, dtype), "ref": Reference(dtype)}
