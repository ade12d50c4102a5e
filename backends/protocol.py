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

Optional capabilities
=====================

``capabilities: frozenset[str]`` (optional attribute; absent means the empty set)
    The optional members of :data:`OPTIONAL_MEMBERS` the backend implements. They are the divergence
    family of :mod:`reference.kd`, each with its gradient twin (``reverse_kl``, ``reverse_kl_gradient``,
    ``generalized_jsd``, ..., ``topk_divergence``, ``topk_divergence_gradient``), with the reference's
    names, keywords and semantics, plus ``kd_loss_from_hidden``. :data:`OPTIONAL_FEATURES` name keyword
    extensions of core members: ``kd_loss_divergence`` (``kd_loss``/``kd_logit_gradient`` accept
    ``divergence=``, ``beta=``, ``skew=``), ``kd_loss_topk`` (a top-k ``(logprobs, ids)`` teacher) and
    ``kd_loss_normalizer`` (``normalizer=``). A falsifier lists what it needs in ``requires``; a backend
    whose capabilities lack one is reported "not implemented: ..." for it, never passed.

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

FAMILY_MEMBERS: tuple[str, ...] = (
    "kl_divergence_gradient",
    "reverse_kl",
    "reverse_kl_gradient",
    "generalized_jsd",
    "generalized_jsd_gradient",
    "interpolated_kl",
    "interpolated_kl_gradient",
    "skew_kl",
    "skew_kl_gradient",
    "skew_reverse_kl",
    "skew_reverse_kl_gradient",
    "total_variation",
    "total_variation_gradient",
    "topk_divergence",
    "topk_divergence_gradient",
)
"""The divergence family of :mod:`reference.kd` (every value with its ``_gradient`` twin)."""

OPTIONAL_MEMBERS: tuple[str, ...] = (*FAMILY_MEMBERS, "kd_loss_from_hidden")
"""Callable members a backend may implement, declared in its ``capabilities``."""

OPTIONAL_FEATURES: tuple[str, ...] = ("kd_loss_divergence", "kd_loss_topk", "kd_loss_normalizer")
"""Keyword extensions of ``kd_loss``/``kd_logit_gradient`` a backend may declare in its ``capabilities``."""

CAPABILITIES: tuple[str, ...] = OPTIONAL_MEMBERS + OPTIONAL_FEATURES
"""Every name a backend's ``capabilities`` may hold."""


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


def capabilities_of(candidate: object) -> frozenset[str]:
    """The optional capabilities ``candidate`` declares (empty when it has no ``capabilities`` attribute)."""
    declared = getattr(candidate, "capabilities", frozenset())
    return frozenset(declared) if isinstance(declared, (frozenset, set, tuple, list)) else frozenset()


def lacks(candidate: object, required: tuple[str, ...] | list[str]) -> list[str]:
    """Which of ``required`` ``candidate`` does not implement: a core member it lacks, or an optional member or
    feature it does not declare (a declared optional member must also be callable)."""
    declared = capabilities_of(candidate)
    out = []
    for name in required:
        if name in OPTIONAL_FEATURES:
            ok = name in declared
        elif name in OPTIONAL_MEMBERS:
            ok = name in declared and callable(getattr(candidate, name, None))
        else:
            ok = hasattr(candidate, name)
        if not ok:
            out.append(name)
    return out


def missing_members(candidate: object) -> list[str]:
    """Names of protocol members ``candidate`` lacks (a method member that is not callable counts), then the
    optional members it declares in ``capabilities`` without implementing them."""
    missing = [name for name in ATTRIBUTE_MEMBERS if not hasattr(candidate, name)]
    missing += [name for name in METHOD_MEMBERS if not callable(getattr(candidate, name, None))]
    declared = capabilities_of(candidate)
    missing += [name for name in OPTIONAL_MEMBERS if name in declared and not callable(getattr(candidate, name, None))]
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
    declared = getattr(candidate, "capabilities", frozenset())
    if not isinstance(declared, frozenset) or any(not isinstance(c, str) for c in declared):
        problems.append(f"capabilities must be a frozenset of str, got {declared!r}")
    else:
        unknown = sorted(declared - set(CAPABILITIES))
        if unknown:
            problems.append(
                f"capabilities names unknown {', '.join(map(repr, unknown))}: known are {', '.join(CAPABILITIES)}"
            )
    return problems
