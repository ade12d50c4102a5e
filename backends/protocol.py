"""The backend protocol: the one place that says what a port of the KD math must provide.

A *backend* is any object with the members below. The registry (:mod:`backends.registry`) loads it from an
entry point in the group ``kd_contracts.backends`` or from ``package.module:attribute``; the falsifier suite
then judges it against the reference (:mod:`reference.kd`) and nothing else.

Members a port needs
====================

Description (plain attributes):

``name: str``
    The label it is selected and reported by (``"torch"``, ``"cupy"``, ...).
``device: str``
    ``"cpu"`` or ``"cuda"`` (see :data:`DEVICES`); ``--backend cuda`` selects every ``"cuda"`` backend.
``dtypes: tuple[str, ...]``
    The float dtypes it computes in, a subset of :data:`FLOAT_DTYPES` (``"float64"``, ``"float32"``,
    ``"bfloat16"``). The suite runs each backend at each of its dtypes.

Environment and conversion (methods):

``available() -> Availability``
    Whether it can run here. Never raises: a missing library or device is reported as
    ``Availability(False, "<one sentence: what is missing and how to get it>")``.
``asarray(array: np.ndarray, dtype: str) -> Array``
    A numpy array to the backend's own array type (and device). ``dtype`` is one of :attr:`dtypes` for
    logits, or ``"int64"`` or ``"int32"`` (:data:`LABEL_DTYPES`) for labels; any other dtype raises ``ValueError``.
``to_numpy(x: Array | float) -> np.ndarray``
    A backend array or scalar back to numpy: float64 for floating values (widened exactly), int64 for
    integers.

The math surface (methods), with the names, keyword arguments and semantics of :mod:`reference.kd`:

``softmax(logits, temperature=1.0)``, ``log_softmax(logits, temperature=1.0)``
    Over the last axis of ``logits / temperature``.
``cross_entropy(logits, labels, *, ignore_index=-100, reduction="mean")``
    ``-log softmax(logits)[label]`` per row; rows whose label is ``ignore_index`` are 0 and left out of
    the ``mean`` denominator.
``kl_divergence(student_logits, teacher_logits, *, temperature=1.0)``
    Per-row ``KL(softmax(t/T) || softmax(s/T))``, no reduction.
``kd_loss(student_logits, teacher_logits, labels, *, temperature, alpha, ignore_index=-100,
reduction="mean")``
    Per row ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``.
``kd_logit_gradient(student_logits, teacher_logits, labels, *, temperature, alpha, ignore_index=-100,
reduction="mean")``
    ``d kd_loss / d student_logits``: per row
    ``alpha * (softmax(s) - onehot(y)) + (1 - alpha) * T * (softmax(s/T) - softmax(t/T))``, zero on
    ignored rows, divided by the number of valid rows for ``mean``, per row for ``none``.

Shapes are ``[..., V]`` for logits and ``[...]`` for labels. Reductions are ``none``/``sum``/``mean``;
with no valid row, loss and gradient are 0. Every input the reference refuses raises ``ValueError`` with
the reference's message (build it with :mod:`reference.checks`). Results are the backend's own arrays;
what dtype they come back in is each backend's documented policy, and the suite compares them with the
reference through ``to_numpy``.

:func:`missing_members` and :func:`conformance_problems` tell an incomplete plugin what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

FLOAT_DTYPES: tuple[str, ...] = ("float64", "float32", "bfloat16")
"""Every float dtype a backend may declare, widest first."""

LABEL_DTYPE: str = "int64"
"""The default label dtype (``asarray(labels, "int64")``)."""

LABEL_DTYPES: tuple[str, ...] = ("int64", "int32")
"""The label dtypes ``asarray`` must make: the suite hands labels over at the dtype the user passed
(int64 as PyTorch does, int32 as many kernels take)."""

DEVICES: tuple[str, ...] = ("cpu", "cuda")
"""The values ``Backend.device`` may take."""

ATTRIBUTE_MEMBERS: tuple[str, ...] = ("name", "device", "dtypes")
"""Plain attributes every backend has."""

METHOD_MEMBERS: tuple[str, ...] = (
    "available",
    "asarray",
    "to_numpy",
    "softmax",
    "log_softmax",
    "cross_entropy",
    "kl_divergence",
    "kd_loss",
    "kd_logit_gradient",
)
"""Callable members every backend has: environment, conversion, then the math surface of reference.kd."""

MATH_MEMBERS: tuple[str, ...] = METHOD_MEMBERS[3:]
"""The math surface, named as in :mod:`reference.kd`."""

REQUIRED_MEMBERS: tuple[str, ...] = ATTRIBUTE_MEMBERS + METHOD_MEMBERS
"""Every member of the protocol, in the order they are reported when missing."""


class BackendError(LookupError):
    """A backend cannot be found, loaded or used here; the message is one sentence saying why."""


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here. Truthy when ``ok``; ``reason`` says what is missing when not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def yes(cls) -> Availability:
        """The backend can run here."""
        return cls(True)

    @classmethod
    def no(cls, reason: str) -> Availability:
        """The backend cannot run here, for ``reason`` (one sentence)."""
        return cls(False, reason)


@runtime_checkable
class Backend(Protocol):
    """Structural type of a backend; see the module docstring for the semantics of each member."""

    name: str
    device: str
    dtypes: tuple[str, ...]

    def available(self) -> Availability: ...

    def asarray(self, array: np.ndarray, dtype: str) -> Any: ...

    def to_numpy(self, x: Any) -> np.ndarray: ...

    def softmax(self, logits: Any, temperature: float = 1.0) -> Any: ...

    def log_softmax(self, logits: Any, temperature: float = 1.0) -> Any: ...

    def cross_entropy(self, logits: Any, labels: Any, *, ignore_index: int = -100, reduction: str = "mean") -> Any: ...

    def kl_divergence(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> Any: ...

    def kd_loss(
        self,
        student_logits: Any,
        teacher_logits: Any,
        labels: Any,
        *,
        temperature: float,
        alpha: float,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> Any: ...

    def kd_logit_gradient(
        self,
        student_logits: Any,
        teacher_logits: Any,
        labels: Any,
        *,
        temperature: float,
        alpha: float,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> Any: ...


def missing_members(candidate: object) -> list[str]:
    """Names of protocol members ``candidate`` lacks (a method member that is not callable counts)."""
    missing = [name for name in ATTRIBUTE_MEMBERS if not hasattr(candidate, name)]
    missing += [name for name in METHOD_MEMBERS if not callable(getattr(candidate, name, None))]
    return missing


def conformance_problems(candidate: object) -> list[str]:
    """Every way ``candidate`` falls short of the protocol, each a short phrase (empty when it conforms).

    Missing members come first (one phrase listing them), then attributes of the wrong kind.
    """
    problems: list[str] = []
    missing = missing_members(candidate)
    if missing:
        problems.append("missing " + ", ".join(missing))
    name = getattr(candidate, "name", None)
    if "name" not in missing and (not isinstance(name, str) or not name):
        problems.append(f"name must be a non-empty str, got {name!r}")
    device = getattr(candidate, "device", None)
    if "device" not in missing and device not in DEVICES:
        problems.append(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    dtypes = getattr(candidate, "dtypes", None)
    if "dtypes" not in missing:
        if (
            not isinstance(dtypes, tuple)
            or not dtypes
            or any(not isinstance(d, str) or d not in FLOAT_DTYPES for d in dtypes)
        ):
            problems.append(
                f"dtypes must be a non-empty tuple drawn from {', '.join(map(repr, FLOAT_DTYPES))}, got {dtypes!r}"
            )
    return problems
