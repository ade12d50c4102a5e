"""Input validation for the KD math, shared by the reference and every backend.

Every bad input is a ``ValueError`` whose message is one sentence naming the problem and the offending
values (DESIGN.md principle 4). The text of each message is produced in exactly one place: the
``*_message`` builder functions below. The ``check_*`` functions decide *whether* something is wrong and
raise ``ValueError(<builder>(...))``.

The checks come in two layers so that a backend can reuse them without copying tensors to the host on the
happy path:

* **Shape, dtype and Python-scalar checks** need no array data: :func:`check_hyperparameters` (with
  :func:`check_temperature`, :func:`check_alpha`, :func:`check_reduction`), :func:`check_ignore_index`,
  :func:`check_shapes` (with :func:`check_logits_shape`, :func:`check_labels_shape`) and
  :func:`check_labels_dtype`. A torch or CuPy backend calls them directly with ``tuple(x.shape)`` and Python
  numbers. For a non-numpy label dtype, test integrality natively and, if it fails, raise
  ``ValueError(labels_dtype_message(str(dtype)))``.
* **Value checks** look at the data: :func:`check_labels` and :func:`check_logits` take numpy arrays. A
  backend first runs a cheap reduction on the device (for example ``torch.isnan(x).any()``,
  ``torch.isposinf(x).any()``, ``(~torch.isfinite(x)).all(-1).any()``, or the out-of-range label count)
  and only when that says "bad" copies the tensor to the host and calls the numpy check, which finds the
  first offending position and raises with the canonical message. Alternatively a backend computes the
  position itself and raises ``ValueError(logits_nan_message(name, position))`` and so on.

Positions are reported as tuples of Python ints, the index of the first offending element in C order
(for row-level problems, the index of the row, i.e. without the vocab axis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

REDUCTIONS: tuple[str, ...] = ("none", "sum", "mean")
"""The supported reductions, in the order they are listed in error messages."""

DEFAULT_IGNORE_INDEX: int = -100
"""Label value whose rows are excluded from the loss, its gradient and the ``mean`` denominator."""


# --------------------------------------------------------------------------------------------------------
# Message builders: the only place where error text is written.
# --------------------------------------------------------------------------------------------------------


def format_position(position: Sequence[int]) -> str:
    """Format an index as a tuple of Python ints, e.g. ``(1, 2)``; a 0-d position is ``()``."""
    items = [int(i) for i in position]
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(str(i) for i in items) + ")"


def format_shape(shape: Sequence[int]) -> str:
    """Format a shape like numpy does, e.g. ``(2, 5)``, ``(3,)`` or ``()``."""
    return format_position(shape)


def format_value(value: object) -> str:
    """Show a hyperparameter: a real number as a Python float (``0.0``, ``nan``), anything else by repr."""
    real = _as_real(value)
    return repr(value) if real is None else repr(real)


TEMPERATURE_MIN = 1e-4
TEMPERATURE_MAX = 1e4
"""The temperatures every function and backend accepts. Outside them the arithmetic leaves the float range
for reasons that have nothing to do with the inputs: a subnormal T makes ``T**2`` underflow to 0 against an
infinite KL (NaN gradients), ``T**2`` overflows above ~1.3e154, and in float32/bfloat16 ``z / T`` overflows for
logits of magnitude 1e4 once ``T < 1e-34``. The range is refused with a ValueError naming the temperature rather
than answered wrongly; practical KD temperatures (0.5 to 20) are deep inside it."""


def temperature_message(temperature: object) -> str:
    """Message for a temperature that is not a finite number in [TEMPERATURE_MIN, TEMPERATURE_MAX]."""
    value = _as_real(temperature)
    if value is not None and math.isfinite(value) and value > 0.0:
        return (
            f"temperature must be in [{TEMPERATURE_MIN:g}, {TEMPERATURE_MAX:g}], got {format_value(temperature)}: "
            "outside it T**2 or logits / T leave the float range"
        )
    return f"temperature must be a finite number > 0, got {format_value(temperature)}"


def label_not_int64_message(value: int, position: Sequence[int]) -> str:
    """Message for an unsigned label too large for int64 (it would wrap to a negative id, even -100)."""
    return (
        f"label {int(value)} at position {format_position(position)} does not fit in int64: labels are token ids "
        "in [0, vocab) or ignore_index"
    )


def alpha_message(alpha: object) -> str:
    """Message for an alpha that is not a finite number in [0, 1]."""
    return f"alpha must be a finite number in [0, 1], got {format_value(alpha)}"


def reduction_message(reduction: object) -> str:
    """Message for an unknown reduction name."""
    expected = ", ".join(repr(r) for r in REDUCTIONS)
    return f"unknown reduction {reduction!r}: expected one of {expected}"


def ignore_index_message(ignore_index: object) -> str:
    """Message for an ignore_index that is not an integer."""
    return f"ignore_index must be an integer, got {ignore_index!r}"


def logits_ndim_message(name: str, shape: Sequence[int]) -> str:
    """Message for logits with no vocab axis (a 0-d array)."""
    return (
        f"{name} must have at least 1 dimension (the vocab axis is the last one), "
        f"got {len(shape)} dimensions with shape {format_shape(shape)}"
    )


def vocab_zero_message(name: str, shape: Sequence[int]) -> str:
    """Message for logits whose vocab axis is empty."""
    return (
        f"{name} has vocab size 0 (shape {format_shape(shape)}): the last axis must hold at least one logit"
    )


def vocab_mismatch_message(
    teacher_vocab: int,
    student_vocab: int,
    student_shape: Sequence[int] | None = None,
    teacher_shape: Sequence[int] | None = None,
) -> str:
    """Message for student and teacher logits over different vocabularies (optionally naming the shapes)."""
    shapes = ""
    if student_shape is not None and teacher_shape is not None:
        shapes = (
            f" (student_logits shape {format_shape(student_shape)}, "
            f"teacher_logits shape {format_shape(teacher_shape)})"
        )
    return (
        f"teacher vocab size {teacher_vocab} != student vocab size {student_vocab}{shapes}: "
        "student and teacher must share one vocabulary, and padding or slicing one of them needs an "
        "explicit policy (config-versus-checkpoint vocab drift?)"
    )


def shape_mismatch_message(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> str:
    """Message for student and teacher logits of different shapes (same vocab size)."""
    return (
        f"student_logits shape {format_shape(student_shape)} != teacher_logits shape "
        f"{format_shape(teacher_shape)}: student and teacher logits must have identical shapes"
    )


def labels_shape_message(labels_shape: Sequence[int], logits_shape: Sequence[int]) -> str:
    """Message for labels whose shape is not the logits shape without its vocab axis."""
    return (
        f"labels shape {format_shape(labels_shape)} != logits shape without the vocab axis "
        f"{format_shape(tuple(logits_shape)[:-1])} (logits shape {format_shape(logits_shape)})"
    )


def labels_dtype_message(dtype: object) -> str:
    """Message for labels that are not an integer array (bool and float, even integral float, included)."""
    name = str(dtype)
    if "bool" in name:
        hint = " (bool is not an integer label type)"
    elif "float" in name or "half" in name:
        hint = " (float labels are refused even when integral-valued; cast them, e.g. .astype(np.int64))"
    else:
        hint = ""
    return f"labels must be an integer array, got dtype {name}{hint}"


def label_out_of_range_message(value: int, position: Sequence[int], vocab: int, ignore_index: int) -> str:
    """Message for a label outside [0, vocab) that is not ignore_index."""
    return (
        f"label {int(value)} at position {format_position(position)} is out of range [0, {vocab}) "
        f"for vocab size {vocab} and is not ignore_index {ignore_index}"
    )


def logits_dtype_message(name: str, dtype: object) -> str:
    """Message for logits that are not a real (integer or floating) numeric array."""
    return f"{name} must be a real numeric (float or integer) array, got dtype {dtype}"


def logits_conversion_message(name: str, error: object) -> str:
    """Message for logits that numpy cannot turn into an array at all (ragged lists, etc.)."""
    return f"{name} could not be converted to a numeric array: {error}"


def labels_conversion_message(error: object) -> str:
    """Message for labels that numpy cannot turn into an array at all."""
    return f"labels could not be converted to an integer array: {error}"


def logits_nan_message(name: str, position: Sequence[int]) -> str:
    """Message for a NaN logit (names the argument and the first NaN's position)."""
    return f"{name} contains NaN at position {format_position(position)}"


def logits_posinf_message(name: str, position: Sequence[int]) -> str:
    """Message for a +inf logit (names the argument and the first +inf's position)."""
    return (
        f"{name} contains +inf at position {format_position(position)}: "
        "logits must be finite, or -inf for a masked vocabulary entry"
    )


def logits_no_finite_row_message(name: str, row_position: Sequence[int]) -> str:
    """Message for a row whose logits are all -inf (softmax undefined)."""
    return (
        f"{name} row at position {format_position(row_position)} has no finite logit (all entries are -inf): "
        "each row needs at least one finite entry for softmax"
    )


# --------------------------------------------------------------------------------------------------------
# Checks over Python scalars, shapes and dtypes (no array data needed).
# --------------------------------------------------------------------------------------------------------


def _as_real(value: object) -> float | None:
    """Return ``float(value)`` for a real number (bool and strings excluded), else ``None``."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def check_temperature(temperature: object) -> float:
    """Return the temperature as a float; raise ValueError unless it is a number in
    [TEMPERATURE_MIN, TEMPERATURE_MAX]."""
    value = _as_real(temperature)
    if value is None or not math.isfinite(value) or not TEMPERATURE_MIN <= value <= TEMPERATURE_MAX:
        raise ValueError(temperature_message(temperature))
    return value


def check_alpha(alpha: object) -> float:
    """Return alpha as a float; raise ValueError unless it is a finite number in [0, 1]."""
    value = _as_real(alpha)
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(alpha_message(alpha))
    return value


def check_reduction(reduction: object) -> str:
    """Return the reduction name; raise ValueError unless it is one of ``none``, ``sum``, ``mean``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(reduction_message(reduction))
    return reduction


def check_ignore_index(ignore_index: object) -> int:
    """Return ignore_index as an int; raise ValueError unless it is an integer (bool excluded)."""
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(ignore_index_message(ignore_index))
    return int(ignore_index)


def check_hyperparameters(temperature: object, alpha: object, reduction: object) -> tuple[float, float, str]:
    """Validate the KD hyperparameters; return ``(temperature, alpha, reduction)`` normalized."""
    return check_temperature(temperature), check_alpha(alpha), check_reduction(reduction)


def check_logits_shape(name: str, shape: Sequence[int]) -> int:
    """Check one logits shape has a vocab axis of size >= 1; return the vocab size."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 1:
        raise ValueError(logits_ndim_message(name, shape))
    if shape[-1] == 0:
        raise ValueError(vocab_zero_message(name, shape))
    return shape[-1]


def check_labels_shape(labels_shape: Sequence[int], logits_shape: Sequence[int]) -> None:
    """Check ``labels_shape == logits_shape[:-1]``."""
    if tuple(labels_shape) != tuple(logits_shape)[:-1]:
        raise ValueError(labels_shape_message(labels_shape, logits_shape))


def check_shapes(
    student_shape: Sequence[int],
    teacher_shape: Sequence[int],
    labels_shape: Sequence[int] | None = None,
) -> int:
    """Check student/teacher (and optionally labels) shapes agree; return the vocab size.

    Order: each logits array has a vocab axis; the vocab sizes agree (the common silent failure, so it is
    reported as such even when other axes differ too); the full shapes agree; the vocab is non-empty;
    the labels shape is the logits shape without its vocab axis.
    """
    student_shape = tuple(int(d) for d in student_shape)
    teacher_shape = tuple(int(d) for d in teacher_shape)
    if len(student_shape) < 1:
        raise ValueError(logits_ndim_message("student_logits", student_shape))
    if len(teacher_shape) < 1:
        raise ValueError(logits_ndim_message("teacher_logits", teacher_shape))
    if student_shape[-1] != teacher_shape[-1]:
        raise ValueError(
            vocab_mismatch_message(teacher_shape[-1], student_shape[-1], student_shape, teacher_shape)
        )
    if student_shape != teacher_shape:
        raise ValueError(shape_mismatch_message(student_shape, teacher_shape))
    vocab = check_logits_shape("student_logits", student_shape)
    if labels_shape is not None:
        check_labels_shape(labels_shape, student_shape)
    return vocab


def check_labels_dtype(dtype: object) -> None:
    """Check a dtype is a signed or unsigned integer type.

    Accepts anything ``np.dtype`` accepts, and dtypes whose string form names a numpy dtype after an
    optional ``torch.`` prefix (so ``torch.int64`` passes and ``torch.bool`` / ``torch.float32`` fail).
    """
    kind = None
    for candidate in (dtype, str(dtype).removeprefix("torch.")):
        try:
            kind = np.dtype(candidate).kind  # type: ignore[call-overload]
            break
        except TypeError:
            continue
    if kind not in ("i", "u"):
        raise ValueError(labels_dtype_message(dtype))


# --------------------------------------------------------------------------------------------------------
# Checks over numpy array values.
# --------------------------------------------------------------------------------------------------------


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """Index (C order) of the first True entry of a boolean array known to have one."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def int64_labels(labels: np.ndarray) -> np.ndarray:
    """Integer ``labels`` as int64 without wrapping: an unsigned label above 2**63 - 1 (which a cast would turn
    into a negative id, 2**64 - 100 into -100 = ignore_index) raises ValueError naming it and its position.
    The one conversion the backends use before they hand labels to an int64 kernel."""
    labels = np.asarray(labels)
    check_labels_dtype(labels.dtype)
    if labels.dtype.kind == "u" and labels.size and labels.dtype.itemsize >= 8:
        too_big = labels > np.iinfo(np.int64).max
        if too_big.any():
            position = _first(too_big)
            raise ValueError(label_not_int64_message(labels[position], position))
    return labels.astype(np.int64, copy=False)


def check_labels(labels: np.ndarray, vocab: int, ignore_index: int = DEFAULT_IGNORE_INDEX) -> None:
    """Check labels are integers in ``[0, vocab)`` or equal to ``ignore_index``.

    Raises on a non-integer dtype (naming it) or on the first out-of-range label (naming its value,
    position, the vocab size and ignore_index).
    """
    labels = np.asarray(labels)
    check_labels_dtype(labels.dtype)
    out_of_range = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if out_of_range.any():
        position = _first(out_of_range)
        raise ValueError(label_out_of_range_message(labels[position], position, vocab, ignore_index))


def check_logits(name: str, logits: np.ndarray) -> None:
    """Check logits values: real dtype, no NaN, no +inf, and at least one finite entry per row.

    ``name`` is the argument's name (``student_logits`` or ``teacher_logits``) and appears in the message
    together with the first offending position (element position for NaN and +inf, row position for a row
    of all -inf).
    """
    logits = np.asarray(logits)
    if logits.dtype.kind not in ("f", "i", "u"):
        raise ValueError(logits_dtype_message(name, logits.dtype))
    check_logits_shape(name, logits.shape)
    if logits.dtype.kind != "f":
        return  # integers are always finite
    nan = np.isnan(logits)
    if nan.any():
        raise ValueError(logits_nan_message(name, _first(nan)))
    posinf = np.isposinf(logits)
    if posinf.any():
        raise ValueError(logits_posinf_message(name, _first(posinf)))
    no_finite_row = ~np.isfinite(logits).any(axis=-1)
    if no_finite_row.any():
        raise ValueError(logits_no_finite_row_message(name, _first(no_finite_row)))


# --------------------------------------------------------------------------------------------------------
# Conversion of array-likes (used by the reference; backends convert with their own library).
# --------------------------------------------------------------------------------------------------------


def as_float64_logits(name: str, logits: Any) -> np.ndarray:
    """Convert an array-like of logits to a float64 ndarray after checking its dtype is real."""
    try:
        array = np.asarray(logits)
    except (TypeError, ValueError) as error:
        raise ValueError(logits_conversion_message(name, error)) from None
    if array.dtype.kind not in ("f", "i", "u"):
        raise ValueError(logits_dtype_message(name, array.dtype))
    return array.astype(np.float64, copy=False)


def as_integer_labels(labels: Any) -> np.ndarray:
    """Convert an array-like of labels to an integer ndarray, refusing float and bool dtypes.

    A Python sequence with no elements (e.g. ``[]`` for an empty batch) has no dtype of its own, so it
    becomes an empty int64 array instead of numpy's default float64; an *ndarray* of a float dtype is
    refused even when empty.
    """
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError) as error:
        raise ValueError(labels_conversion_message(error)) from None
    if array.size == 0 and not hasattr(labels, "dtype"):
        array = array.astype(np.int64)
    check_labels_dtype(array.dtype)
    return array
